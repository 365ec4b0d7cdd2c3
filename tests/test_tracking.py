"""Experiment tracking against real components: an MLflow tracking server on 127.0.0.1 started here, W&B in
offline mode, TensorBoard event files read back from a fetched run folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import free_port, run_node

import sdk
from sdk.core.recipes import load_recipe

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """`mlflow server` with a SQLite store, stopped by its process group at the end (no process left)."""
    import urllib.request

    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    log = open(root / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--default-artifact-root", str(root / "artifacts")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"{uri}/health", timeout=2).status == 200:
                break
        except OSError:
            time.sleep(0.5)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}")
    yield uri
    def group() -> list[str]:
        return subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True, text=True).stdout.split()

    os.killpg(proc.pid, signal.SIGTERM)  # the server and its uvicorn / job-runner children share the group
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if sig == signal.SIGKILL and group():
            os.killpg(proc.pid, signal.SIGKILL)
        deadline = time.time() + 15
        while group() and time.time() < deadline:
            time.sleep(0.3)
    proc.wait(timeout=10)
    log.close()
    assert not group(), f"mlflow server processes left: {group()}"


def loss_series(rows) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


def mlflow_losses(uri: str, experiment: str) -> tuple[list, list[tuple[int, float]]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id]) if exp else []
    history = client.get_metric_history(runs[0].info.run_id, "loss") if runs else []
    return runs, sorted((m.step, m.value) for m in history)


@pytest.fixture(scope="module")
def tracked_run(mlflow_server, tmp_path_factory):
    """One tiny run logging to all three trackers at once."""
    root = tmp_path_factory.mktemp("tracked")
    with pytest.MonkeyPatch.context() as env:  # restored when the module is done
        env.setenv("FINETUNE_HOME", str(root / "home"))
        env.setenv("MLFLOW_TRACKING_URI", mlflow_server)
        spec = load_recipe("tiny", ["name=tracked", "train.max_steps=8", "train.logging_steps=1", "eval.num_samples=4",
                                    f"output={root / 'runs'}", "tracking=[mlflow, tensorboard, {name: wandb, mode: offline}]"])
        run = sdk.submit(spec)
        status = run.wait(timeout=300, progress=False)
        assert status.state == "succeeded", f"{status.error}\n{str(run.logs())[-3000:]}"
        yield run, root


def test_mlflow_holds_the_loss_series_of_metrics_jsonl(tracked_run, mlflow_server):
    run, _ = tracked_run
    runs, series = mlflow_losses(mlflow_server, "tracked")
    assert len(runs) == 1 and runs[0].info.run_name == run.id and runs[0].info.status == "FINISHED"
    expected = loss_series(run.metrics())
    assert len(expected) == 8 and [s for s, _ in series] == [s for s, _ in expected]
    assert [v for _, v in series] == pytest.approx([v for _, v in expected], rel=1e-12)
    assert runs[0].data.params["method.r"] == "8" and runs[0].data.tags["finetune.run_id"] == run.id


def test_tensorboard_events_in_a_fetched_run_folder_read_back_the_loss(tracked_run, run_cli, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, root = tracked_run
    fetched = tmp_path / "fetched"
    result = run_cli("fetch", run.uri, str(fetched), "--all", env={"FINETUNE_HOME": str(root / "home")})
    assert result.returncode == 0, result.stderr
    assert (fetched / "adapter" / "adapter_config.json").is_file() and (fetched / "metrics.jsonl").is_file()
    events = EventAccumulator(str(fetched / "tensorboard"))
    events.Reload()
    scalars = [(e.step, e.value) for e in events.Scalars("loss")]
    expected = loss_series(run.metrics())
    assert [s for s, _ in scalars] == [s for s, _ in expected]
    assert [v for _, v in scalars] == pytest.approx([v for _, v in expected], rel=1e-6)  # float32 in the event file


def test_wandb_offline_run_directory_lands_in_the_run_folder(tracked_run):
    run, _ = tracked_run
    folder = Path(run.uri)
    wandb_id = json.loads((folder / "tracking.json").read_text())["wandb"]["id"]
    run_dirs = list((folder / "wandb").glob(f"offline-run-*-{wandb_id}"))
    assert len(run_dirs) == 1 and (run_dirs[0] / f"run-{wandb_id}.wandb").stat().st_size > 0


def test_a_killed_run_resumes_into_the_same_mlflow_run(mlflow_server, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    spec = load_recipe("tiny", ["name=preempted", "train.max_steps=10", "train.save_steps=4", "train.logging_steps=1",
                                "data.max_samples=64", "eval.num_samples=4", f"output={tmp_path}",
                                "tracking=[mlflow, tensorboard]"])
    killed, folder = run_node(spec, tmp_path, env={"FINETUNE_FAULT": "after-checkpoint:4"})
    assert killed.returncode == -9, killed.stderr[-3000:]
    first = folder.read_json("tracking.json")["mlflow"]["run_id"]
    runs, before = mlflow_losses(mlflow_server, "preempted")
    assert len(runs) == 1 and runs[0].info.status == "RUNNING" and [s for s, _ in before][:4] == [1, 2, 3, 4]

    resumed, folder = run_node(spec, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"mlflow: continuing run {first}" in resumed.stdout
    runs, series = mlflow_losses(mlflow_server, "preempted")
    assert len(runs) == 1 and runs[0].info.run_id == first and runs[0].info.status == "FINISHED"
    steps = [s for s, _ in series]
    assert steps == list(range(1, 11)), f"gaps or duplicates: {steps}"
    expected = loss_series(folder.metrics())
    assert [s for s, _ in expected] == steps
    assert [v for _, v in series] == pytest.approx([v for _, v in expected], rel=1e-6)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(folder.store.url(folder.key("tensorboard")))
    events.Reload()
    assert [e.step for e in events.Scalars("loss")] == list(range(1, 11))  # the restarted writer purged nothing twice


def test_tracker_variables_are_checked_before_launch(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    spec = load_recipe("tiny", [f"output={tmp_path / 'runs'}", "tracking=mlflow"])
    with pytest.raises(sdk.SpecError, match=r"tracking\[0\].uri_env: MLFLOW_TRACKING_URI is not set in this environment"):
        sdk.submit(spec)
    assert not (tmp_path / "runs").exists()
    with pytest.raises(sdk.SpecError, match="not an environment variable name"):
        load_recipe("tiny", ["tracking=[{name: wandb, key_env: 'sk-live-123'}]"])


def test_a_remote_node_gets_the_tracker_variables_as_secrets(monkeypatch):
    from sdk.backends.skypilot import forwarded_secrets

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    spec = load_recipe("tiny", ["tracking=[mlflow, wandb]"])
    assert {"MLFLOW_TRACKING_URI", "WANDB_API_KEY"} <= set(forwarded_secrets(spec))
