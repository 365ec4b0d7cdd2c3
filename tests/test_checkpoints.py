"""Checkpoints that resume: killed right after a committed checkpoint, or in the middle of writing one,
a restarted node continues from the newest committed checkpoint and ends where an uninterrupted run ends."""

from __future__ import annotations

import pytest
from helpers import losses, run_node

from sdk.core.recipes import load_recipe

STEPS = ["train.max_steps=15", "train.save_steps=5", "train.logging_steps=1", "data.max_samples=64",
         "eval.num_samples=4", "eval.max_new_tokens=4"]


def spec_for(tmp_path, *extra):
    return load_recipe("tiny", [*STEPS, f"output={tmp_path}", *extra])


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    store = tmp_path_factory.mktemp("reference")
    result, folder = run_node(spec_for(store), store)
    assert result.returncode == 0, result.stderr[-3000:]
    return losses(folder)


def test_killed_after_a_committed_checkpoint_resumes_from_it(tmp_path, uninterrupted):
    spec = spec_for(tmp_path)
    killed, folder = run_node(spec, tmp_path, env={"FINETUNE_FAULT": "after-checkpoint:10"})
    assert killed.returncode == -9 and folder.committed_checkpoints() == [5, 10]
    assert folder.status()["state"] == "running"  # no final state: it died
    resumed, folder = run_node(spec, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from committed checkpoint 10" in resumed.stdout
    summary = folder.read_json("summary.json")
    assert summary["resumed_from_step"] == 10 and summary["steps"] == 15
    curve = losses(folder)
    assert sorted(curve) == sorted(uninterrupted) == list(range(1, 16))
    assert max(abs(curve[s] - uninterrupted[s]) for s in curve) < 1e-5


def test_killed_while_writing_a_checkpoint_ignores_the_partial_one(tmp_path, uninterrupted):
    spec = spec_for(tmp_path)
    killed, folder = run_node(spec, tmp_path, env={"FINETUNE_FAULT": "during-checkpoint:10"})
    assert killed.returncode == -9
    assert folder.store.list(folder.key("checkpoints/10"))  # some files of 10 landed...
    assert folder.committed_checkpoints() == [5]  # ...but without a manifest it does not exist
    resumed, folder = run_node(spec, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert folder.read_json("summary.json")["resumed_from_step"] == 5
    curve = losses(folder)
    assert max(abs(curve[s] - uninterrupted[s]) for s in uninterrupted) < 1e-5
    assert folder.committed_checkpoints() == [10, 15]  # 10 rewritten whole; keep_checkpoints=2 dropped 5


def test_a_corrupted_checkpoint_falls_back_to_the_previous_one(tmp_path, uninterrupted):
    spec = spec_for(tmp_path)
    run_node(spec, tmp_path, env={"FINETUNE_FAULT": "after-checkpoint:10"})
    optimizer = tmp_path / "r1" / "checkpoints" / "10" / "optimizer.pt"
    data = bytearray(optimizer.read_bytes())
    data[len(data) // 2] ^= 0xFF
    optimizer.write_bytes(bytes(data))
    resumed, folder = run_node(spec, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "skipping checkpoint 10" in resumed.stdout and "corrupted" in resumed.stdout
    assert folder.read_json("summary.json")["resumed_from_step"] == 5
    curve = losses(folder)
    assert max(abs(curve[s] - uninterrupted[s]) for s in uninterrupted) < 1e-5


def test_a_checkpoint_missing_a_file_falls_back_to_the_previous_one(tmp_path, uninterrupted):
    """Sealed, then a file lost (a lifecycle rule, a partial copy between buckets): skipped, not fatal."""
    spec = spec_for(tmp_path)
    run_node(spec, tmp_path, env={"FINETUNE_FAULT": "after-checkpoint:10"})
    (tmp_path / "r1" / "checkpoints" / "10" / "optimizer.pt").unlink()
    resumed, folder = run_node(spec, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "skipping checkpoint 10" in resumed.stdout
    assert folder.read_json("summary.json")["resumed_from_step"] == 5
    curve = losses(folder)
    assert max(abs(curve[s] - uninterrupted[s]) for s in uninterrupted) < 1e-5


def test_two_process_ddp_resumes_too(tmp_path, uninterrupted):
    spec = spec_for(tmp_path, "distributed.nproc_per_node=2", "train.batch_size=4")
    reference_store = tmp_path / "ref"
    reference, ref_folder = run_node(spec.model_copy(update={"output": str(reference_store)}), reference_store)
    assert reference.returncode == 0, reference.stderr[-3000:]
    killed, folder = run_node(spec, tmp_path, env={"FINETUNE_FAULT": "after-checkpoint:5"})
    assert killed.returncode != 0 and folder.committed_checkpoints() == [5]
    resumed, folder = run_node(spec, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert folder.read_json("summary.json")["resumed_from_step"] == 5
    curve, ref = losses(folder), losses(ref_folder)
    assert sorted(curve) == sorted(ref) and max(abs(curve[s] - ref[s]) for s in ref) < 1e-5


def test_a_finished_run_is_not_restarted(tmp_path):
    spec = load_recipe("tiny", ["train.max_steps=2", "eval.num_samples=2", "eval.max_new_tokens=2", f"output={tmp_path}"])
    first, folder = run_node(spec, tmp_path)
    assert first.returncode == 0
    manifest = folder.adapter_manifest()
    again, folder = run_node(spec, tmp_path)
    assert again.returncode == 2 and "already succeeded" in again.stderr and "Traceback" not in again.stderr
    assert folder.adapter_manifest() == manifest
