"""Planner: exact parameter counts, trainable counts equal to what peft builds, and the field's sanity figures."""

from __future__ import annotations

import json

import pytest

from sdk.core.architectures import REGISTRY, Shapes, config_for
from sdk.core.plan import GPUS, estimate, rank_accelerators, trainable_params
from sdk.core.recipes import load_recipe
from sdk.core.spec import FineTuneSpec

torch = pytest.importorskip("torch")

KNOWN = {
    "meta-llama/Llama-3.1-8B": 8_030_261_248,
    "Qwen/Qwen2.5-0.5B": 494_032_768,
    "HuggingFaceTB/SmolLM2-135M": 134_515_008,
}


@pytest.mark.parametrize("name", list(REGISTRY))
def test_parameter_count_equals_meta_device_model(name):
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = dict(REGISTRY[name])
    config = AutoConfig.for_model(cfg.pop("model_type"), **{k: v for k, v in cfg.items() if v is not None})
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    built = sum(p.numel() for p in model.parameters())
    assert Shapes(REGISTRY[name]).total_params() == built
    if name in KNOWN:
        assert built == KNOWN[name]


def _spec(method, **extra) -> FineTuneSpec:
    return FineTuneSpec(**{"model": "tiny:llama", "method": method, "data": "builtin:news-topics", **extra})


@pytest.mark.parametrize(
    "method",
    [
        {"name": "lora", "r": 8},
        {"name": "lora", "r": 4, "target_modules": "attention"},
        {"name": "lora", "r": 4, "target_modules": ["q_proj", "v_proj"]},
        {"name": "dora", "r": 8},
        {"name": "ia3"},
        {"name": "prompt_tuning", "num_virtual_tokens": 10},
        {"name": "prefix_tuning", "num_virtual_tokens": 10},
        {"name": "prefix_tuning", "num_virtual_tokens": 10, "projection": True},
        {"name": "head_only"},
        {"name": "full"},
    ],
    ids=lambda m: "-".join(str(v) for v in m.values()),
)
def test_trainable_count_equals_what_peft_builds(method):
    from launch.methods import builder_for
    from launch.models import load_model, load_tokenizer, local_source
    from launch.runtime import count_parameters

    spec = _spec(method)
    source = local_source(spec.model)
    model = load_model(spec.model, dtype=torch.float32, source=source)
    attached = builder_for(spec).attach(model, spec, load_tokenizer(spec.model, source), source.path)
    trainable, total = count_parameters(attached)
    shapes = Shapes(config_for("tiny:llama"))
    assert trainable_params(spec, shapes) == trainable
    if spec.method.name in ("lora", "full"):
        assert shapes.total_params() + (trainable if spec.method.name == "lora" else 0) == total


def test_field_sanity_figures():
    gb = 1e9
    llama8b_qlora = estimate(load_recipe("llama8b"))
    assert llama8b_qlora.required_bytes < 24 * gb  # 7-8B QLoRA fits a 24 GB GPU
    assert {"L4", "A10G"} <= {f.gpu for f in llama8b_qlora.fits if f.fits}
    full_7b = estimate(load_recipe("qwen7b-2node-zero3", ["distributed=ddp", "resources.nodes=1", "resources.accelerators=H100:1",
                                                          "train.batch_size=1", "data.max_length=512", "train.gradient_checkpointing=true"]))
    assert full_7b.required_bytes > 80 * gb  # 7B full fine-tuning needs more than one 80 GB GPU
    qlora_70b = estimate(load_recipe("llama8b", ["model=meta-llama/Llama-3.1-70B", "data.max_length=512", "train.batch_size=1"]))
    assert qlora_70b.required_bytes < 48 * gb  # 70B QLoRA fits 48 GB at short sequence
    zero3 = estimate(load_recipe("qwen7b-2node-zero3"))
    assert zero3.world_size == 16 and zero3.required_bytes < full_7b.required_bytes / 3


def test_components_move_the_right_way():
    base = estimate(_spec("lora", data={"source": "x.jsonl", "max_length": 1024}))
    ckpt = estimate(_spec("lora", data={"source": "x.jsonl", "max_length": 1024}, train={"gradient_checkpointing": True}))
    part = {c.name: c.bytes for c in base.components}
    assert {c.name: c.bytes for c in ckpt.components}["activations"] < part["activations"]
    qlora = estimate(FineTuneSpec(model="meta-llama/Llama-3.1-8B", method="qlora", data="x"))
    no_dq = estimate(FineTuneSpec(model="meta-llama/Llama-3.1-8B", method={"name": "qlora", "double_quant": False}, data="x"))
    four_bit = {c.name: c.bytes for c in qlora.components}["weights (4-bit)"]
    four_bit_no_dq = {c.name: c.bytes for c in no_dq.components}["weights (4-bit)"]
    linear = Shapes(config_for("meta-llama/Llama-3.1-8B")).linear_params()
    # QLoRA paper: double quantization cuts constants from 0.5 to 0.127 bits per parameter
    assert (four_bit - linear * 0.5) * 8 / linear == pytest.approx(0.127, abs=0.002)
    assert (four_bit_no_dq - linear * 0.5) * 8 / linear == pytest.approx(0.5, abs=0.001)
    assert rank_accelerators(load_recipe("llama8b"))[0] in GPUS


def test_unknown_architecture_is_a_clear_error():
    from sdk.core.errors import SpecError

    with pytest.raises(SpecError, match="model.id: no architecture known"):
        estimate(FineTuneSpec(model="someone/unknown-model", data="x"))


def test_cli_estimate(run_cli):
    result = run_cli("estimate", "llama8b", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["total_params"] == 8_030_261_248 and data["method"] == "qlora"
    table = run_cli("estimate", "qwen05b-agnews")
    assert table.returncode == 0 and "activations" in table.stdout and "A10G" in table.stdout
    bad = run_cli("estimate", "tiny", "--set", "model=someone/unknown")
    assert bad.returncode == 2 and "no architecture known" in bad.stderr
