"""What the tests share besides fixtures: imported as `from helpers import ...` (conftest holds the fixtures).
Every process a helper starts is stopped by its PID; every wait is bounded."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


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


def needs_service(name: str, missing: str | None) -> pytest.MarkDecorator:
    """Skip a test whose service (Slurm, Swift) is not installed here. Where FINETUNE_REQUIRE_SERVICES=1 (CI: .ci/run
    installs them), the test fails instead, so a whole module skipping cannot pass for green."""
    if missing and os.environ.get("FINETUNE_REQUIRE_SERVICES") == "1":
        return pytest.mark.service_missing(f"{name} is required here (FINETUNE_REQUIRE_SERVICES=1) but missing: {missing}")
    return pytest.mark.skipif(bool(missing), reason=f"{name} missing: {missing}")
