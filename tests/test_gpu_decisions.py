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
from sdk.methods import gradient_checkpointing

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


@pytest.mark.parametrize("asked,cuda,quantized,checkpointing,expected", [
    (None, True, True, True, True),     # QLoRA recomputing activations on a GPU: offload what it saves
    (None, True, True, False, False),   # without checkpointing every activation would cross PCIe
    (None, True, False, True, False),   # a 16-bit base: memory is not the point by default
    (None, False, True, True, False),   # CPU: nothing to offload to
    (False, True, True, True, False),
    (True, True, False, False, True),
])
def test_activation_offloading(asked, cuda, quantized, checkpointing, expected):
    assert activation_offloading(asked, cuda=cuda, quantized_base=quantized, checkpointing=checkpointing) is expected


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
        (True, True, 2, True, None),
    ],
)
def test_device_map_per_local_rank(quantized, cuda, local_rank, zero3, expected):
    assert device_map(quantized=quantized, cuda=cuda, local_rank=local_rank, zero3=zero3) == expected


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
    assert save_route(strategy="fsdp", world_size=1, artifact="peft_adapter") == "direct"
    assert save_route(strategy="deepspeed", world_size=2, artifact="whole_model") == "gathered"
    assert save_route(strategy="ddp", world_size=2, artifact="peft_adapter") == "direct"
    with pytest.raises(ValueError, match="head_only"):
        save_route(strategy="fsdp", world_size=2, artifact="head_tensors")
