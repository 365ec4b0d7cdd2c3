"""Planner: exact parameter counts, trainable counts equal to what peft builds, and the field's sanity figures."""

from __future__ import annotations

import json

import pytest

from sdk.core.architectures import REGISTRY, Shapes, config_for
from sdk.core.plan import GPUS, estimate, estimate_cost, rank_accelerators, trainable_params
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
        {"name": "lora", "r": 4, "target_modules": r"model\.layers\.\d+\.(self_attn\.[qv]|mlp\.down)_proj"},
        {"name": "dora", "r": 8},
        {"name": "ia3"},
        {"name": "ia3", "target_modules": r".*\.(k_proj|up_proj)"},
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


def test_an_int8_base_is_planned_at_the_bytes_bitsandbytes_holds():
    """quant_type int8: 1 B per Linear weight + an fp32 scale per row, as the tiny model loaded in 8 bits holds."""
    import bitsandbytes as bnb
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from launch.tiny import ensure_tiny

    spec = FineTuneSpec(model="tiny:llama", method={"name": "qlora", "quant_type": "int8"}, data="x.jsonl")
    planned = {c.name: c.bytes for c in estimate(spec, device="cpu").components}
    model = AutoModelForCausalLM.from_pretrained(ensure_tiny("llama"), quantization_config=BitsAndBytesConfig(load_in_8bit=True),
                                                 dtype=torch.float32, device_map="cpu")
    held = sum(m.weight.numel() + 4 * m.weight.SCB.numel() for m in model.modules() if isinstance(m, bnb.nn.Linear8bitLt))
    assert planned["weights (8-bit)"] == held and "weights (4-bit)" not in planned
    nf4 = {c.name: c.bytes for c in estimate(spec.model_copy(update={"method": spec.method.model_copy(
        update={"quant_type": "nf4"})}), device="cpu").components}
    assert nf4["weights (4-bit)"] < held


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


# ------------------------------------------------------------------------------------------ objectives


def _grpo(*, rollouts="auto", accelerators="L4:1", **train) -> FineTuneSpec:
    return FineTuneSpec(model="Qwen/Qwen2.5-0.5B", method="lora", data={"source": "d.jsonl", "max_length": 512},
                        objective={"name": "grpo", "rewards": ["exact_match"], "max_completion_length": 256,
                                   "rollouts": rollouts},
                        train={"batch_size": 8, "grad_accum": 2, "max_steps": 100, **train},
                        resources={"accelerators": accelerators})


def _parts(est) -> dict[str, int]:
    return {c.name: c.bytes for c in est.components}


def test_sft_estimates_are_what_they_were():
    """Pinned before objectives reached the planner: sft's memory and cost do not move."""
    est = estimate(load_recipe("qwen05b-agnews"))
    assert est.allocated_bytes == 5_030_588_160 and est.required_bytes == 5_926_362_662
    assert [c.name for c in est.components] == ["weights", "trainable params", "gradients", "optimizer", "activations",
                                                "logits", "runtime overhead"]
    assert {f.gpu: f.headroom_gb for f in est.fits}["L4"] == 18.1
    assert estimate(load_recipe("llama8b")).required_bytes == 15_222_658_252
    cost = estimate_cost(load_recipe("qwen05b-agnews"), backend="skypilot")
    assert cost.hours == 0.252 and cost.rollout_hours is None


def test_preference_pairs_double_activations_and_add_the_reference_logits():
    base = dict(model="Qwen/Qwen2.5-0.5B", data={"source": "d.jsonl", "max_length": 512, "format": "preference"})
    sft = _parts(estimate(FineTuneSpec(**{**base, "data": {"source": "d.jsonl", "max_length": 512}})))
    dpo = estimate(FineTuneSpec(**base, objective="dpo"))
    orpo = _parts(estimate(FineTuneSpec(**base, objective="orpo")))  # pairs, no reference
    assert _parts(dpo)["activations"] == 2 * sft["activations"] and _parts(dpo)["logits"] == 2 * sft["logits"]
    tokens = 2 * 512 * 4
    assert _parts(dpo)["reference logits"] == tokens * 151_936 * (2 + 4)  # bf16 logits + fp32 log-softmax
    assert "adapter disabled" in next(c.note for c in dpo.components if c.name == "reference logits")
    assert "reference weights" not in _parts(dpo) and "reference logits" not in orpo
    full = _parts(estimate(FineTuneSpec(**base, objective="dpo", method="full")))
    assert full["reference weights"] == full["weights"]  # no adapter to disable: a frozen copy


def test_grpo_trains_on_prompt_plus_completion_and_holds_a_kv_cache_with_transformers():
    est = estimate(_grpo(rollouts="transformers"))
    parts = _parts(est)
    assert est.seq_len == 512 + 256 and est.micro_batch == 8
    sft = _parts(estimate(FineTuneSpec(model="Qwen/Qwen2.5-0.5B", data={"source": "d.jsonl", "max_length": 768},
                                       train={"batch_size": 8})))
    assert parts["activations"] == sft["activations"] and parts["logits"] == sft["logits"]  # the same tokens
    # 2 (K, V) × 24 layers × 2 KV heads × 64 head dim × 2 B × 16 answers in flight (batch × grad_accum) × 768 tokens
    assert parts["rollouts: KV cache"] == 2 * 24 * 2 * 64 * 2 * 16 * 768
    assert "vLLM" not in " ".join(parts)


def test_a_colocated_vllm_takes_its_share_of_every_gpu():
    est = estimate(_grpo(rollouts="vllm_colocate", accelerators="A100:1"))
    training = est.required_bytes - _parts(est)["rollouts: vLLM colocated"]
    assert _parts(est)["rollouts: vLLM colocated"] == int(0.3 * 40e9)  # shown on the GPU the spec names
    for fit in est.fits:  # fits when training fits in the 70% vLLM leaves
        assert fit.fits == (training <= 0.7 * fit.memory_gb * 1e9)
        assert fit.headroom_gb == round(fit.memory_gb - (training + 0.3 * fit.memory_gb * 1e9) / 1e9, 1)
    assert {f.gpu for f in est.fits if f.fits} != {f.gpu for f in est.fits if training <= f.memory_gb * 1e9}
    auto = estimate(_grpo(rollouts="auto", accelerators="A100:1"))
    assert _parts(auto) == _parts(est)  # auto plans vLLM colocated on GPUs ...
    cpu = estimate(_grpo(rollouts="auto"), device="cpu")
    assert "rollouts: KV cache" in _parts(cpu) and cpu.world_size == 1  # ... and transformers on the CPU


def test_a_vllm_server_takes_a_gpu_out_of_training():
    est = estimate(_grpo(rollouts="vllm_server", accelerators="H100:4"))
    assert est.world_size == 3
    server = next(c for c in est.components if c.name == "rollouts: vLLM server")
    assert server.bytes == 0 and "does not train" in server.note and "NEEDS" not in server.note
    assert "NEEDS 2+ GPUs" in next(c.note for c in estimate(_grpo(rollouts="vllm_server", accelerators="H100:1"))
                                   .components if c.name == "rollouts: vLLM server")
    big = estimate(FineTuneSpec(model="meta-llama/Llama-3.1-70B", method="qlora",
                                data={"source": "d", "max_length": 128},
                                objective={"name": "grpo", "rewards": ["exact_match"], "max_completion_length": 32,
                                           "rollouts": "vllm_server"}, train={"batch_size": 8},
                                resources={"accelerators": "B200:2"}))
    assert [f.gpu for f in big.fits if f.fits] == ["B200"]  # the serving GPU holds the 16-bit 70B: 141 GB in 0.9 of it


def test_rollout_time_is_bandwidth_bound_decoding():
    from sdk.core.objective_plan import BANDWIDTH_EFFICIENCY, GPU_BANDWIDTH_GBS

    spec = _grpo(rollouts="vllm_colocate", accelerators="H100:1")
    cost = estimate_cost(spec, backend="skypilot")
    shapes = Shapes(config_for("Qwen/Qwen2.5-0.5B"))
    kv = 2 * shapes.layers * shapes.kv_heads * shapes.head_dim * 2
    read = 2 * shapes.total_params() + 16 * kv * (512 + 256 / 2)  # the 16-bit base + the KV cache of 16 answers
    per_step = 256 * max(0.005, read / (GPU_BANDWIDTH_GBS["H100"] * 1e9 * BANDWIDTH_EFFICIENCY["vllm"]))
    assert cost.rollout_hours == round(100 * per_step / 3600, 3) and "rollouts:" in cost.note
    slower = estimate_cost(_grpo(rollouts="transformers", accelerators="H100:1"), backend="skypilot")
    assert slower.rollout_hours > cost.rollout_hours and slower.hours > cost.hours
    l4 = estimate_cost(_grpo(rollouts="vllm_colocate", accelerators="L4:1"), backend="skypilot")
    assert l4.rollout_hours > cost.rollout_hours  # 300 GB/s against 3,350
    note = next(c.note for c in estimate(spec).components if c.name.startswith("rollouts"))
    assert f"≈{per_step:.1f} s decoding per step on H100" in note


def test_cli_estimate_shows_the_rollouts(run_cli, tmp_path):
    recipe = tmp_path / "grpo.yaml"
    recipe.write_text(_grpo().model_dump_json())
    table = run_cli("estimate", str(recipe))
    assert table.returncode == 0, table.stderr
    assert "rollouts: vLLM colocated" in table.stdout and "vllm_gpu_memory_utilization" in table.stdout
