"""Every GPU decision, branch by branch, from the facts alone (this machine has no GPU); and the fail-fast
of a node that expects GPUs and finds none, for real."""

from __future__ import annotations

import time

import pytest

import sdk
from launch.gpu import (
    CudaFacts,
    activation_offloading,
    attention_choice,
    device_map,
    expected_gpus,
    missing_gpu_error,
    optimizer_name,
    packing_choice,
    quant_storage_dtype,
    save_route,
    upcast_frozen_weights,
)
from sdk.core.methods import gradient_checkpointing

CPU_TORCH = CudaFacts(available=False, device_count=0, torch_version="2.13.0+cpu", cuda_build=None, driver=None)
MISMATCHED = CudaFacts(available=False, device_count=0, torch_version="2.13.0+cu130", cuda_build="13.0", driver="535.104.05")
ONE_L4 = CudaFacts(available=True, device_count=1, torch_version="2.13.0+cu128", cuda_build="12.8", driver="570.1", capability=(8, 9))


def spec(**parts) -> sdk.FineTuneSpec:
    return sdk.FineTuneSpec(model="m", data="d.jsonl", **parts)


def test_expected_gpus_from_skypilot_then_the_spec():
    assert expected_gpus(spec(), {}) == (0, "no accelerators asked for")
    assert expected_gpus(spec(), {"SKYPILOT_NUM_GPUS_PER_NODE": "8"})[0] == 8
    assert expected_gpus(spec(), {"SKYPILOT_NUM_GPUS_PER_NODE": "0"})[0] == 0
    n, why = expected_gpus(spec(resources={"accelerators": "L4:1,A10G:1"}), {})
    assert n == 1 and "L4:1" in why


def test_missing_gpu_error_branches():
    assert missing_gpu_error(0, "-", CPU_TORCH, {}) is None
    assert missing_gpu_error(1, "-", ONE_L4, {}) is None
    cpu = missing_gpu_error(1, "SKYPILOT_NUM_GPUS_PER_NODE=1", CPU_TORCH, {})
    assert "finds no CUDA device" in cpu and "CPU-only build" in cpu and "torch 2.13.0+cpu" in cpu and "no NVIDIA driver" in cpu
    mismatch = missing_gpu_error(1, "x", MISMATCHED, {})
    assert "built for CUDA 13.0" in mismatch and "NVIDIA driver 535.104.05" in mismatch
    too_few = missing_gpu_error(8, "x", ONE_L4, {})
    assert "expects 8 GPU(s)" in too_few and "finds 1 CUDA device(s)" in too_few
    assert missing_gpu_error(1, "x", CPU_TORCH, {"FINETUNE_ALLOW_CPU": "1"}) is None  # on purpose, and said so


@pytest.mark.parametrize(
    "requested,cuda,capability,flash,expected",
    [
        ("auto", False, None, False, "sdpa"),
        ("auto", True, (8, 0), True, "flash_attention_2"),
        ("auto", True, (8, 0), False, "sdpa"),  # not installed
        ("auto", True, (7, 5), True, "sdpa"),  # T4: flash-attention 2 needs Ampere
        ("eager", True, (9, 0), True, "eager"),
        ("sdpa", True, (9, 0), True, "sdpa"),
        ("flash_attention_2", True, (9, 0), True, "flash_attention_2"),
    ],
)
def test_attention_choice(requested, cuda, capability, flash, expected):
    impl, why = attention_choice(requested, cuda=cuda, capability=capability, flash_attn_installed=flash)
    assert impl == expected and why


@pytest.mark.parametrize("cuda,capability,flash,reason", [(False, None, True, "CUDA GPU"), (True, (9, 0), False, "not installed"),
                                                          (True, (7, 0), True, "8.0+")])
def test_flash_attention_asked_for_but_impossible_is_an_error(cuda, capability, flash, reason):
    with pytest.raises(ValueError, match=f"train.attention: flash_attention_2 cannot run here: .*{reason}"):
        attention_choice("flash_attention_2", cuda=cuda, capability=capability, flash_attn_installed=flash)


@pytest.mark.parametrize("asked,cuda,quantized,checkpointing,capability,expected", [
    (None, True, True, True, (9, 0), True),     # QLoRA recomputing on an H100: measured free (OFFLOADING_MEASURED)
    (None, True, True, True, (8, 9), False),    # an L4 (PCIe Gen4): unmeasured, so off unless asked
    (None, True, True, True, None, False),
    (None, True, True, False, (9, 0), False),   # without checkpointing every activation would cross PCIe
    (None, True, False, True, (9, 0), False),   # a 16-bit base: memory is not the point by default
    (None, False, True, True, None, False),     # CPU: nothing to offload to
    (False, True, True, True, (9, 0), False),
    (True, True, False, False, (8, 9), True),   # asked for: done anywhere there is a GPU
])
def test_activation_offloading(asked, cuda, quantized, checkpointing, capability, expected):
    assert activation_offloading(asked, cuda=cuda, quantized_base=quantized, checkpointing=checkpointing,
                                 capability=capability) is expected


def test_every_default_offloading_capability_names_its_evidence():
    from launch.gpu import OFFLOADING_MEASURED

    assert OFFLOADING_MEASURED and all("tokens/s" in why and "results/" in why for why in OFFLOADING_MEASURED.values())


@pytest.mark.parametrize("dtype,expected", [("float16", True), ("bfloat16", False), ("float32", False)])
def test_frozen_weights_of_a_4bit_model_go_fp32_only_under_fp16(dtype, expected):
    assert upcast_frozen_weights(dtype) is expected


def test_activation_offloading_asked_for_on_cpu_is_an_error():
    with pytest.raises(ValueError, match="train.activation_offloading: .*no GPU"):
        activation_offloading(True, cuda=False, quantized_base=True, checkpointing=True)


def test_packing_only_where_attention_keeps_sequences_apart():
    assert packing_choice(False, "sdpa", packed_masks=True) == (False, False, None)
    assert packing_choice(True, "flash_attention_2", packed_masks=False) == (True, True, None)
    assert packing_choice(True, "sdpa", packed_masks=True) == (True, True, None)
    assert packing_choice(True, "eager", packed_masks=True) == (True, True, None)
    pack, free, note = packing_choice(True, "sdpa", packed_masks=False)
    assert (pack, free) == (False, False) and "attend to each other with sdpa" in note


def _config(name: str, **kw):
    import transformers

    return getattr(transformers, name)(**kw)


@pytest.mark.parametrize("config,kw,kinds", [
    ("LlamaConfig", {}, {"full_attention"}),                         # no layer list: a plain decoder
    ("Qwen2Config", {"num_hidden_layers": 2}, {"full_attention"}),   # layer_types, all softmax
    ("Gemma2Config", {"num_hidden_layers": 2}, {"full_attention", "sliding_attention"}),
    ("Qwen3NextConfig", {"num_hidden_layers": 4}, {"linear_attention", "full_attention"}),  # gated delta net + attention
    ("MambaConfig", {}, {"recurrent"}),
    ("JambaConfig", {"num_hidden_layers": 4}, {"linear_attention"}),  # Mamba mixers, named so by transformers
    ("FalconH1Config", {"num_hidden_layers": 2}, {"hybrid"}),          # attention beside a Mamba mixer in each layer
])
def test_layer_kinds_per_architecture_family(config, kw, kinds):
    from launch.gpu import layer_kinds

    found, where = layer_kinds(_config(config, **kw))
    assert found == kinds and where


@pytest.mark.parametrize("config,kw,packs", [
    ("LlamaConfig", {}, True), ("Qwen2Config", {"num_hidden_layers": 2}, True), ("Gemma2Config", {"num_hidden_layers": 2}, True),
    ("Qwen3NextConfig", {"num_hidden_layers": 4}, False), ("MambaConfig", {}, False), ("JambaConfig", {"num_hidden_layers": 4}, False),
    ("FalconH1Config", {"num_hidden_layers": 2}, False),
])
@pytest.mark.parametrize("attention", ["sdpa", "flash_attention_2"])
def test_padding_free_only_where_every_layer_is_softmax_attention(config, kw, packs, attention):
    """A varlen flash kernel does not rescue a linear-attention or Mamba layer: their state runs across the row."""
    from launch.gpu import layer_kinds

    kinds, where = layer_kinds(_config(config, **kw))
    pack, free, note = packing_choice(True, attention, packed_masks=True, kinds=kinds, kinds_from=where)
    assert (pack, free) == (packs, packs)
    if not packs:
        assert "training padded" in note and where in note


def test_a_hybrid_model_really_leaks_across_packed_rows():
    """The fact behind the refusal, on the installed transformers: Qwen3-Next's linear-attention layers let the
    first packed row change the second row's logits even with restarting position ids; a Llama does not."""
    import torch

    torch.manual_seed(0)
    a, b = torch.randint(0, 100, (1, 7)), torch.randint(0, 100, (1, 5))
    positions = torch.cat([torch.arange(7), torch.arange(5)])[None]
    import transformers

    config = transformers.Qwen3NextConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                          num_key_value_heads=2, vocab_size=100, layer_types=["linear_attention", "full_attention"],
                                          linear_num_value_heads=4, linear_num_key_heads=2, linear_key_head_dim=16,
                                          linear_value_head_dim=16, head_dim=16, num_experts=4, num_experts_per_tok=2,
                                          moe_intermediate_size=32, shared_expert_intermediate_size=32, attn_implementation="sdpa")
    model = transformers.Qwen3NextForCausalLM(config).eval()
    with torch.no_grad():
        alone = model(input_ids=b, use_cache=False).logits
        packed = model(input_ids=torch.cat([a, b], 1), position_ids=positions, use_cache=False).logits[:, 7:]
    assert (packed - alone).abs().max() > 1e-3


def test_installed_transformers_keeps_packed_sequences_apart_with_sdpa_and_eager():
    """The fact packing_choice relies on: with position ids that restart and no cache (as trl trains),
    two sequences packed in one row get the same logits as each one alone."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from launch.gpu import transformers_packs_masks

    assert transformers_packs_masks()
    torch.manual_seed(0)
    a, b = torch.randint(0, 100, (1, 7)), torch.randint(0, 100, (1, 5))
    for attention in ("sdpa", "eager"):
        model = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                             num_key_value_heads=2, vocab_size=100, attn_implementation=attention)).eval()
        alone = torch.cat([model(input_ids=a, use_cache=False).logits, model(input_ids=b, use_cache=False).logits], 1)
        positions = torch.cat([torch.arange(7), torch.arange(5)])[None]
        packed = model(input_ids=torch.cat([a, b], 1), position_ids=positions, use_cache=False).logits
        leaked = model(input_ids=torch.cat([a, b], 1), use_cache=False).logits
        assert (packed - alone).abs().max() < 1e-5, attention
        assert (leaked - alone).abs().max() > 1e-2  # the check can fail: without position ids b sees a


@pytest.mark.parametrize(
    "quantized,cuda,local_rank,zero3,expected",
    [
        (True, True, 3, False, {"": 3}),  # DDP: each rank's 4-bit model on its own GPU
        (False, True, 1, False, {"": 1}),
        (True, False, 0, False, "cpu"),
        (False, False, 0, False, None),
        (False, True, 2, True, None),  # ZeRO-3: zero.Init places the shards
        (True, True, 2, True, None),   # ZeRO-3 refuses any device_map; bitsandbytes takes the rank's current GPU
        (True, False, 0, True, None),  # ...and on the CPU (the caller used to force "cpu" here: the ZeRO-3 crash)
    ],
)
def test_device_map_per_local_rank(quantized, cuda, local_rank, zero3, expected):
    assert device_map(quantized=quantized, cuda=cuda, local_rank=local_rank, zero3=zero3) == expected


def test_device_map_under_fsdp_loads_on_the_cpu_for_fsdp_to_place():
    assert device_map(quantized=False, cuda=True, local_rank=3, zero3=False, fsdp=True) is None


def test_fsdp_settings_are_fsdp2_with_rank0_loading():
    from launch.gpu import fsdp_settings

    args, env = fsdp_settings(cuda=True, world_size=8, checkpointing=True)
    assert args["fsdp"] is True and args["gradient_checkpointing"] is False  # FSDP's own checkpoint wrapper instead
    config = args["fsdp_config"]
    assert config["version"] == 2 and config["auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert config["cpu_ram_efficient_loading"] is True and config["activation_checkpointing"] is True
    assert not {"use_orig_params", "sync_module_states"} & set(config)  # FSDP1 options FSDP2 ignores
    assert env == {"ACCELERATE_USE_FSDP": "true", "FSDP_CPU_RAM_EFFICIENT_LOADING": "true"}
    one, env1 = fsdp_settings(cuda=True, world_size=1, checkpointing=False)
    assert one["fsdp"] is True and env1 == {} and "activation_checkpointing" not in one["fsdp_config"]
    with pytest.raises(ValueError, match="fsdp needs GPUs"):
        fsdp_settings(cuda=False, world_size=2, checkpointing=False)


def test_fsdp_with_a_4bit_base_is_refused_before_launch_naming_the_bug():
    with pytest.raises(sdk.SpecError, match=r"distributed.strategy: .*bitsandbytes#1945.*deepspeed with zero_stage: 3"):
        spec(method="qlora", distributed="fsdp")
    assert spec(method="lora", distributed="fsdp").distributed.strategy == "fsdp"


def test_zero3_offload_with_a_4bit_base_offloads_the_optimizer_only():
    from launch.launcher import deepspeed_config

    zero = deepspeed_config(spec(method="qlora", distributed={"strategy": "deepspeed", "zero_stage": 3, "offload": True}))
    assert zero["zero_optimization"]["offload_optimizer"]["device"] == "cpu" and "offload_param" not in zero["zero_optimization"]


@pytest.mark.parametrize(
    "strategy,stage,expected",
    [("deepspeed", 3, "bfloat16"), ("fsdp", None, "bfloat16"), ("deepspeed", 2, None), ("ddp", None, None), ("auto", None, None)],
)
def test_quant_storage_for_sharded_4bit_weights(strategy, stage, expected):
    assert quant_storage_dtype("bfloat16", strategy=strategy, zero_stage=stage) == expected


def test_bnb_config_for_zero3_qlora_stores_in_the_compute_dtype():
    torch = pytest.importorskip("torch")
    from launch.methods import builder_for

    zero3 = spec(method="qlora", distributed={"strategy": "deepspeed", "zero_stage": 3})
    config = builder_for(zero3).quantization_config(zero3, torch.bfloat16)
    assert config.load_in_4bit and config.bnb_4bit_quant_type == "nf4" and config.bnb_4bit_use_double_quant
    assert config.bnb_4bit_compute_dtype == torch.bfloat16 and config.bnb_4bit_quant_storage == torch.bfloat16
    plain = spec(method="qlora")
    assert builder_for(plain).quantization_config(plain, torch.bfloat16).bnb_4bit_quant_storage == torch.uint8


def test_deepspeed_offload_config():
    from launch.launcher import deepspeed_config

    zero = deepspeed_config(spec(method="qlora", distributed={"strategy": "deepspeed", "zero_stage": 2, "offload": True}))
    assert zero["zero_optimization"]["offload_optimizer"] == {"device": "cpu", "pin_memory": True}
    assert "offload_param" not in zero["zero_optimization"]  # 4-bit weights are not offloadable
    full3 = deepspeed_config(spec(method="full", distributed={"strategy": "deepspeed", "zero_stage": 3, "offload": True}))
    assert full3["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert full3["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True


def test_fused_adamw_on_cuda_only():
    assert optimizer_name("adamw_torch", cuda=True) == "adamw_torch_fused"
    assert optimizer_name("adamw_torch", cuda=False) == "adamw_torch"
    assert optimizer_name("paged_adamw_8bit", cuda=True) == "paged_adamw_8bit"


def test_gradient_checkpointing_on_by_default_for_a_4bit_base():
    assert gradient_checkpointing(spec(method="qlora")) is True
    assert gradient_checkpointing(spec(method="lora")) is False
    assert gradient_checkpointing(spec(method="qlora", train={"gradient_checkpointing": False})) is False
    assert gradient_checkpointing(spec(method="prefix_tuning")) is False


def test_multi_node_gpu_runs_ask_for_the_best_network():
    from sdk.backends.skypilot import resources_config

    two = spec(resources={"accelerators": "H100:8", "nodes": 2})
    assert resources_config(two, managed=False)["network_tier"] == "best"
    assert "network_tier" not in resources_config(spec(resources={"accelerators": "H100:8"}), managed=False)


@pytest.mark.slow
def test_a_node_that_expects_a_gpu_and_finds_none_stops_fast(run_cli, tmp_path, finetune_home):
    """SKYPILOT_NUM_GPUS_PER_NODE=1 on this CPU machine: non-zero exit within seconds, the error names CUDA,
    the run folder says failed, and no training step ran."""
    env = {"FINETUNE_HOME": str(finetune_home), "SKYPILOT_NUM_GPUS_PER_NODE": "1"}
    start = time.time()
    result = run_cli("launch", "tiny", "--local", f"--set=output={tmp_path / 'runs'}", env=env, timeout=60)
    elapsed = time.time() - start
    assert result.returncode != 0 and elapsed < 30, (elapsed, result.stderr)
    assert "finds no CUDA device" in result.stderr and "torch 2.13.0" in result.stderr
    (folder,) = list((tmp_path / "runs").iterdir())
    run = sdk.Run(str(folder))
    status = run.status()
    assert status.state == "failed" and "CUDA" in status.error and not run.metrics()


def test_save_route_per_strategy():
    assert save_route(strategy="fsdp", world_size=8, artifact="peft_adapter") == "trainer"  # whole state dict, not a shard
    assert save_route(strategy="fsdp", world_size=1, artifact="peft_adapter") == "trainer"  # FSDP on one GPU is FSDP too
    assert save_route(strategy="deepspeed", world_size=2, artifact="whole_model") == "gathered"
    assert save_route(strategy="ddp", world_size=2, artifact="peft_adapter") == "direct"
    with pytest.raises(ValueError, match="head_only"):
        save_route(strategy="fsdp", world_size=2, artifact="head_tensors")


def test_layer_kinds_from_older_hybrid_config_fields():
    from types import SimpleNamespace

    from launch.gpu import layer_kinds

    assert layer_kinds(SimpleNamespace(model_type="jamba", layers_block_type=["mamba", "attention"]))[0] == {"mamba", "attention"}
    assert layer_kinds(SimpleNamespace(model_type="nemotron_h", hybrid_override_pattern="M-M*-"))[0] == {"mamba", "attention"}


CU130_ARCHS = ("sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120", "compute_120")  # torch 2.13+cu130: no Volta
CU126_ARCHS = ("sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90")


def gpu(capability, archs=CU130_ARCHS, *, count=1, name="NVIDIA L4", free=None) -> CudaFacts:
    return CudaFacts(available=True, device_count=count, torch_version="2.13.0+cu130", cuda_build="13.0", driver="580.65.06",
                     capability=capability, arch_list=archs, name=name, free_bytes=free)


@pytest.mark.parametrize("capability,archs,refused", [
    ((7, 0), CU130_ARCHS, True),     # V100 under cu130: is_available() is True, every kernel fails
    ((7, 0), CU126_ARCHS, False),    # cu126 keeps Volta
    ((8, 9), CU130_ARCHS, False),    # L4: no sm_89 in the list, but sm_86 code runs on any 8.x with minor >= 6
    ((9, 0), CU130_ARCHS, False),
    ((12, 1), CU130_ARCHS, False),   # newer than every sm: compute_120 PTX compiles forward
    ((8, 7), ("sm_75", "sm_90"), True),  # nothing for major 8 and no PTX
])
def test_a_gpu_without_kernels_in_this_torch_is_refused(capability, archs, refused):
    from launch.gpu import arch_error

    error = arch_error(gpu(capability, archs, name="Tesla V100-SXM2-16GB"))
    assert (error is not None) is refused
    if refused:
        assert "Tesla V100-SXM2-16GB" in error and f"sm_{capability[0]}{capability[1]}" in error and "resources.accelerators" in error
    assert arch_error(CPU_TORCH) is None


def test_bf16_gpu_and_process_count_checks():
    from launch.gpu import bf16_error, gpu_count_error

    t4 = gpu((7, 5), name="Tesla T4")
    assert "Tesla T4" in bf16_error("bf16", t4) and "precision auto" in bf16_error("bf16", t4)
    assert bf16_error("auto", t4) is None and bf16_error("bf16", gpu((8, 0))) is None and bf16_error("bf16", CPU_TORCH) is None
    two = gpu((9, 0), count=2, name="NVIDIA H100")
    assert "4 processes on a node with 2 GPU(s)" in gpu_count_error(4, two)
    assert gpu_count_error(2, two) is None and gpu_count_error(None, two) is None and gpu_count_error(4, CPU_TORCH) is None


def test_free_memory_far_below_the_plan_is_refused():
    from launch.gpu import memory_error

    gib = 2**30
    busy = gpu((8, 9), free=10 * gib)
    assert "10.0 GiB free" in memory_error(16 * gib, busy) and "about 16.0 GiB" in memory_error(16 * gib, busy)
    from launch.launcher import planned_bytes

    # memory the planner does not model: no refusal on its word
    assert planned_bytes(spec(distributed={"strategy": "deepspeed", "zero_stage": 3, "offload": True})) is None
    assert planned_bytes(spec(train={"liger_kernels": True})) is None
    assert memory_error(14 * gib, busy) is None  # within the planner's error: go on
    assert memory_error(None, busy) is None and memory_error(16 * gib, CPU_TORCH) is None


def test_the_launcher_refuses_an_unusable_gpu_before_any_rank_starts():
    """The real caller: launcher.gpu_check, with a node's facts, asks every check in turn."""
    from launch.launcher import gpu_check

    env = {"SKYPILOT_NUM_GPUS_PER_NODE": "1"}
    v100 = gpu((7, 0), name="Tesla V100-SXM2-16GB", free=15 * 2**30)
    assert "no kernels in torch" in gpu_check(spec(), env, facts=v100)
    assert "bf16 needs compute capability 8.0+" in gpu_check(spec(train={"precision": "bf16"}), env, facts=gpu((7, 5), CU126_ARCHS))
    assert "nproc_per_node" in gpu_check(spec(distributed={"nproc_per_node": 2}), env, facts=gpu((8, 9), free=20 * 2**30))
    assert gpu_check(spec(), env, facts=gpu((8, 9), free=20 * 2**30)) is None
    assert gpu_check(spec(), {}, facts=v100) is None  # no GPUs expected: a CPU run
