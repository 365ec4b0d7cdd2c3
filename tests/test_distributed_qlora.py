"""Distributed QLoRA on the CPU (gloo, 2 processes, the tiny model): under DDP, ZeRO-2, ZeRO-3 and ZeRO-3 with
the optimizer offloaded, a run killed after its first checkpoint resumes to the uninterrupted run's loss curve
and commits an adapter that, reloaded in another process, computes the logits training ended with.

FSDP cannot run on the CPU (accelerate enables it only on accelerators, launch.gpu.fsdp_settings) and FSDP with
a 4-bit base is refused before launch (bitsandbytes#1945); both are proven on a GPU by tests/gpu/verify.sh."""

from __future__ import annotations

import pytest
from helpers import losses, run_node

from sdk.core.recipes import load_recipe

QLORA = ["method=qlora", "distributed.nproc_per_node=2", "train.max_steps=6", "train.save_steps=3", "train.logging_steps=1",
         "data.max_samples=48", "eval.num_samples=4", "eval.max_new_tokens=4"]
STRATEGIES = {
    "ddp": ["distributed.strategy=ddp"],
    "zero2": ["distributed.strategy=deepspeed", "distributed.zero_stage=2"],
    "zero3": ["distributed.strategy=deepspeed", "distributed.zero_stage=3"],
    "zero3-offload": ["distributed.strategy=deepspeed", "distributed.zero_stage=3", "distributed.offload=true"],
}


def spec_for(store, strategy: str):
    return load_recipe("tiny", [*QLORA, *STRATEGIES[strategy], f"output={store}"])


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The loss curve of one uninterrupted 2-process QLoRA run: every strategy must reproduce it."""
    store = tmp_path_factory.mktemp("qlora-reference")
    result, folder = run_node(spec_for(store, "ddp"), store)
    assert result.returncode == 0, result.stderr[-3000:]
    return losses(folder)


def reloaded_logits(spec, adapter_dir, text: str):
    """The committed adapter on a freshly loaded 4-bit base, in this process (no process group, no DeepSpeed)."""
    import torch

    from launch.models import BaseLoader
    from sdk.core.precision import resolve_precision

    loader = BaseLoader.for_spec(spec, resolve_precision(spec.train.precision, capability=None))
    tokenizer = loader.tokenizer()
    model = loader.builder.reload(loader.load(), adapter_dir).eval()
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


@pytest.mark.slow
@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_distributed_qlora_trains_resumes_and_reloads(tmp_path, uninterrupted, strategy):
    import torch

    spec = spec_for(tmp_path, strategy)
    killed, folder = run_node(spec, tmp_path, env={"FINETUNE_FAULT": "after-checkpoint:3"})
    assert killed.returncode != 0 and folder.committed_checkpoints() == [3], killed.stderr[-3000:]
    probe = tmp_path / "probe.pt"
    resumed, folder = run_node(spec, tmp_path, env={"FINETUNE_PROBE_LOGITS": str(probe)})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from committed checkpoint 3" in resumed.stdout and "Traceback" not in resumed.stderr
    summary = folder.read_json("summary.json")
    assert (summary["world_size"], summary["steps"], summary["resumed_from_step"]) == (2, 6, 3)
    assert summary["method"] == "qlora" and summary["strategy"] == STRATEGIES[strategy][0].split("=")[1]
    curve = losses(folder)
    assert sorted(curve) == sorted(uninterrupted) == list(range(1, 7))
    assert max(abs(curve[s] - uninterrupted[s]) for s in curve) < 1e-4, (curve, uninterrupted)
    if strategy.startswith("zero3"):
        assert "ZeRO-3: the 4-bit base loads whole on each rank" in resumed.stdout
        assert "of 14 4-bit weights)" in resumed.stdout and "(14 of 14 4-bit weights)" in resumed.stdout  # partitioned
    if strategy == "zero3-offload":  # what can move moved: the adapter's optimizer states, updated by DeepSpeed's CPU Adam
        assert "DeepSpeedCPUAdam" in resumed.stdout + resumed.stderr
    trained = torch.load(probe)
    reloaded = reloaded_logits(spec, tmp_path / "r1" / "adapter", trained["text"])
    assert (reloaded - trained["logits"]).abs().max().item() < 1e-5
