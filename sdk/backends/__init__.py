"""Backends start a run's node somewhere and can stop it. One small protocol; the store does the rest.

Each backend has a typed `Info` (what the registry keeps to find the run again: a PID, a cluster) and
answers `status` from its own view without writing anything; `Run.reconcile()` writes that view to
the store when asked.
"""

from __future__ import annotations

from typing import Protocol

from pydantic import BaseModel

from sdk.core.spec import FineTuneSpec
from sdk.store.runfolder import RunFolder, RunState


class BackendView(BaseModel):
    """The backend's own word on a run, when it knows better than status.json (a dead process, a
    cluster still provisioning)."""

    state: RunState
    error: str | None = None
    note: str | None = None  # e.g. the backend did not answer in time and `state` is the store's view


_IN_FLIGHT: dict[str, object] = {}  # what -> the thread of a query that has not answered yet


def bounded(call, seconds: float, what: str):
    """call() within `seconds`, else TimeoutError naming `what`. A status must never hang on a slow API server:
    the call goes on in a daemon thread and is abandoned; while one to the same `what` is still stuck, the next
    fails at once instead of leaving another thread behind (a poll loop would leak one per poll)."""
    import threading

    stuck = _IN_FLIGHT.get(what)
    if stuck is not None and stuck.is_alive():  # type: ignore[attr-defined]
        raise TimeoutError(f"{what} has not answered an earlier query yet")
    box: dict[str, object] = {}

    def target() -> None:
        try:
            box["value"] = call()
        except BaseException as exc:  # handed to the caller
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True, name=f"bounded-{what}")
    _IN_FLIGHT[what] = thread
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise TimeoutError(f"{what} did not answer within {seconds:g} s")
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box.get("value")


class Backend(Protocol):
    name: str
    Info: type[BaseModel]

    def check(self, spec: FineTuneSpec) -> None:
        """Refuse a spec this backend cannot run (SpecError naming the field), before anything is created."""

    def submit(self, spec: FineTuneSpec, folder: RunFolder) -> BaseModel:
        """Start the node for a run whose folder already holds spec.json; return its Info for the registry."""

    def status(self, folder: RunFolder, info: BaseModel) -> BackendView | None:
        """The backend's view when it differs from status.json, else None. Reads only."""

    def cancel(self, folder: RunFolder, info: BaseModel) -> None: ...

    def logs(self, folder: RunFolder, info: BaseModel) -> str | None:
        """The node's log so far, or None when only the store has it."""

    def serial_launch(self, spec: FineTuneSpec) -> bool:
        """Must launches onto this spec's infra go one at a time (a sweep then serializes them)?"""

    def left_up(self, info: BaseModel) -> bool:
        """Does the run's machine stay up after the job, so the client must tear it down (`down`)?"""

    def down(self, info: BaseModel) -> None:
        """Tear down what the run left up; LaunchError when there is nothing this backend can take down."""

    def dry_run(self, spec: FineTuneSpec) -> DryRun:
        """What a launch would do, provisioning nothing: lines to show and, for a cluster, the task it submits."""


class DryRun(BaseModel):
    """A launch described without starting anything (`finetune launch --dry-run`)."""

    lines: list[str] = []
    task_yaml: str | None = None  # the SkyPilot task exactly as it would be submitted


def get_backend(name: str) -> Backend:
    from sdk.core.errors import LaunchError

    if name == "local":
        from sdk.backends.local import LocalBackend

        return LocalBackend()
    if name == "skypilot":
        try:
            from sdk.backends.skypilot import SkyPilotBackend
        except ImportError as exc:
            raise LaunchError(f"the SkyPilot backend is not available here: {exc}") from None
        return SkyPilotBackend()
    raise LaunchError(f"unknown backend {name!r}; use local or skypilot")


def choose_backend(spec: FineTuneSpec, requested: str = "auto") -> str:
    """SkyPilot when the spec names accelerators or an infra, else local."""
    if requested != "auto":
        return requested
    return "skypilot" if spec.resources.wants_cloud else "local"
