"""LLaMA-Factory configs (hiyouga/LLaMA-Factory, src/llamafactory/hparams) → a recipe: the dataset read through the
dataset_info.json of `dataset_dir` (or --data-dir), LLaMA-Factory's defaults that differ written out with a note."""

from __future__ import annotations

import json
import os
from typing import Any

from sdk.core.errors import SpecError
from sdk.core.methods import REGISTRY
from sdk.importers.accelerate import read_accelerate, unseen_launcher_note
from sdk.importers.draft import Draft, hold_out_and_length
from sdk.importers.formats import MEDIA_COLUMNS, llamafactory_rows
from sdk.objectives import OBJECTIVES

DROPPED = {
    "output_dir": "runs land in the recipe's `output` store (default ~/.finetune/runs)",
    "template": "the product renders chat rows with the model's own chat template, not a named one",
    "do_train": "a recipe always trains", "overwrite_output_dir": "every run writes a run folder of its own",
    "overwrite_cache": "the product tokenizes on the node each run", "plot_loss": "`finetune metrics RUN --plot`",
    "preprocessing_num_workers": "the node picks its workers", "dataloader_num_workers": "the node picks its workers",
    "ddp_timeout": "distributed.timeout_minutes (default 30) sets the process-group timeout",
    "save_only_model": "checkpoints always hold the trainer state, to resume",
    "resume_from_checkpoint": "runs resume from their own committed checkpoints",
    "report_to": "no tracker named", "run_name": "the recipe's name names the run",
    "use_v1_kernels": "LLaMA-Factory's own kernels", "fp8_backend": "no FP8 training",
    "fp8_enable_fsdp_float8_all_gather": "no FP8 training", "quantization_method": "bitsandbytes NF4 (method qlora)",
}
STAGE_OBJECTIVE = {"pt": "sft"}
# finetuning_type values that name no method of the product: what they train, for the refusal
OTHER_METHODS = {"freeze": "training a chosen subset of the base's layers (partial freezing)",
                 "oft": "orthogonal fine-tuning (OFT adapters)"}  # continued pre-training is SFT on text rows


def convert(d: Draft) -> None:
    d.set("model.id", d.get("model_name_or_path"))
    if d.get("trust_remote_code"):
        d.set("model.trust_remote_code", True)
    if d.get("model_revision", "main") != "main":
        d.set("model.revision", d.get("model_revision"))
    kind = _objective(d)
    _method(d)
    _data(d, kind)
    _train(d)
    if d.get("deepspeed"):
        d.deepspeed("deepspeed", str(d.get("deepspeed")))
    if d.accelerate is not None:
        read_accelerate(d, d.accelerate)
    elif not d.get("deepspeed"):
        unseen_launcher_note(d, "LLaMA-Factory")
    if d.get("report_to") in ("wandb", "tensorboard", "mlflow"):
        d.set("tracking", [d.get("report_to")])
    for key in ("fp8", "use_dft_loss", "use_asft_loss", "use_eaft_loss", "use_badam", "use_galore", "use_apollo",
                "use_muon", "use_adam_mini", "loraplus_lr_ratio", "pissa_init", "use_llama_pro", "mixture_of_depths"):
        if d.get(key):
            d.lack(f"{key}: {d.get(key)}: {'FP8 training' if key == 'fp8' else 'a custom loss, optimizer or init'} "
                   "of LLaMA-Factory's")
    d.dropped(DROPPED)


def _objective(d: Draft) -> str:
    stage = str(d.get("stage", "sft"))
    if stage in ("rm", "ppo"):
        d.lack(f"stage: {stage}: {'a reward model' if stage == 'rm' else 'PPO with a reward model'} "
               f"(objectives: {', '.join(OBJECTIVES)}; grpo trains by reinforcement with rewards of its own)")
        return "examples"
    name = STAGE_OBJECTIVE.get(stage, stage)
    loss = d.get("pref_loss", "sigmoid")
    settings: dict[str, Any] = {}
    if loss in OBJECTIVES:  # LLaMA-Factory's stage dpo trains orpo and simpo by pref_loss
        name = loss
    elif d.get("pref_loss") is not None:
        settings["loss_type"] = loss
    registered = OBJECTIVES.get(name)
    if registered is None:
        d.lack(f"stage: {stage}: objectives are {', '.join(OBJECTIVES)}")
        return "examples"
    fields = registered.settings.model_fields
    if "beta" in fields:
        settings["beta"] = d.get("pref_beta", 0.1)
    if d.get("simpo_gamma") is not None and "gamma_beta_ratio" in fields:
        settings["gamma_beta_ratio"] = d.get("simpo_gamma") / settings["beta"]
        d.note("simpo_gamma written as objective.gamma_beta_ratio (γ / β)")
    if d.get("pref_ftx"):
        d.lack(f"pref_ftx: {d.get('pref_ftx')}: an SFT term beside the preference loss (orpo has one by design)")
    if d.get("kto_chosen_weight") is not None:
        settings["desirable_weight"] = d.get("kto_chosen_weight")
    if d.get("kto_rejected_weight") is not None:
        settings["undesirable_weight"] = d.get("kto_rejected_weight")
    d.set("objective", {"name": name, **{k: v for k, v in settings.items() if k in fields}})
    return registered.trains_on


def _method(d: Draft) -> None:
    kind, bits = d.get("finetuning_type", "lora"), d.get("quantization_bit")
    if bits is not None and bits not in (4, 8):
        d.lack(f"quantization_bit: {bits}: a {bits}-bit base: the product quantizes a frozen base to 4 or 8 bits")
    registered = REGISTRY.get(str(kind))
    if registered is None:
        d.lack(f"finetuning_type: {kind}: {OTHER_METHODS.get(str(kind), 'a method of LLaMA-Factory')} (methods are "
               f"{', '.join(REGISTRY)})")
        return
    if registered.trains_all_weights:
        d.set("method", kind)
        if d.get("pure_bf16"):
            d.set("model.dtype", "bfloat16")
            d.note("pure_bf16: written as model.dtype: bfloat16 (bf16 weights, no fp32 master copy)")
        return
    d.set("method.name", "qlora" if bits in (4, 8) else "dora" if d.get("use_dora") else "lora")
    if bits == 8:
        d.set("method.quant_type", "int8")
        d.note("quantization_bit: 8 written as method qlora, quant_type: int8 (bitsandbytes LLM.int8)")
    r = int(d.get("lora_rank", 8))
    d.set("method.r", r)
    alpha = d.get("lora_alpha")
    if alpha is None:
        d.note(f"method.alpha: {2 * r}: LLaMA-Factory's lora_alpha defaults to 2 × lora_rank (written out)")
    d.set("method.alpha", alpha or 2 * r)
    dropout = d.get("lora_dropout")
    if dropout is None:
        d.note("method.dropout: 0.0: LLaMA-Factory's default written out (the product's is 0.05)")
    d.set("method.dropout", dropout or 0.0)
    target = str(d.get("lora_target", "all"))
    d.set("method.target_modules", "all-linear" if target == "all" else [t.strip() for t in target.split(",")])
    if d.get("additional_target"):
        d.set("method.modules_to_save", [t.strip() for t in str(d.get("additional_target")).split(",")])
    if d.get("use_rslora"):
        d.set("method.use_rslora", True)


def _data(d: Draft, kind: str) -> None:
    names = [n.strip() for n in str(d.get("dataset", "")).split(",") if n.strip()]
    if not names:
        d.lack("dataset: none named")
        return
    info = _dataset_info(d)
    sources = []
    for name in names:
        entry = info.get(name)
        if entry is None:
            d.lack(f"dataset: {name} is not in dataset_info.json")
            continue
        media = [c for c in MEDIA_COLUMNS if c in (entry.get("columns") or {})]
        if media:
            d.lack(f"dataset: {name}: images/video/audio rows ({', '.join(media)}; text models only)")
            continue
        sources.append(_dataset(d, name, entry, kind))
    if len(sources) == len(names) and all(s is not None for s in sources):
        _sources(d, sources)
    evals = [n.strip() for n in str(d.get("eval_dataset", "")).split(",") if n.strip()]
    if evals and evals[0] in info:
        d.set("data.eval_source", _source(d, info[evals[0]]))
    hold_out_and_length(d, tool="LLaMA-Factory", split=d.get("val_size", 0), split_key="val_size",
                        length=d.get("cutoff_len"), length_key="cutoff_len", eval_file=bool(evals))
    packing = d.get("packing", d.get("stage") == "pt")
    if packing:
        d.set("data.packing", True)
    if d.get("train_on_prompt"):
        d.set("data.completion_only_loss", False)


def _sources(d: Draft, sources: list[dict[str, Any]]) -> None:
    """One dataset as data.source; several as data.sources, weighted by interleave_probs when mixed that way.
    max_samples caps each dataset in LLaMA-Factory: each source here."""
    cap = {"max_samples": int(d.get("max_samples"))} if d.get("max_samples") else {}
    if len(sources) == 1:
        for key, value in {**sources[0], **cap}.items():
            d.set(f"data.{key}", value)
        return
    strategy = str(d.get("mix_strategy", "concat"))
    probs = [float(p) for p in str(d.get("interleave_probs", "")).split(",") if p.strip()]
    weighted = strategy.startswith("interleave")
    if weighted and not probs:
        probs = [1.0] * len(sources)  # datasets.interleave_datasets without probabilities: one row of each in turn
    if weighted and len(probs) != len(sources):
        d.lack(f"interleave_probs: {len(probs)} probabilities for {len(sources)} datasets")
        return
    d.set("data.sources", [{**s, **cap, **({"weight": p} if weighted else {})}
                           for s, p in zip(sources, probs or [None] * len(sources), strict=True)])
    if strategy == "interleave_over":
        d.set("data.stopping_strategy", "all_exhausted")
    note = "mixed by weight in exact proportion (interleave_datasets samples them)" if weighted else "concatenated"
    d.note(f"dataset: {len(sources)} datasets written as data.sources, {note}; the hold-out (val_size) is taken from "
           "each source, where LLaMA-Factory takes it from the merged rows")


def _dataset_info(d: Draft) -> dict[str, Any]:
    folder = str(d.get("dataset_dir", "data"))
    found = d.find(f"{folder}/dataset_info.json") or d.find("dataset_info.json")
    if found is None:
        d.lack(f"dataset_dir: {folder}/dataset_info.json not found (pass --data-dir DIR, the folder holding it)")
        return {}
    d.data_dir = found.parent
    try:
        return json.loads(found.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SpecError(f"{found}: cannot read dataset_info.json: {exc}") from None


def _source(d: Draft, entry: dict[str, Any]) -> str | None:
    if entry.get("hf_hub_url"):
        return str(entry["hf_hub_url"])
    if entry.get("file_name") and d.data_dir is not None:
        found = os.path.relpath(d.data_dir / entry["file_name"])  # as the user would write it, from here
        return found if not found.startswith("..") else str((d.data_dir / entry["file_name"]).resolve())
    d.lack(f"dataset_info.json: {entry}: neither a Hub id (hf_hub_url) nor a file (file_name)")
    return None


def _dataset(d: Draft, name: str, entry: dict[str, Any], kind: str) -> dict[str, Any] | None:
    """One entry of dataset_info.json as a source of the recipe, or None (with what it lacks)."""
    source: dict[str, Any] = {"source": _source(d, entry)}
    for key in ("subset", "script_url", "folder"):
        if entry.get(key):
            d.lack(f"dataset: {name}: {key} {entry[key]} (a Hub configuration or a loading script)")
    if entry.get("split", "train") != "train":
        source["split"] = entry["split"]
    if d.get("stage") == "pt":
        column = (entry.get("columns") or {}).get("prompt", "text")
        return {**source, "format": "text", **({"fields": {"text": column}} if column != "text" else {})}
    columns = entry.get("columns") or {}
    row_kind = kind if not (entry.get("ranking") or "kto_tag" in columns) else \
        "feedback" if "kto_tag" in columns else "preference"
    rows = llamafactory_rows(row_kind, entry)
    if rows is None:
        d.lack(f"dataset: {name}: formatting {entry.get('formatting')}: no row format of the product reads it")
        return None
    tags = entry.get("tags") or {}
    if tags and tags.get("role_tag", "from") not in ("from", "role"):
        d.lack(f"dataset: {name}: turns tagged {tags}: the product reads from/value and role/content turns")
    return {**source, "format": rows.format, **({"fields": rows.fields} if rows.fields else {})}


def _train(d: Draft) -> None:
    steps = d.get("max_steps", -1)
    if steps and steps > 0:
        d.set("train.max_steps", int(steps))
        d.get("num_train_epochs")
    else:
        epochs = d.get("num_train_epochs")
        if epochs is None:
            d.note("num_train_epochs not set: LLaMA-Factory's 3 written out (the product's default is 1)")
        d.set("train.epochs", float(epochs or 3.0))
    defaults = (("per_device_train_batch_size", "batch_size", 8), ("gradient_accumulation_steps", "grad_accum", 1),
                ("learning_rate", "lr", 5e-5), ("logging_steps", "logging_steps", 500),
                ("save_steps", "save_steps", 500))
    data = d.recipe.get("data", {})
    for key, target, default in defaults:
        d.set(f"train.{target}", d.get(key, default))
    for key, target in (("warmup_ratio", "warmup_ratio"), ("warmup_steps", "warmup_steps"), ("seed", "seed"),
                        ("weight_decay", "weight_decay"), ("max_grad_norm", "max_grad_norm"),
                        ("eval_steps", "eval_steps"), ("save_total_limit", "keep_checkpoints")):
        if d.get(key) is not None:
            d.set(f"train.{target}", d.get(key))
    d.scheduler("lr_scheduler_type", d.get("lr_scheduler_type", "linear"))
    if d.get("lr_scheduler_type") is None:
        d.note("lr_scheduler_type not set: LLaMA-Factory's linear written out (the product's default is cosine)")
    d.optimizer("optim", d.get("optim", "adamw_torch"))
    d.set("train.gradient_checkpointing", not d.get("disable_gradient_checkpointing", False))
    d.set("train.precision", "bf16" if d.get("bf16") else "fp16" if d.get("fp16") else "fp32")
    if not (d.get("bf16") or d.get("fp16")):
        d.note("train.precision: fp32: neither bf16 nor fp16 is set, so LLaMA-Factory trains in fp32 (written out)")
    if d.get("flash_attn"):
        d.attention("flash_attn", d.get("flash_attn"))
    if d.get("enable_liger_kernel"):
        d.set("train.liger_kernels", True)
    held_out = bool(data.get("eval_source") or data.get("eval_split"))
    d.strategies("LLaMA-Factory", held_out=held_out, defaults={"eval_strategy": "no"})  # TrainingArguments' default
