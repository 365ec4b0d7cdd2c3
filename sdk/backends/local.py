"""Local backend: the node entrypoint as a detached process on this machine."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from pydantic import BaseModel

from sdk.backends import BackendView, DryRun
from sdk.core.billing import Billing, BillingView
from sdk.core.errors import LaunchError, SpecError
from sdk.core.spec import FineTuneSpec
from sdk.machine.processes import group_members, identify, is_same, pid_alive, stop_group
from sdk.machine.registry import home
from sdk.store import LocalStore
from sdk.store.runfolder import LOG, TERMINAL, RunFolder


class LocalRunInfo(BaseModel):
    """A local run: the launcher's PID (also its process group), its log file and the host it runs on."""

    pid: int
    log: str
    host: str
    started: int | None = None  # the launcher's start time and boot (sdk.machine.processes.identify): the PID is checked
    boot: str | None = None     # against both before any signal, since the kernel reuses numbers


class LocalBackend:
    name = "local"
    Info = LocalRunInfo

    def log_path(self, folder: RunFolder) -> Path:
        if isinstance(folder.store, LocalStore):
            return Path(folder.store.url(folder.key(LOG)))
        return home() / "logs" / f"{folder.run_id}.log"

    def check(self, spec: FineTuneSpec) -> None:
        if spec.resources.nodes > 1:
            raise SpecError(
                f"resources.nodes: {spec.resources.nodes} nodes need a cluster; the local backend runs on this machine "
                "only (drop --local, or set resources.nodes=1)"
            )
        missing = [name for name in spec.secrets if name not in os.environ]
        if missing:
            raise SpecError(f"secrets: {', '.join(missing)} not set in this environment")

    def submit(self, spec: FineTuneSpec, folder: RunFolder) -> LocalRunInfo:
        self.check(spec)
        log = self.log_path(folder)
        log.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **spec.env, "FINETUNE_LOG_FILE": str(log), "PYTHONUNBUFFERED": "1"}
        # The same launcher as on a cluster: torchrun when the spec asks for several processes (or DeepSpeed).
        command = [sys.executable, "-m", "launch.launcher", "--run-dir", folder.uri]
        with open(log, "ab") as handle:
            try:
                process = subprocess.Popen(
                    command, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True
                )
            except OSError as exc:
                raise LaunchError(f"cannot start {' '.join(command)}: {exc}") from None
        who = identify(process.pid)
        return LocalRunInfo(pid=process.pid, log=str(log), host=os.uname().nodename, started=who["started"], boot=who["boot"])

    def billing(self, folder: RunFolder, info: LocalRunInfo, billing: Billing) -> BillingView:
        """One part: the node process, from the launch to its final status (or its last heartbeat, if it died)."""
        status = folder.status()
        ended = status.get("state") in TERMINAL or (self._ours(info) and not self._alive(info))
        end = (status.get("finished") or status.get("heartbeat") or time.time()) if ended else None
        parts = [part.model_copy(update={"end": end}) for part in billing.parts[:1]]
        return BillingView(hourly_usd=billing.hourly_usd, price_source=billing.price_source, parts=parts, final=ended)

    def _ours(self, info: LocalRunInfo) -> bool:
        return info.host == os.uname().nodename

    def status(self, folder: RunFolder, info: LocalRunInfo) -> BackendView | None:
        """'failed' when the node process is gone without having written a final state."""
        if not self._ours(info) or self._alive(info):
            return None
        # A final state may land just as the process exits: read once more before declaring failure.
        if folder.status().get("state") in TERMINAL:
            return None
        time.sleep(0.5)
        if folder.status().get("state") in TERMINAL:
            return None
        return BackendView(state="failed", error=f"node process {info.pid} exited without a final status; see its log")

    def _alive(self, info: LocalRunInfo) -> bool:
        """Its launcher, or ranks left of its group once the launcher is gone (the kernel keeps a group's number
        while it has members); never a process that took over the number."""
        return is_same(info.pid, info.started, info.boot) or (not pid_alive(info.pid) and bool(group_members(info.pid)))

    def cancel(self, folder: RunFolder, info: LocalRunInfo, *, grace: float = 10.0) -> None:
        if not self._ours(info):
            return  # started on another host: its node stops on the cancel marker
        if folder.status().get("state") in TERMINAL:
            return  # it ended: whatever holds that PID now is someone else's
        if self._alive(info):  # its own launcher or ranks, never a process that inherited the number
            stop_group(info.pid, grace=grace, started=info.started, boot=info.boot)  # the node writes 'cancelled'
        if folder.status().get("state") not in TERMINAL:
            folder.write_status("cancelled")

    def logs(self, folder: RunFolder, info: LocalRunInfo) -> str | None:
        path = Path(info.log)
        if self._ours(info) and path.is_file():
            return path.read_text(errors="replace")
        return None

    def serial_launch(self, spec: FineTuneSpec) -> bool:
        return False

    def left_up(self, info: LocalRunInfo) -> bool:
        return False  # the node is a process group on this machine: it ends with its run

    def down(self, info: LocalRunInfo) -> None:
        raise LaunchError("a local run has no cluster to tear down (finetune cancel stops a running one)")

    def dry_run(self, spec: FineTuneSpec) -> DryRun:
        return DryRun(lines=[f"node: python -m launch.launcher in a process group on this machine; output {spec.output}"])
