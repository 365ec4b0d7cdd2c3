"""Local runs end to end: submit from Python or the CLI, watch, cancel, and fetch from the store alone."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time

import pytest

import sdk
from sdk.core.recipes import load_recipe
from sdk.machine.processes import group_members

FAST = ["train.max_steps=6", "train.logging_steps=2", "data.max_samples=48", "eval.num_samples=8", "eval.max_new_tokens=6"]


def tiny(output: str, *extra: str) -> sdk.FineTuneSpec:
    return load_recipe("tiny", [*FAST, f"output={output}", *extra])


def test_local_run_to_local_store(tmp_path, finetune_home):
    run = sdk.submit(tiny(str(tmp_path / "runs")))
    assert run.backend == "local" and run.status().state in ("pending", "running")
    final = run.wait(progress=False, timeout=180)
    assert final.state == "succeeded", run.logs()
    assert final.step == 6
    metrics = run.metrics()
    assert [m["step"] for m in metrics if "loss" in m][:3] == [1, 2, 4]
    summary = run.summary()
    assert summary.steps == 6 and summary.label_accuracy.after.total == 8
    cost = run.cost()  # this machine costs nothing unless priced (resources.hourly_price): tests/test_cost.py
    assert cost.final and cost.actual_usd == 0.0 and cost.estimate_usd == 0.0 and cost.billed_s > 0
    assert summary.cost == cost
    adapter = run.fetch_adapter(tmp_path / "adapter")
    _assert_same_as_store(adapter, run.folder)
    assert "succeeded" in run.logs()
    # the handle is found again by id (registry) and by URI (store)
    assert sdk.get_run(run.id).uri == run.uri
    assert sdk.get_run(run.uri).summary() == summary
    assert run.id in [r.id for r in sdk.list_runs(store=str(tmp_path / "runs"))]


def test_s3_run_then_fetch_from_another_machine(tmp_path, s3_env, finetune_home):
    env, bucket = s3_env
    run = sdk.submit(tiny(f"s3://{bucket}/team/runs"))
    assert run.uri == f"s3://{bucket}/team/runs/{run.id}"
    assert run.wait(progress=False, timeout=180).state == "succeeded", run.logs()

    import boto3

    client = boto3.session.Session().client("s3", endpoint_url=env["AWS_ENDPOINT_URL"])
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=f"team/runs/{run.id}/")["Contents"]}
    prefix = f"team/runs/{run.id}/"
    assert {prefix + k for k in ("spec.json", "status.json", "metrics.jsonl", "summary.json", "adapter/MANIFEST.json",
                                 "adapter/adapter_model.safetensors", "logs/node.log")} <= keys
    # "another machine": a fresh process with an empty registry, knowing only the URI
    other_home = tmp_path / "other-home"
    dest = tmp_path / "elsewhere"
    code = (
        "import sdk, sys; r = sdk.get_run(sys.argv[1]); print(r.status().state); r.fetch_adapter(sys.argv[2]);"
        "print(len(sdk.list_runs(store=sys.argv[3])))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, run.uri, str(dest), f"s3://{bucket}/team/runs"],
        capture_output=True, text=True, env={**os.environ, **env, "FINETUNE_HOME": str(other_home)}, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["succeeded", "1"]
    for rel in json.loads((dest / "MANIFEST.json").read_text())["files"]:
        body = client.get_object(Bucket=bucket, Key=f"{prefix}adapter/{rel}")["Body"].read()
        assert hashlib.sha256(body).digest() == hashlib.sha256((dest / rel).read_bytes()).digest()


def _assert_same_as_store(fetched, folder) -> None:
    """Every file the adapter's manifest lists is in `fetched`, byte for byte as in the store."""
    files = folder.adapter_manifest()["files"]
    assert "adapter_model.safetensors" in files and "adapter_config.json" in files
    for rel in files:
        assert (fetched / rel).read_bytes() == folder.store.get_bytes(folder.key(f"adapter/{rel}")), rel


def test_status_reads_only_and_reconcile_writes(tmp_path, finetune_home):
    """A node killed without a word: status() reports failed from the backend's view without writing
    status.json; reconcile() writes it, so a client reading the store alone sees it too."""
    import signal

    run = sdk.submit(tiny(str(tmp_path / "runs"), "train.max_steps=100000"))
    deadline = time.time() + 120
    while run.status().phase != "training" and time.time() < deadline:
        time.sleep(0.5)
    os.killpg(run.info.pid, signal.SIGKILL)
    deadline = time.time() + 10
    while run.status().state != "failed" and time.time() < deadline:
        time.sleep(0.2)
    key = run.folder.key("status.json")
    stored = run.folder.store.get_bytes(key)
    viewed = run.status()
    assert viewed.state == "failed" and "exited without a final status" in viewed.error
    assert run.folder.store.get_bytes(key) == stored and json.loads(stored)["state"] == "running"
    assert sdk.Run(run.uri).status().state == "running"  # a reader of the store alone does not know yet
    assert run.reconcile().state == "failed"
    assert json.loads(run.folder.store.get_bytes(key))["state"] == "failed"
    assert sdk.Run(run.uri).status().state == "failed"


def test_two_runs_at_once_stay_separate(tmp_path, finetune_home):
    runs = [sdk.submit(tiny(str(tmp_path / "runs"), f"name=twin{i}", f"train.seed={i}")) for i in range(2)]
    assert runs[0].id != runs[1].id
    states = [r.wait(progress=False, timeout=240).state for r in runs]
    assert states == ["succeeded", "succeeded"], [r.logs() for r in runs]
    specs = [r.spec() for r in runs]
    assert [s.train.seed for s in specs] == [0, 1]
    assert all(r.summary().run_id == r.id for r in runs)


def test_cancel_stops_a_running_run(tmp_path, finetune_home):
    run = sdk.submit(tiny(str(tmp_path / "runs"), "train.max_steps=100000"))
    deadline = time.time() + 120
    while run.status().phase != "training" and time.time() < deadline:
        time.sleep(0.5)
    assert run.status().state == "running"
    start = time.time()
    final = run.cancel()
    assert time.time() - start < 15
    assert final.state == "cancelled"
    assert run.folder.adapter_manifest() is None  # a cancelled run leaves no adapter
    assert run.wait(progress=False, timeout=5).state == "cancelled"


def test_a_cancel_from_another_machine_stops_the_run_through_its_folder(tmp_path, finetune_home, run_cli):
    """A client that knows only the run folder (no PID, no backend) cancels: the node polls the marker."""
    run = sdk.submit(tiny(str(tmp_path / "runs"), "train.max_steps=100000"))
    deadline = time.time() + 120
    while (run.status().step or 0) < 2 and time.time() < deadline:
        time.sleep(0.5)
    elsewhere = run_cli("cancel", run.uri, env={"FINETUNE_HOME": str(tmp_path / "elsewhere")})
    assert elsewhere.returncode == 0 and "cancelled" in elsewhere.stdout, elsewhere.stdout + elsewhere.stderr
    deadline = time.time() + 60
    while group_members(run.info.pid) and time.time() < deadline:
        time.sleep(0.5)
    assert not group_members(run.info.pid)
    assert json.loads(run.folder.store.get_bytes(run.folder.key("status.json")))["state"] == "cancelled"  # the node's own word
    assert run.folder.adapter_manifest() is None
    assert "cancel requested in the run folder" in run.logs()


def test_two_process_local_run_goes_through_torchrun_and_cancels(tmp_path, finetune_home):
    done = sdk.submit(tiny(str(tmp_path / "runs"), "distributed.nproc_per_node=2"))
    assert done.wait(progress=False, timeout=240).state == "succeeded", done.logs()
    assert "torch.distributed.run" in done.logs() and done.summary().world_size == 2

    run = sdk.submit(tiny(str(tmp_path / "runs"), "distributed.nproc_per_node=2", "train.max_steps=100000"))
    deadline = time.time() + 120
    while (run.status().step or 0) < 2 and time.time() < deadline:
        time.sleep(0.5)
    start = time.time()
    assert run.cancel().state == "cancelled"
    assert time.time() - start < 20
    # every rank is gone, not only the launcher
    assert not group_members(run.info.pid)


def test_cli_launch_local_end_to_end(run_cli, tmp_path, finetune_home):
    out = tmp_path / "runs"
    env = {"FINETUNE_HOME": str(finetune_home)}
    result = run_cli("launch", "tiny", "--local", *[f"--set={o}" for o in FAST], f"--set=output={out}", timeout=480, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "label accuracy" in result.stdout and "succeeded" in result.stdout
    run_id = next(p.name for p in out.iterdir())
    # redirected (a pipe, as in CI or `> file`): plain progress lines, no bar redrawn with carriage returns
    assert "\r" not in result.stderr and f"{run_id}: succeeded" in result.stderr, result.stderr
    assert len(result.stderr.splitlines()) < 40, result.stderr
    for args in (["status", run_id], ["metrics", run_id, "--plot", str(tmp_path / "loss.png")], ["runs"], ["logs", run_id]):
        res = run_cli(*args, env=env)
        assert res.returncode == 0, (args, res.stderr)
    assert (tmp_path / "loss.png").stat().st_size > 1000
    fetched = run_cli("fetch", run_id, str(tmp_path / "adapter"), env=env)
    assert fetched.returncode == 0, fetched.stderr
    _assert_same_as_store(tmp_path / "adapter", sdk.get_run(str(out / run_id)).folder)
    again = run_cli("fetch", run_id, str(tmp_path / "adapter"), env=env)
    assert again.returncode == 2 and "not empty" in again.stderr and "Traceback" not in again.stderr


@pytest.mark.parametrize(
    "args,expected",
    [
        (["launch", "tiny", "--local", "--set=resources.nodes=2"], "resources.nodes"),
        (["launch", "tiny", "--local", "--set=train.lr=-1"], "train.lr"),
        (["status", "no-such-run"], "no run 'no-such-run'"),
        (["fetch", "/tmp/definitely/not/a/run", "/tmp/x"], "no run here"),
    ],
)
def test_cli_errors_are_clean(run_cli, tmp_path, finetune_home, args, expected):
    if args[0] == "launch":
        args = [*args, f"--set=output={tmp_path}"]
    result = run_cli(*args, env={"FINETUNE_HOME": str(finetune_home)})
    assert result.returncode == 2, result.stdout + result.stderr
    assert expected in result.stderr and "Traceback" not in result.stderr


def test_bad_data_path_is_refused_before_launch_and_fails_a_run_that_skips_the_check(run_cli, tmp_path, finetune_home):
    result = run_cli("launch", "tiny", "--local", "--detach", "--set=data.source=/nope/train.jsonl",
                     f"--set=output={tmp_path}", env={"FINETUNE_HOME": str(finetune_home)})
    assert result.returncode == 2 and result.stderr.strip() == "error: data.source: /nope/train.jsonl does not exist"
    assert not list(tmp_path.glob("tiny-*")), "nothing launched"
    # the node runs the same check: a run submitted without the client's check fails with the same line
    run = sdk.submit(tiny(str(tmp_path), "data.source=/nope/train.jsonl"), check_data=False)
    assert run.wait(progress=False, timeout=120).state == "failed"
    assert "data.source: /nope/train.jsonl does not exist" in (run.status().error or "")
