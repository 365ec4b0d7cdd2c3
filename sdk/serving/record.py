"""The server record (~/.finetune/servers/<id>.json, readable by its owner alone) and the seam every place a
server can run implements."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict

from sdk.core.serveplan import ServePlan


class ProcessIdentity(BaseModel):
    """A PID with what tells it from a later process that reuses it (sdk.machine.processes.identify)."""

    model_config = ConfigDict(extra="allow")
    started: int | None = None
    boot: str | None = None


class ServerRecord(BaseModel):
    """One started endpoint. Local servers fill pid/process/log; SkyPilot ones cluster or service."""

    model_config = ConfigDict(extra="allow")  # a newer client's fields survive an older one's rewrite
    id: str
    url: str
    models: list[str]
    base: str
    backend: Literal["local", "skypilot"] = "local"
    started: float | None = None
    api_key: str | None = None  # older records had none
    prompting: dict[str, dict[str, Any]] = {}
    runs: dict[str, str] = {}  # served name -> run URI
    pid: int | None = None
    process: ProcessIdentity | None = None  # older records had none
    log: str | None = None
    cluster: str | None = None
    service: str | None = None
    tls_ca: str | None = None  # the certificate given with --tls-cert, trusted as its own authority


class ServingBackend(Protocol):
    """Where an engine runs. `start` returns the record's placement fields (url and pid/cluster/service)."""

    name: str
    poll_every: int  # readiness polls (1 s apart) between liveness checks: asking a cloud costs a second

    def start(self, plan: ServePlan, *, folder: Path, api_key: str, replicas: int | None,
              tls: tuple[str, str] | None) -> dict[str, Any]: ...

    def alive(self, record: ServerRecord) -> bool: ...

    def exited(self, record: ServerRecord) -> str | None:
        """Why the engine no longer runs (it exited, its job ended), or None while it runs or cannot be told.
        Not `alive`: a cluster whose engine failed is still there, and still to be taken down."""
        ...

    def stop(self, record: ServerRecord, *, timeout: float) -> None: ...

    def logs(self, record: ServerRecord) -> str: ...


def serving_backend(name: str) -> ServingBackend:
    if name == "skypilot":
        from sdk.serving.skypilot import SkyPilotServing

        return SkyPilotServing()
    from sdk.serving.local import LocalServing

    return LocalServing()


def write_private(path: Path, text: str) -> None:
    """A file only its owner can read, created so from the start (no moment of wider permissions)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(path, 0o600)
