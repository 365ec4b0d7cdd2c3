"""Shared fixtures. Tests never reach the network: HF_HUB_OFFLINE is set for every process they start."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
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


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    import socket
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


@pytest.fixture(scope="session")
def moto_server():
    """A real S3 server (moto) on 127.0.0.1 in its own process, shared by the session."""
    with start_moto() as endpoint:
        yield endpoint


@contextlib.contextmanager
def start_moto(log: Path | None = None):
    """Start moto's S3 server on a free loopback port (its request log to `log`), yield its endpoint,
    stop it by PID."""
    port = free_port()
    with open(log or os.devnull, "wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=sink, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


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


def run_node(spec, store: Path | str, run_id: str = "r1", *, env: dict | None = None, timeout: float = 240):
    """Write the spec into a run folder (once) and run the node through the launcher, in the foreground,
    as a cluster node would. Returns (CompletedProcess, RunFolder)."""
    from sdk.store import open_store
    from sdk.store.runfolder import SPEC, RunFolder

    folder = RunFolder(open_store(str(store)), run_id)
    if not folder.exists():
        folder.write_json(SPEC, spec.model_dump(mode="json"))
    result = subprocess.run(
        [sys.executable, "-m", "launch.launcher", "--run-dir", folder.uri],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT,
        env={**os.environ, "FINETUNE_SYNC_INTERVAL": "0.5", **(env or {})},
    )
    return result, folder


def losses(folder) -> dict[int, float]:
    return {row["step"]: row["loss"] for row in folder.metrics() if "loss" in row}
