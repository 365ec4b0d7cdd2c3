"""Axolotl configs (docs: axolotl-ai-cloud/axolotl, src/axolotl/utils/schemas) → a recipe. Axolotl's defaults that
differ from the product's are written out, each with a header note."""

from __future__ import annotations

from typing import Any

from sdk.core.methods import REGISTRY
from sdk.importers.accelerate import read_accelerate
from sdk.importers.draft import Draft, hold_out_and_length
from sdk.importers.formats import axolotl_custom, axolotl_rows
from sdk.objectives import OBJECTIVES

BF16_ON = (True, "auto", "full")  # Axolotl's bf16: true, auto (where the GPU has it) or full (bf16 weights too)

# Keys a config may set that mean nothing to a run of the product, and why they are dropped.
DROPPED = {
    "output_dir": "runs land in the recipe's `output` store (default ~/.finetune/runs)",
    "dataset_prepared_path": "the product tokenizes on the node each run",
    "special_tokens": "the tokenizer's own special tokens are used; set a pad token in the model if needed",
    "tokens": "the product adds no tokens to the vocabulary",
    "tf32": "TF32 matmuls are decided by the product on Ampere+ GPUs",
    "model_type": "the architecture is read from the model's config",
    "tokenizer_type": "the model's own tokenizer is loaded",
    "chat_template": "the product renders chat rows with the model's own chat template, not a named one",
    "eval_sample_packing": "evaluation rows are never packed",
    "pad_to_sequence_len": "batches are padded to their longest row",
    "gradient_checkpointing_kwargs": "the product picks non-reentrant checkpointing",
    "loss_watchdog_threshold": "no loss watchdog", "loss_watchdog_patience": "no loss watchdog",
    "remove_unused_columns": "columns are read by name",
    "resize_token_embeddings_to_32x": "embeddings keep the base model's size",
    "wandb_watch": "gradients are not logged", "wandb_log_model": "the adapter lands in the store, not W&B",
    "save_safetensors": "artifacts are always safetensors",
    "use_kernels": "Hub kernels are not loaded; train.liger_kernels for Liger's",
    "dataset_exact_deduplication": "rows are not deduplicated: deduplicate the file before training",
}


def convert(d: Draft) -> None:
    d.set("model.id", d.get("base_model"))
    if d.get("trust_remote_code"):
        d.set("model.trust_remote_code", True)
    if d.get("revision_of_model"):
        d.set("model.revision", d.get("revision_of_model"))
    _refusals(d)
    _method(d)
    kind = _objective(d)
    _data(d, kind)
    _train(d)
    _distributed(d)
    _tracking(d)
    distributed, train = d.recipe.get("distributed") or {}, d.recipe.get("train", {})
    method = REGISTRY.get(str(d.recipe.get("method")))  # a full fine-tune is written `method: full`
    if distributed.get("strategy") == "deepspeed" and method is not None and method.trains_all_weights \
            and train.get("optimizer") in ("adamw_8bit", "paged_adamw_8bit"):
        d.note(f"optimizer: {d.get('optimizer')} written as adamw_torch: 8-bit bitsandbytes optimizers do not work "
               "under DeepSpeed")
        d.set("train.optimizer", "adamw_torch")
    d.dropped(DROPPED)


def _refusals(d: Draft) -> None:
    for key in ("context_parallel_size", "sequence_parallel_degree", "tensor_parallel_size"):
        if (d.get(key) or 1) > 1:
            d.lack(f"{key}: {d.get(key)}: long-context/sequence (or tensor) parallelism: each rank holds whole "
                   "sequences")
    if d.get("fp8"):
        d.lack("fp8: FP8 training: precision is bf16, fp16 or fp32")
    if d.get("lora_target_parameters"):
        d.lack(f"lora_target_parameters: {', '.join(map(str, d.get('lora_target_parameters')))}: LoRA on parameters "
               "(PEFT's target_parameters, MoE experts' weights): method.target_modules names modules")
    if d.get("tiled_mlp"):
        d.lack("tiled_mlp: long-context tiling of the MLP")
    if d.get("qat"):
        d.lack("qat: quantization-aware training (fake-quantized weights in training; the product trains "
               "16-bit weights or adapters on a frozen quantized base)")
    if d.get("pretraining_dataset"):
        d.lack("pretraining_dataset: streaming pre-training from a Hub dataset (write the rows to files and name "
               "them as datasets with type: completion)")
    if d.get("processor_type") or d.get("is_multimodal"):
        d.lack(f"processor_type: {d.get('processor_type')}: images/video rows (text models only)")
    if d.get("reward_model") or d.get("process_reward_model"):
        d.lack("reward_model: training a reward model (objectives: sft, dpo, kto, orpo, simpo, grpo)")
    if d.get("unfrozen_parameters"):
        d.lack("unfrozen_parameters: training a chosen subset of the base's weights (methods train adapters, the "
               "head, or every weight)")
    for plugin in d.get("plugins", []):
        if "liger" in plugin.lower():
            d.set("train.liger_kernels", True)
            d.note(f"plugins: {plugin} written as train.liger_kernels: true")
        elif "cut_cross_entropy" in plugin:
            d.note(f"plugins: {plugin} dropped: the loss is the same without it, at a higher peak memory")
        elif plugin.endswith(".KernelsPlugin"):
            d.note(f"plugins: {plugin} dropped: Hub kernels are not loaded; the model computes the same, slower")
        elif plugin.endswith(".SwanLabPlugin"):
            d.note(f"plugins: {plugin} dropped: SwanLab is not a tracker of the product (tracking: wandb, mlflow, "
                   "tensorboard)")
        else:
            d.lack(f"plugins: {plugin}: a plugin of Axolotl's (custom losses and trainers are not in the product)")


def _method(d: Draft) -> None:
    adapter = d.get("adapter")
    if adapter is None:
        d.set("method", "full")
        if d.get("bf16") in BF16_ON:
            d.set("model.dtype", "bfloat16")
            d.note("model.dtype: bfloat16: Axolotl loads a full fine-tune's weights in bf16 (no fp32 master copy); "
                   "remove it for the product's default, fp32 master weights under bf16 autocast")
        return
    registered = REGISTRY.get(adapter)
    if registered is None:
        d.lack(f"adapter: {adapter}: methods are {', '.join(REGISTRY)}")
        return
    eight = bool(d.get("load_in_8bit")) and not d.get("load_in_4bit")
    quantized = registered.quantized_base or bool(d.get("load_in_4bit")) or eight
    d.set("method.name", "qlora" if quantized else "dora" if d.get("peft_use_dora") else adapter)
    if eight:
        d.set("method.quant_type", "int8")
        d.note(f"adapter: {adapter} with load_in_8bit written as method qlora, quant_type: int8 "
               "(bitsandbytes LLM.int8)")
    elif quantized and not registered.quantized_base:
        d.note(f"adapter: {adapter} with load_in_4bit written as method qlora")
    r, alpha = d.get("lora_r"), d.get("lora_alpha")
    if r is None or alpha is None:
        d.note("lora_r/lora_alpha not set: Axolotl leaves them to PEFT (r 8, alpha 8); written out")
    d.set("method.r", r or 8)
    d.set("method.alpha", alpha or 8)
    dropout = d.get("lora_dropout")
    if dropout is None:
        d.note("lora_dropout not set: Axolotl's default 0.0 written out (the product's is 0.05)")
    d.set("method.dropout", dropout or 0.0)
    _targets(d)
    if d.get("lora_modules_to_save"):
        d.set("method.modules_to_save", list(d.get("lora_modules_to_save")))
    if d.get("peft_use_rslora"):
        d.set("method.use_rslora", True)
    d.get("load_in_4bit"), d.get("peft_use_dora"), d.get("lora_model_dir")


def _targets(d: Draft) -> None:
    modules = d.get("lora_target_modules")
    if d.get("lora_target_linear"):
        d.set("method.target_modules", "all-linear")
        if modules:
            d.note("lora_target_modules: listed beside lora_target_linear: true, which targets every linear layer")
    elif isinstance(modules, str):
        d.set("method.target_modules", modules)
        d.note(f"lora_target_modules: {modules} read as a regular expression over module names (as PEFT reads a "
               "string); checked against the model's modules before launch")
    elif modules:
        d.set("method.target_modules", list(modules))
    else:
        d.note("lora_target_modules not set: PEFT's per-model default; written as attention (q, k, v, o)")
        d.set("method.target_modules", "attention")


def _objective(d: Draft) -> str:
    """The objective and its settings; returns the row kind it trains on."""
    rl = d.get("rl")
    if rl is None:
        if d.get("trl"):
            d.note("trl: settings without rl: dropped")
        return OBJECTIVES["sft"].trains_on
    name, settings = str(rl), {}
    if name == "ipo":
        name, settings = "dpo", {"loss_type": "ipo"}
    registered = OBJECTIVES.get(name)
    if registered is None:
        d.lack(f"rl: {rl}: objectives are {', '.join(OBJECTIVES)}")
        return OBJECTIVES["sft"].trains_on
    fields = registered.settings.model_fields
    trl: dict[str, Any] = dict(d.get("trl", {}))
    wanted = {"beta": d.get("rl_beta", trl.pop("beta", None)), "label_smoothing": d.get("dpo_label_smoothing"),
              "desirable_weight": d.get("kto_desirable_weight"), "undesirable_weight": d.get("kto_undesirable_weight"),
              "cpo_alpha": d.get("cpo_alpha")}
    if d.get("orpo_alpha") is not None:
        wanted["beta"] = d.get("orpo_alpha")
        d.note("orpo_alpha written as objective.beta (λ, the weight of the odds-ratio term)")
    if d.get("simpo_gamma") is not None and wanted["beta"]:
        wanted["gamma_beta_ratio"] = d.get("simpo_gamma") / wanted["beta"]
        d.note("simpo_gamma written as objective.gamma_beta_ratio (γ / β)")
    funcs = trl.pop("reward_funcs", None)
    if funcs:
        d.lack(f"trl.reward_funcs: {', '.join(funcs)}: Python reward functions of your own are not imported; "
               "write them as objective.rewards (file.py:function) by hand")
    for key, value in trl.items():
        if key in fields and value is not None:
            wanted[key] = value
        elif value is not None:
            d.note(f"trl.{key}: dropped (no {name} setting of that name)")
    settings.update({k: v for k, v in wanted.items() if v is not None and k in fields})
    d.set("objective", {"name": name, **settings})
    return registered.trains_on


def _data(d: Draft, kind: str) -> None:
    datasets = d.get("datasets", [])
    sources = [_dataset(d, dataset, kind, f"datasets[{i}]") for i, dataset in enumerate(datasets)]
    if len(sources) == 1 and sources[0] is not None:
        for key, value in sources[0].items():
            d.set(f"data.{key}", value)
    elif sources and all(s is not None for s in sources):
        d.set("data.sources", sources)
        d.note(f"datasets: {len(sources)} datasets written as data.sources, concatenated and shuffled as Axolotl "
               "merges them; the hold-out is taken from each source (Axolotl takes it from the merged rows)")
    tests = d.get("test_datasets", [])
    if tests:
        d.set("data.eval_source", tests[0].get("path"))
        if len(tests) > 1:
            d.lack(f"test_datasets: {len(tests)} evaluation datasets: data.eval_source is one")
    hold_out_and_length(d, tool="Axolotl", split=d.get("val_set_size"), split_key="val_set_size",
                        length=d.get("sequence_len"), length_key="sequence_len", eval_file=bool(tests))
    if d.get("sample_packing"):
        d.set("data.packing", True)
    if d.get("train_on_inputs"):
        d.set("data.completion_only_loss", False)
    if d.get("default_system_message"):
        d.set("data.system_prompt", d.get("default_system_message"))


def _dataset(d: Draft, dataset: dict[str, Any], kind: str, key: str) -> dict[str, Any] | None:
    """One of Axolotl's datasets as a source of the recipe, or None (with what it lacks) when it cannot be read."""
    type_name = dataset.get("type", "alpaca")
    if type_name is None:
        d.lack(f"{key}.type: empty: Axolotl reads such a dataset as already tokenized (input_ids, labels); the product "
               "tokenizes text rows itself")
        return None
    if isinstance(type_name, dict):
        d.lack(f"{key}.type: a prompt format defined inline: the product reads its row formats only")
        return None
    if axolotl_custom(str(type_name)) and axolotl_rows(kind, str(type_name)) is None:
        d.lack(f"{key}.type: {type_name}: a custom Python transform (refused: the product runs no "
               "dataset code of your own; transform the rows into a file first)")
        return None
    rows = axolotl_rows(kind, str(type_name))
    if rows is None:
        d.lack(f"{key}.type: {type_name}: no row format of the product reads it for {kind} rows")
        return None
    source: dict[str, Any] = {"source": dataset.get("path"), "format": rows.format}
    fields = dict(rows.fields)
    for name, role in (("field_messages", "conversations" if rows.format in ("preference", "sharegpt") else "messages"),
                       ("field_chosen", "chosen"), ("field_rejected", "rejected"), ("field", "text"),
                       ("field_instruction", "instruction"), ("field_input", "input"), ("field_output", "output")):
        if dataset.get(name):
            fields[role] = dataset[name]
    fields = {role: column for role, column in fields.items() if role != column}
    if fields:
        source["fields"] = fields
    if dataset.get("split"):
        source["split"] = dataset["split"]
    if dataset.get("name"):
        d.lack(f"{key}.name: {dataset['name']}: a Hub dataset's configuration (the product loads its default)")
    if dataset.get("data_files"):
        d.lack(f"{key}.data_files: files chosen inside a Hub dataset (name one file or folder as its source)")
    if type_name != rows.format:
        d.note(f"{key}.type: {type_name} read as format: {rows.format}"
               + (" (its prompt template is Axolotl's; the product uses the model's chat template)"
                  if "." in type_name else ""))
    for name in ("message_property_mappings", "roles", "field_thinking", "template_thinking_key"):
        if dataset.get(name):
            d.note(f"{key}.{name}: dropped: turns are read as role/content or from/value")
    return source


def _train(d: Draft) -> None:
    epochs, steps = d.get("num_epochs"), d.get("max_steps")
    if steps:
        d.set("train.max_steps", int(steps))
        if epochs:
            d.note(f"num_epochs: {epochs} dropped: max_steps {steps} ends the run first, as in Axolotl")
    else:
        d.set("train.epochs", epochs or 1)
    batch = d.get("micro_batch_size")
    if batch is None:
        d.note("micro_batch_size not set: Axolotl's 1 written out (the product's default is 4)")
    d.set("train.batch_size", int(batch or 1))
    for key, target in (("gradient_accumulation_steps", "grad_accum"), ("learning_rate", "lr"),
                        ("warmup_ratio", "warmup_ratio"), ("warmup_steps", "warmup_steps"),
                        ("weight_decay", "weight_decay"), ("max_grad_norm", "max_grad_norm"), ("seed", "seed"),
                        ("logging_steps", "logging_steps"), ("save_steps", "save_steps"), ("eval_steps", "eval_steps"),
                        ("save_total_limit", "keep_checkpoints")):
        if d.get(key) is not None:
            value = d.get(key)
            d.set(f"train.{target}", float(value) if isinstance(value, str) else value)  # YAML 1.1 reads 2e-5 as text
    d.scheduler("lr_scheduler", d.get("lr_scheduler", "cosine"))
    if d.get("optimizer"):
        d.optimizer("optimizer", d.get("optimizer"))
    d.set("train.gradient_checkpointing", bool(d.get("gradient_checkpointing")))
    if d.get("activation_offloading"):
        d.set("train.activation_offloading", True)
    bf16, fp16 = d.get("bf16"), d.get("fp16")
    precision = "auto" if bf16 == "auto" else "bf16" if bf16 in BF16_ON else "fp16" if fp16 else "fp32"
    d.set("train.precision", precision)
    if precision == "fp32":
        d.note("train.precision: fp32: neither bf16 nor fp16 is set, so Axolotl trains in fp32 (written out)")
    attention = d.get("attn_implementation") or ("flash_attention_2" if d.get("flash_attention") else
                                                 "sdpa" if d.get("sdp_attention") else None)
    if attention:
        d.attention("attn_implementation", attention)
    data = d.recipe.get("data", {})
    held_out = data.get("eval_source") or data.get("eval_split") != 0
    for key in ("evals_per_epoch", "saves_per_epoch"):
        if not d.get(key) or d.get(key.replace("s_per_epoch", "_steps")):  # Axolotl lets a step count win
            continue
        if key == "evals_per_epoch" and not held_out:
            d.note(f"evals_per_epoch: {d.get(key)} dropped: nothing is held out (val_set_size 0), so Axolotl "
                   "evaluates nothing either")
            continue
        d.set(f"train.{key}", int(d.get(key)))
    d.strategies("Axolotl", held_out=bool(held_out))


def _distributed(d: Draft) -> None:
    if d.get("deepspeed"):
        d.deepspeed("deepspeed", str(d.get("deepspeed")))
        return
    fsdp, fsdp_config = d.get("fsdp"), d.get("fsdp_config", {})
    if not (fsdp or fsdp_config or d.get("fsdp_version")):
        if d.accelerate is not None:
            read_accelerate(d, d.accelerate)
        return
    offload = bool(fsdp_config.get("fsdp_offload_params") or fsdp_config.get("offload_params")
                   or "offload" in str(fsdp))
    if fsdp_config.get("fsdp_activation_checkpointing") or fsdp_config.get("activation_checkpointing"):
        d.set("train.gradient_checkpointing", True)  # under FSDP its own wrapper applies it (launch.gpu.fsdp_settings)
        d.note("fsdp_config.activation_checkpointing written as train.gradient_checkpointing: true")
    d.fsdp("fsdp", offload=offload)


def _tracking(d: Draft) -> None:
    trackers: list[Any] = []
    if d.get("wandb_project"):
        trackers.append({"name": "wandb", "project": d.get("wandb_project"),
                         **({"entity": d.get("wandb_entity")} if d.get("wandb_entity") else {})})
    if d.get("mlflow_experiment_name"):
        trackers.append({"name": "mlflow", "experiment": d.get("mlflow_experiment_name")})
    if d.get("use_tensorboard"):
        trackers.append("tensorboard")
    d.get("wandb_name"), d.get("wandb_entity"), d.get("mlflow_tracking_uri")
    if trackers:
        d.set("tracking", trackers)
