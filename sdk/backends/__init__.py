"""Backends start a run's node somewhere and can stop it. One small protocol; the store does the rest."""

from __future__ import annotations

from typing import Any, Protocol

from sdk.runfolder import RunFolder
from sdk.spec import FineTuneSpec


class Backend(Protocol):
    name: str

    def check(self, spec: FineTuneSpec) -> None:
        """Refuse a spec this backend cannot run (SpecError naming the field), before anything is created."""

    def submit(self, spec: FineTuneSpec, folder: RunFolder) -> dict[str, Any]:
        """Start the node for a run whose folder already holds spec.json; return info for the registry."""

    def status(self, folder: RunFolder, info: dict[str, Any]) -> str | None:
        """The backend's own view of the state, when it knows better than status.json (else None)."""

    def cancel(self, folder: RunFolder, info: dict[str, Any]) -> None: ...

    def logs(self, folder: RunFolder, info: dict[str, Any]) -> str | None:
        """The node's log so far, or None when only the store has it."""


def get_backend(name: str) -> Backend:
    if name == "local":
        from sdk.backends.local import LocalBackend

        return LocalBackend()
    if name == "skypilot":
        from sdk.errors import LaunchError

        try:
            from sdk.backends.skypilot import SkyPilotBackend
        except ImportError as exc:
            raise LaunchError(f"the SkyPilot backend is not available here: {exc}") from None
        return SkyPilotBackend()
    from sdk.errors import LaunchError

    raise LaunchError(f"unknown backend {name!r}; use local or skypilot")


def choose_backend(spec: FineTuneSpec, requested: str = "auto") -> str:
    """SkyPilot when the spec names accelerators or an infra, else local."""
    if requested != "auto":
        return requested
    return "skypilot" if spec.resources.wants_cloud else "local"
