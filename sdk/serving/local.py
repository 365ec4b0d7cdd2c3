"""A server on this machine: launch/tools/serve.py in a process group of its own, the engine from the
environment sdk.serving.engine_env keeps apart from the project's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from sdk.core.serveplan import SERVE_KEY_ENV, ServePlan
from sdk.machine.processes import identify, is_same, stop_group
from sdk.serving.record import ServerRecord


class LocalServing:
    name = "local"
    poll_every = 1

    def start(self, plan: ServePlan, *, folder: Path, api_key: str, replicas: int | None = None,
              tls: tuple[str, str] | None = None) -> dict[str, Any]:
        from sdk.serving.engine_env import engine_python

        python = engine_python()
        plan_file = folder / f"{plan.server_id}.plan.json"
        plan_file.write_text(plan.model_dump_json(indent=1))
        log = folder / f"{plan.server_id}.log"
        with open(log, "w") as handle:
            # the key reaches the node through its environment, never a command line, a log or the plan file
            proc = subprocess.Popen([sys.executable, "-m", "launch.tools.serve", "--plan", str(plan_file),
                                     "--engine-python", str(python)],
                                    stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                    env={**os.environ, "PYTHONUNBUFFERED": "1", SERVE_KEY_ENV: api_key})
        return {"pid": proc.pid, "process": identify(proc.pid), "url": f"http://{plan.host}:{plan.port}", "log": str(log)}

    def alive(self, record: ServerRecord) -> bool:
        who = record.process
        return is_same(record.pid, who.started if who else None, who.boot if who else None)

    def exited(self, record: ServerRecord) -> str | None:
        return None if self.alive(record) else f"process {record.pid} exited"

    def stop(self, record: ServerRecord, *, timeout: float) -> None:
        if record.pid:
            who = record.process
            stop_group(record.pid, grace=timeout, started=who.started if who else None, boot=who.boot if who else None)

    def logs(self, record: ServerRecord) -> str:
        path = Path(record.log) if record.log else None
        return path.read_text(errors="replace") if path is not None and path.is_file() else ""
