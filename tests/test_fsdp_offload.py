"""FSDP CPU offload (distributed: {strategy: fsdp, offload: true}): the spec, the GPU decisions branch by branch, their
real callers (the node's TrainingArguments, read back by transformers and accelerate's FSDP plugin; the process
group's backend), and the planner. What only a GPU proves (FSDP2 wrapping the model with the policy and training)
is tests/gpu/verify.sh's fsdp-offload case."""

from __future__ import annotations

import pytest

import sdk
from launch.gpu import fsdp_settings, process_group_backend
from sdk.core.plan import estimate
from sdk.core.summary import Hardware

LLAMA_8B = "meta-llama/Llama-3.1-8B"


def spec(**parts) -> sdk.FineTuneSpec:
    return sdk.FineTuneSpec(**{"model": "m", "data": "d.jsonl", **parts})


def test_the_spec_takes_offload_under_fsdp_and_keeps_zero_stage_deepspeed_only():
    assert spec(distributed={"strategy": "fsdp", "offload": True}).distributed.offload is True
    assert spec(method="full", distributed={"strategy": "fsdp", "offload": True}).distributed.offload is True
    assert spec(distributed={"strategy": "deepspeed", "zero_stage": 3, "offload": True}).distributed.offload is True
    with pytest.raises(sdk.SpecError, match="zero_stage is a DeepSpeed option"):
        spec(distributed={"strategy": "fsdp", "zero_stage": 3})
    for strategy in ("ddp", "auto"):
        with pytest.raises(sdk.SpecError, match="offload needs a sharding strategy.*fsdp or deepspeed"):
            spec(distributed={"strategy": strategy, "offload": True})
    # a 4-bit base stays refused under fsdp, offload or not
    with pytest.raises(sdk.SpecError, match="bitsandbytes#1945"):
        spec(method="qlora", distributed={"strategy": "fsdp", "offload": True})


@pytest.mark.parametrize("world", [1, 8])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_fsdp_settings_offload_on_and_off(world, checkpointing):
    off_args, off_env = fsdp_settings(cuda=True, world_size=world, checkpointing=checkpointing)
    on_args, on_env = fsdp_settings(cuda=True, world_size=world, checkpointing=checkpointing, offload=True)
    assert "cpu_offload" not in off_args["fsdp_config"] and "FSDP_OFFLOAD_PARAMS" not in off_env
    assert on_args["fsdp_config"]["cpu_offload"] is True
    # accelerate reads these when it starts the process group (cuda:nccl,cpu:gloo), at any world size
    assert on_env["FSDP_OFFLOAD_PARAMS"] == "true" and on_env["ACCELERATE_USE_FSDP"] == "true"
    # nothing else moves: the rest of the arguments are those without offload
    assert {k: v for k, v in on_args["fsdp_config"].items() if k != "cpu_offload"} == off_args["fsdp_config"]
    assert {k: v for k, v in on_env.items() if k != "FSDP_OFFLOAD_PARAMS"} == {**off_env, "ACCELERATE_USE_FSDP": "true"}
    assert on_args.get("gradient_checkpointing", True) is not checkpointing  # FSDP's own wrapper when checkpointing
    with pytest.raises(ValueError, match="fsdp needs GPUs"):
        fsdp_settings(cuda=False, world_size=world, checkpointing=checkpointing, offload=True)


def test_process_group_backend_branches():
    assert process_group_backend(cuda=False, cpu_collectives=False) == "gloo"
    assert process_group_backend(cuda=False, cpu_collectives=True) == "gloo"
    assert process_group_backend(cuda=True, cpu_collectives=False) == "nccl"
    assert process_group_backend(cuda=True, cpu_collectives=True) == "cuda:nccl,cpu:gloo"


@pytest.mark.parametrize("strategy,offload,expected", [
    ("fsdp", True, "cuda:nccl,cpu:gloo"), ("fsdp", False, "nccl"), ("deepspeed", True, "nccl"), ("ddp", False, "nccl")])
def test_the_node_starts_its_process_group_with_the_backend(monkeypatch, strategy, offload, expected):
    """launch.ranks.init, as the node calls it with the spec's distributed section (torch's GPU calls faked)."""
    import torch
    import torch.distributed as dist

    from launch import ranks

    started = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend, timeout: started.update(backend=backend))
    extra = {"zero_stage": 3} if strategy == "deepspeed" else {}
    ranks.init(spec(distributed={"strategy": strategy, "offload": offload, **extra}).distributed)
    assert started == {"backend": expected}


def test_the_node_load_environment_carries_the_offload(monkeypatch):
    import torch

    from launch.gpu import fsdp_load_environment

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert fsdp_load_environment("fsdp", offload=True) == {"ACCELERATE_USE_FSDP": "true", "FSDP_OFFLOAD_PARAMS": "true"}
    assert fsdp_load_environment("fsdp") == {}
    assert fsdp_load_environment("deepspeed", offload=True) == {}


@pytest.mark.parametrize("method", ["lora", "full"])
@pytest.mark.parametrize("offload", [True, False])
def test_the_trainer_arguments_reach_accelerate_as_fsdp2_cpu_offload(monkeypatch, tmp_path, method, offload):
    """The node's own code (launch.train.training_args, facts of an 8-GPU H100 node) builds the arguments; transformers'
    TrainingArguments parses their FSDP part and accelerate builds its FSDP plugin from what the Trainer hands it
    (transformers' Trainer: FullyShardedDataParallelPlugin(**args.fsdp_plugin_args)). The other arguments are for a
    GPU (bf16, tf32, fused AdamW), which TrainingArguments checks on this CPU, so only the FSDP ones are passed."""
    from accelerate.utils import FullyShardedDataParallelPlugin
    from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy
    from transformers import TrainingArguments

    from launch import ranks
    from launch.train import training_args

    for name in ("FSDP_OFFLOAD_PARAMS", "ACCELERATE_USE_FSDP"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FSDP_CPU_RAM_EFFICIENT_LOADING", "false")  # TrainingArguments writes it; restored after
    monkeypatch.setattr(ranks, "world_size", lambda: 8)  # this process alone: TrainingArguments would join a group
    run = spec(method=method, distributed={"strategy": "fsdp", "offload": offload},
               train={"gradient_checkpointing": True})
    args = training_args(run, precision="bf16", hardware=Hardware(device="cuda", count=8, capability=(9, 0)),
                         workdir=tmp_path, has_eval=False)
    assert args["fsdp"] is True and args["gradient_checkpointing"] is False
    parsed = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[],
                               **{k: args[k] for k in ("fsdp", "fsdp_config", "gradient_checkpointing")})
    assert parsed.fsdp_plugin_args.get("cpu_offload", False) is offload
    plugin = FullyShardedDataParallelPlugin(**parsed.fsdp_plugin_args)
    assert plugin.fsdp_version == 2 and plugin.activation_checkpointing is True
    assert isinstance(plugin.cpu_offload, CPUOffloadPolicy) is offload and isinstance(plugin.cpu_offload, OffloadPolicy)
    if offload:
        assert plugin.cpu_offload.pin_memory  # pinned host memory: the copies overlap compute


# Llama-3.1-8B, seq 2048 x 1, checkpointing, bf16: GiB allocated per GPU without and with offload (docs/planning.md)
PLANNED = {("lora", 1): (19.2, 5.4), ("lora", 8): (5.6, 5.4), ("full", 1): (123.1, 7.0), ("full", 8): (18.3, 7.0)}


@pytest.mark.parametrize("method,gpus", list(PLANNED))
def test_the_planner_holds_less_per_gpu_with_fsdp_offload(method, gpus):
    def plan(offload: bool):
        return estimate(sdk.FineTuneSpec(model=LLAMA_8B, data={"source": "d.jsonl", "max_length": 2048}, method=method,
                                         resources={"accelerators": {"H100": gpus}},
                                         distributed={"strategy": "fsdp", "offload": offload},
                                         train={"batch_size": 1, "gradient_checkpointing": True, "precision": "bf16"}))

    sharded, offloaded = plan(False), plan(True)
    assert offloaded.allocated_bytes < sharded.allocated_bytes
    gib = (round(sharded.allocated_bytes / 2**30, 1), round(offloaded.allocated_bytes / 2**30, 1))
    assert gib == PLANNED[method, gpus]
    parts = {c.name: c for c in offloaded.components}
    # Llama-3.1-8B: head 525M params + 2 decoder layers of 218M, gathered in bf16
    assert parts["weights (FSDP offload)"].bytes >= (525_336_576 + 2 * 218_112_000) * 2
    assert parts["optimizer"].bytes == 0 and "CPU memory" in parts["weights (FSDP offload)"].note
    same = {c.name: c.bytes for c in sharded.components}
    assert parts["activations"].bytes == same["activations"] and parts["logits"].bytes == same["logits"]


def test_planned_bytes_models_fsdp_offload_and_not_deepspeeds():
    from launch.launcher import planned_bytes

    def llama(**distributed):
        return sdk.FineTuneSpec(model=LLAMA_8B, data="d.jsonl", distributed=distributed)

    on, off = planned_bytes(llama(strategy="fsdp", offload=True)), planned_bytes(llama(strategy="fsdp"))
    assert on is not None and off is not None and on < off
    assert planned_bytes(llama(strategy="deepspeed", zero_stage=3, offload=True)) is None
