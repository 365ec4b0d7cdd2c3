"""Shared fixtures. Tests never reach the network: HF_HUB_OFFLINE is set for every process they start."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from helpers import ROOT, start_moto

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def run_cli():
    """Run the real `finetune` entry point in a subprocess, as a user would."""

    def run(*args: str, timeout: float = 120, env: dict | None = None, input: str | None = None):
        full_env = {**os.environ, **(env or {})}
        return subprocess.run(
            [sys.executable, "-m", "sdk.cli", *args],
            capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=full_env, input=input,
        )

    return run


@pytest.fixture
def cli_here(capsys, monkeypatch):
    """The same `finetune` entry point in this process (no interpreter start-up): for the many refusals whose
    exit code and message are the test; `run_cli` keeps the real subprocess for what a user runs."""
    from types import SimpleNamespace

    from sdk.cli import main

    def run(*args: str, env: dict | None = None):
        for key, value in (env or {}).items():
            monkeypatch.setenv(key, value)
        monkeypatch.setattr(sys, "argv", ["finetune", *args])
        capsys.readouterr()
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out, err = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=out, stderr=err)

    return run


@pytest.fixture(scope="session")
def moto_server():
    """A real S3 server (moto) on 127.0.0.1 in its own process, shared by the session."""
    with start_moto() as endpoint:
        yield endpoint


@pytest.fixture
def s3_env(moto_server, monkeypatch):
    """Env pointing boto3 at the moto server, and a fresh bucket. Returns (env dict, bucket)."""
    import uuid

    import boto3

    env = {
        "AWS_ENDPOINT_URL": moto_server,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    bucket = f"ft-{uuid.uuid4().hex[:12]}"
    boto3.session.Session().client("s3", endpoint_url=moto_server).create_bucket(Bucket=bucket)
    return env, bucket


@pytest.fixture
def finetune_home(tmp_path, monkeypatch):
    """An empty registry, as on a machine that never submitted anything."""
    home = tmp_path / "home"
    monkeypatch.setenv("FINETUNE_HOME", str(home))
    return home




def pytest_runtest_setup(item):
    marker = item.get_closest_marker("service_missing")
    if marker is not None:  # helpers.needs_service: a service CI must have is missing
        pytest.fail(marker.args[0], pytrace=False)


# Modules where every test trains a model, starts a server or a cluster: the `slow` tier. `pytest -m "not slow"`
# is the fast tier for the edit loop (no training); CI runs everything. Mixed modules mark their slow tests.
SLOW_MODULES = {"test_api_jobs", "test_checkpoints", "test_distributed", "test_distributed_qlora", "test_examples", "test_local_runs",
                "test_merge", "test_node", "test_s3_data", "test_serve", "test_slurm", "test_store_faults", "test_sweep",
                "test_tracking"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.module is not None and item.module.__name__.rsplit(".", 1)[-1] in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


def pytest_terminal_summary(terminalreporter):
    """Seconds per module (setup + call + teardown), slowest first: where the suite's time goes, in every CI log."""
    totals: dict[str, float] = {}
    for reports in terminalreporter.stats.values():
        for report in reports:
            if getattr(report, "when", None) in ("setup", "call", "teardown"):
                module = report.nodeid.split("::")[0]
                totals[module] = totals.get(module, 0.0) + report.duration
    if totals:
        terminalreporter.write_sep("-", "seconds per module")
        for module, seconds in sorted(totals.items(), key=lambda item: -item[1]):
            terminalreporter.write_line(f"{seconds:8.1f}  {module}")
