"""Node side on the tiny model: every method trains, the loss falls, and the artifact reloads exactly."""

from __future__ import annotations

import json
import math

import pytest

from sdk.core.methods import method_named
from sdk.core.recipes import load_recipe
from sdk.core.spec import FineTuneSpec
from sdk.core.summary import RunSummary
from sdk.store import LocalStore, fetch_dir
from sdk.store.runfolder import RunFolder

torch = pytest.importorskip("torch")

# method -> (spec overrides, learning rate): each trains 8 steps, logging every step.
METHODS = {
    "lora": ({"name": "lora", "r": 8, "alpha": 16}, 5e-3),
    "dora": ({"name": "dora", "r": 8, "alpha": 16}, 5e-3),
    "qlora": ({"name": "qlora", "r": 8, "alpha": 16, "compute_dtype": "float32"}, 5e-3),
    "full": ({"name": "full"}, 2e-3),
    "head_only": ({"name": "head_only"}, 1e-2),
    "prompt_tuning": ({"name": "prompt_tuning", "num_virtual_tokens": 8, "init_text": "Classify the topic"}, 3e-2),
    "prefix_tuning": ({"name": "prefix_tuning", "num_virtual_tokens": 8}, 1e-2),
    "ia3": ({"name": "ia3"}, 5e-2),
}


def tiny_spec(method: dict, lr: float, **extra) -> FineTuneSpec:
    data = load_recipe("tiny").model_dump(mode="json")
    data["method"] = method
    data["train"].update(max_steps=8, lr=lr, logging_steps=1, batch_size=8)
    data["data"]["max_samples"] = 64
    data["eval"].update(num_samples=8, max_new_tokens=3, generations=2)
    for key, value in extra.items():
        data[key] = value
    return FineTuneSpec.model_validate(data)


def _run(spec: FineTuneSpec, tmp_path):
    from launch.node import run
    from launch.sink import RunSink

    folder = RunFolder(LocalStore(tmp_path / "store"), "run")
    sink = RunSink(folder, interval=3600)
    sink.start()
    outcome = run(spec, folder, sink, workdir=tmp_path / "work")
    sink.close("succeeded")
    return folder, sink, outcome


def _fixed_batch_loss(model, tokenizer, rows: list[dict]) -> float:
    """Mean token loss of the model on the same training rows (prompt + completion), dropout off."""
    texts = [row["prompt"] + row["completion"] for row in rows]
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        loss = model(**batch, labels=labels).loss.item()
    model.train(was_training)
    return loss


def _run_phases(spec: FineTuneSpec, tmp_path):
    """The node recipe phase by phase, with the loss on one fixed batch right after attaching and after training."""
    from launch.node import NodeRecipe, Outcome, quiet_libraries
    from launch.sink import RunSink

    quiet_libraries()
    folder = RunFolder(LocalStore(tmp_path / "store"), "run")
    sink = RunSink(folder, interval=3600)
    sink.start()
    recipe = NodeRecipe(spec, folder, sink, tmp_path / "work")
    recipe.setup()
    recipe.evaluate_before()
    recipe.attach()
    rows = recipe.data.train[:16]
    before = _fixed_batch_loss(recipe.model, recipe.tokenizer, rows)
    recipe.train()
    after = _fixed_batch_loss(recipe.model, recipe.tokenizer, rows)
    recipe.commit(recipe.save())
    recipe.evaluate_after()
    summary = recipe.summary()
    recipe.cleanup()
    sink.close("succeeded")
    return folder, sink, Outcome(recipe.model, recipe.tokenizer, summary), (before, after)


def _logits(model, tokenizer):
    batch = tokenizer(["### Instruction:\nClassify\n\n### Response:\n", "Reports say the striker won"], return_tensors="pt", padding=True)
    model.eval()
    with torch.no_grad():
        return model(**batch).logits.float()


@pytest.mark.parametrize("name", list(METHODS))
def test_method_trains_and_artifact_reloads(name, tmp_path):
    from launch.methods import builder_for
    from launch.models import load_model, local_source

    method, lr = METHODS[name]
    spec = tiny_spec(method, lr)
    folder, sink, outcome, (before, after) = _run_phases(spec, tmp_path)
    assert after < before, f"{name}: loss on a fixed training batch did not fall: {before:.4f} -> {after:.4f}"
    losses = [row["loss"] for row in sink.rows if "loss" in row]
    assert len(losses) == 8 and all(math.isfinite(x) for x in losses), losses

    summary = RunSummary.model_validate(folder.read_json("summary.json"))
    assert summary == outcome.summary
    assert summary.steps == 8 and summary.method == name
    assert 0 < summary.trainable_params <= summary.total_params
    assert summary.label_accuracy.before is not None and summary.label_accuracy.after is not None
    assert len(summary.generations) == 2
    metrics = folder.metrics()
    assert {"step", "loss", "lr", "grad_norm", "peak_mem_bytes"} <= set(metrics[1])

    artifact = fetch_dir(folder.store, "run/adapter", tmp_path / "fetched")
    files = {"peft_adapter": ["adapter_config.json", "adapter_model.safetensors"], "whole_model": ["model.safetensors"],
             "head_tensors": ["head.safetensors"]}[method_named(name).artifact]
    assert all((artifact / f).is_file() for f in files), sorted(p.name for p in artifact.iterdir())
    builder = builder_for(spec)
    quant = builder.quantization_config(spec, torch.float32)
    base = load_model(spec.model, dtype=torch.float32, quantization_config=quant, source=local_source(spec.model))
    reloaded = builder.reload(base, artifact)
    diff = (_logits(reloaded, outcome.tokenizer) - _logits(outcome.model, outcome.tokenizer)).abs().max().item()
    assert diff <= 1e-5, f"{name}: reloaded logits differ by {diff}"


def test_peft_adapter_loads_with_plain_peft(tmp_path):
    """A user with only transformers + peft loads the adapter the documented way."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    spec = tiny_spec(*METHODS["lora"])
    folder, _, outcome = _run(spec, tmp_path)
    artifact = fetch_dir(folder.store, "run/adapter", tmp_path / "adapter")
    config = json.loads((artifact / "adapter_config.json").read_text())
    base = AutoModelForCausalLM.from_pretrained(config["base_model_name_or_path"], dtype=torch.float32)
    model = PeftModel.from_pretrained(base, artifact)
    diff = (_logits(model, outcome.tokenizer) - _logits(outcome.model, outcome.tokenizer)).abs().max().item()
    assert diff <= 1e-5


def test_dpo_trains_on_tiny_model(tmp_path):
    spec = load_recipe("tiny-dpo", ["train.max_steps=6", "train.logging_steps=1", "data.max_samples=48"])
    folder, sink, _ = _run(spec, tmp_path)
    rows = [r for r in sink.rows if "loss" in r]
    assert len(rows) >= 5 and all(math.isfinite(r["loss"]) for r in rows)
    assert any(k.startswith("rewards/") for r in rows for k in r), rows[0]
    assert folder.adapter_manifest() is not None
    assert RunSummary.model_validate(folder.read_json("summary.json")).objective == "dpo"


def test_qlora_gradients_match_dequantized_fp32_twin():
    """LoRA gradients through the 4-bit NF4 (double-quant) base match an fp32 model holding the dequantized weights."""
    import bitsandbytes as bnb
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    from launch.tiny import ensure_tiny

    path = ensure_tiny("llama")
    quant = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.float32
    )
    q = AutoModelForCausalLM.from_pretrained(path, quantization_config=quant, device_map="cpu", dtype=torch.float32)
    f = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    quantized = 0
    for name, module in q.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            weight = bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state).float()
            f.get_submodule(name).weight.data.copy_(weight)
            quantized += 1
    assert quantized == 14  # 7 projections x 2 layers
    config = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", lora_dropout=0.0, init_lora_weights=False)
    torch.manual_seed(0)
    pq = get_peft_model(q, config)
    pf = get_peft_model(f, config)
    lora_state = {k: v for k, v in pq.state_dict().items() if "lora_" in k}
    pf.load_state_dict(lora_state, strict=False)
    tok = AutoTokenizer.from_pretrained(path)
    batch = tok(["Reports say the striker won the final in Lagos.", "Researchers unveiled a faster chip."], return_tensors="pt", padding=True)
    for model in (pq, pf):
        model.train()
        model(**batch, labels=batch["input_ids"]).loss.backward()
    gq = {n: p.grad for n, p in pq.named_parameters() if p.requires_grad}
    gf = {n: p.grad for n, p in pf.named_parameters() if p.requires_grad}
    assert gq.keys() == gf.keys() and len(gq) == 28
    worst = max(((gq[n] - gf[n]).norm() / gf[n].norm()).item() for n in gq)
    assert worst <= 0.01, f"relative gradient error {worst:.4%}"


def test_an_int8_base_lora_trains_on_the_cpu_and_its_adapter_reloads(tmp_path):
    """quant_type int8 (LLM.int8, Axolotl's load_in_8bit): bitsandbytes runs it on the CPU, the loss falls,
    and the adapter on a freshly loaded 8-bit base gives the trained model's logits."""
    import bitsandbytes as bnb

    from launch.methods import builder_for
    from launch.models import load_model, local_source

    spec = tiny_spec({"name": "qlora", "quant_type": "int8", "r": 8, "alpha": 16}, 5e-3)
    folder, _, outcome, (before, after) = _run_phases(spec, tmp_path)
    assert after < before, (before, after)
    int8 = [m for m in outcome.model.modules() if isinstance(m, bnb.nn.Linear8bitLt)]
    assert len(int8) == 14 and all(m.weight.dtype == torch.int8 for m in int8)  # 7 projections x 2 layers
    summary = RunSummary.model_validate(folder.read_json("summary.json"))
    assert summary.steps == 8 and summary.trainable_params > 0
    builder = builder_for(spec)
    quant = builder.quantization_config(spec, torch.float32)
    assert quant.load_in_8bit and not quant.load_in_4bit
    base = load_model(spec.model, dtype=torch.float32, quantization_config=quant, source=local_source(spec.model),
                      device_map="cpu")
    reloaded = builder.reload(base, fetch_dir(folder.store, "run/adapter", tmp_path / "fetched"))
    diff = (_logits(reloaded, outcome.tokenizer) - _logits(outcome.model, outcome.tokenizer)).abs().max().item()
    assert diff <= 1e-5, diff


REGEX = r"model\.layers\.\d+\.(self_attn\.[qv]|mlp\.down)_proj"
REGEX_MATCHES = [f"model.layers.{i}.{m}" for i in (0, 1) for m in ("mlp.down_proj", "self_attn.q_proj", "self_attn.v_proj")]


def test_a_regex_target_trains_exactly_the_modules_it_names(tmp_path):
    """target_modules as a regex (peft fullmatches it against full names): the adapter wraps those modules only."""
    spec = tiny_spec({"name": "lora", "r": 4, "alpha": 8, "target_modules": REGEX}, 5e-3)
    spec = spec.model_copy(update={"train": spec.train.model_copy(update={"max_steps": 2})})
    folder, sink, outcome = _run(spec, tmp_path)
    assert len([r for r in sink.rows if "loss" in r]) == 2
    wrapped = {n.removeprefix("base_model.model.") for n, m in outcome.model.named_modules() if hasattr(m, "lora_A")}
    assert sorted(wrapped) == REGEX_MATCHES
    artifact = fetch_dir(folder.store, "run/adapter", tmp_path / "adapter")
    assert json.loads((artifact / "adapter_config.json").read_text())["target_modules"] == REGEX


def test_a_regex_matching_no_module_stops_the_node_with_one_line(tmp_path):
    from launch.node import NodeRecipe
    from launch.sink import RunSink
    from sdk.core.errors import SpecError

    spec = tiny_spec({"name": "lora", "target_modules": r"model\.layers\.\d+\.attn\.q"}, 5e-3)
    folder = RunFolder(LocalStore(tmp_path / "store"), "run")
    recipe = NodeRecipe(spec, folder, RunSink(folder, interval=3600), tmp_path / "work")
    recipe.setup()
    with pytest.raises(SpecError) as raised:
        recipe.attach()
    line = str(raised.value).splitlines()[-1].strip()
    assert line == (r"method.target_modules: the pattern 'model\.layers\.\d+\.attn\.q' matches no layer an adapter "
                    r"can wrap (Linear, Embedding) in tiny:llama; "
                    "modules are named like model.layers.0.self_attn.q_proj, model.layers.0.self_attn.k_proj, "
                    "model.layers.0.mlp.down_proj")


def test_ia3_with_a_regex_targets_the_modules_it_matches():
    from launch.methods import Ia3Builder
    from launch.models import load_model, local_source

    spec = tiny_spec({"name": "ia3", "target_modules": REGEX}, 5e-2)
    model = load_model(spec.model, dtype=torch.float32, source=local_source(spec.model))
    config = Ia3Builder().peft_config(model, spec, None, "")
    assert sorted(config.target_modules) == REGEX_MATCHES
    assert sorted(config.feedforward_modules) == ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]


def test_tiny_model_like_a_recipe_trains_from_its_directory(tmp_path, run_cli):
    result = run_cli("tiny-model", str(tmp_path / "tiny-qwen"), "--like", "qwen05b-agnews")
    assert result.returncode == 0, result.stderr
    config = json.loads((tmp_path / "tiny-qwen" / "config.json").read_text())
    assert config["model_type"] == "qwen2" and config["tie_word_embeddings"] is True
    spec = tiny_spec(*METHODS["lora"], model=str(tmp_path / "tiny-qwen"))
    folder, sink, _ = _run(spec, tmp_path)
    assert folder.adapter_manifest() is not None and RunSummary.model_validate(folder.read_json("summary.json")).steps == 8


def test_qlora_adapter_weights_move_at_the_dpo_recipes_learning_rate(tmp_path):
    """bf16 training at llama8b-dpo's lr (5e-6): the QLoRA adapter stays fp32 (trl would cast it to bf16,
    where a step of 5e-6 on a weight of ~0.01 rounds away), and every trained tensor changes."""
    from launch.node import NodeRecipe, quiet_libraries
    from launch.sink import RunSink

    lr = load_recipe("llama8b-dpo").train.lr
    assert lr == 5e-6
    spec = tiny_spec({"name": "qlora", "r": 8, "alpha": 16}, lr, train={**tiny_spec(METHODS["lora"][0], lr).train.model_dump(),
                                                                       "precision": "bf16", "max_steps": 3})
    quiet_libraries()
    folder = RunFolder(LocalStore(tmp_path / "store"), "run")
    sink = RunSink(folder, interval=3600)
    recipe = NodeRecipe(spec, folder, sink, tmp_path / "work")
    recipe.setup()
    recipe.attach()
    frozen = {p.dtype for p in recipe.model.parameters() if not p.requires_grad and p.__class__.__name__ != "Params4bit"}
    assert frozen == {torch.bfloat16}  # no fp32 copy of embeddings, norms, head (launch.gpu.upcast_frozen_weights)
    start = {n: p.detach().clone() for n, p in recipe.model.named_parameters() if p.requires_grad}
    recipe.train()
    trained = {n: p.detach() for n, p in recipe.model.named_parameters() if p.requires_grad}
    assert {p.dtype for p in trained.values()} == {torch.float32}
    assert recipe.precision == "bf16" and len(trained) == 28
    unchanged = [n for n in start if torch.equal(start[n].float(), trained[n].float())]
    assert unchanged == [], unchanged
    # the same step on bf16 weights: most of lora_A would not have moved at all
    a = torch.cat([start[n].flatten() for n in start if "lora_A" in n])
    lost = (a.bfloat16() == (a - lr).bfloat16()).float().mean().item()
    assert lost > 0.9, lost


def test_packing_runs_padding_free_with_sdpa_and_the_summary_says_so(tmp_path):
    """data.packing on the CPU (SDPA): rows (~105 tokens) are packed into rows of up to 512, so a step
    sees more real tokens than an unpacked step of the same batch size; summary.features records it."""
    seen = {}
    for packing in (False, True):
        spec = tiny_spec(*METHODS["lora"])
        spec = spec.model_copy(update={"data": spec.data.model_copy(update={"packing": packing, "max_length": 512})})
        folder, sink, _ = _run(spec, tmp_path / str(packing))
        summary = RunSummary.model_validate(folder.read_json("summary.json"))
        assert summary.features.packing is packing and summary.attention == "sdpa"
        assert summary.features.activation_offloading is False and summary.features.optimizer == "adamw_torch"
        seen[packing] = max(r["tokens_seen"] for r in sink.rows if "tokens_seen" in r)
    assert seen[True] > 1.5 * seen[False], seen
