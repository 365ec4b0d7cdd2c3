"""Serving what was trained: several runs' adapters behind one OpenAI-compatible endpoint (vLLM multi-LoRA).

`plan_serving` is the preflight, from the method registry, before anything starts: one base model for all
runs, a committed adapter for each, --max-lora-rank / --max-loras from the runs, and a one-line refusal for
what vLLM cannot serve as LoRA (DoRA, modules_to_save, IA3, soft prompts, full fine-tunes) unless `--merge`.
The node side (launch/tools/serve.py) fetches the adapters (manifest-verified) and starts vLLM; locally the engine
lives in an environment of its own (sdk.serving.engine_env), never in the project's.

The base model is served through an all-zero LoRA adapter on the same engine, never as the engine's bare
base: vLLM's CPU LoRA kernels apply an adapter to base requests batched with adapter requests (an upstream
bug, ../shared/notes/serving.md), while different adapters in one batch are computed correctly. B = 0 makes
the zero adapter's output the base's exactly.

Modules: plan (the preflight), record (the server record and the ServingBackend seam), server (the handle),
local and skypilot (the two places an engine runs), engine_env (the local engine's environment).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from sdk.core.serveplan import ServePlan
from sdk.serving.plan import (
    CLOUD_IDLE_STOP_MINUTES,
    ServeError,
    check_tls,
    idle_stop_minutes,
    parse_ref,
    plan_serving,
)
from sdk.serving.record import ServerRecord, serving_backend, write_private
from sdk.serving.server import Server, get_server, list_servers, servers_dir

__all__ = ["CLOUD_IDLE_STOP_MINUTES", "ServeError", "Server", "ServerRecord", "check_tls", "get_server",
           "idle_stop_minutes", "list_servers", "parse_ref", "plan_serving", "serve", "servers_dir",
           "start_plan"]


def serve(runs: Sequence[str], *, merge: bool = False, port: int = 8000, base_name: str | None = None,
          dtype: str = "float32", max_model_len: int = 2048, backend: Literal["auto", "local", "skypilot"] = "auto",
          replicas: int | None = None, wait: bool = True, timeout: float = 900,
          idle_stop: float | None = None, tls: tuple[str, str] | None = None) -> Server:
    """Serve runs' adapters (and their base) on one OpenAI-compatible endpoint; `wait` until it answers.
    Local: a process group on this machine. SkyPilot: a cluster of the first run's resources (or a service of
    `replicas` behind one endpoint) whose node fetches the adapters through read-only grants.
    `idle_stop`: minutes without a request after which the engine stops (a cloud cluster then goes down);
    default CLOUD_IDLE_STOP_MINUTES on a SkyPilot cluster, never for a local server; 0 turns it off.
    `backend="auto"` (as `finetune serve`): SkyPilot when the first run's spec names accelerators or an infra."""
    backend = serving_backend_for(runs, backend)
    local = backend == "local"
    if replicas is not None and local:
        raise ServeError("--replicas: a SkyPilot service; a local server is one process")
    idle_stop = idle_stop_minutes(idle_stop, local=local, replicas=replicas)
    plan = plan_serving(runs, merge=merge, port=port, base_name=base_name, dtype=dtype, max_model_len=max_model_len,
                        backend=backend)
    plan = plan.model_copy(update={"idle_stop_minutes": idle_stop or None})
    if tls is not None:
        if local:
            raise ServeError("--tls-cert: a local server listens on 127.0.0.1 only; TLS is for a cloud endpoint")
        check_tls(tls)
    server = start_plan(plan, backend=backend, replicas=replicas, tls=tls)
    if wait:
        try:
            server.wait_ready(timeout)
        except BaseException:
            server.stop()
            raise
    return server


def start_plan(plan: ServePlan, *, backend: Literal["local", "skypilot"] = "local", replicas: int | None = None,
               tls: tuple[str, str] | None = None, **labels: str) -> Server:
    """Start the engine a plan describes and record it (~/.finetune/servers/<id>.json); `labels` are kept in the
    record (which `finetune api` started it). Does not wait for it to answer."""
    folder = servers_dir()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Every endpoint needs a key, a local one too (a workstation is shared): it reaches vLLM through the
    # environment (VLLM_API_KEY), never a command line, a log, a plan file or the store; the record that keeps
    # it is readable by its owner alone.
    api_key = secrets.token_urlsafe(32)
    runs_by_name = {**({plan.base_name: plan.adapters[0].run_uri} if plan.adapters else {}),
                    **{a.name: a.run_uri for a in ([plan.merged] if plan.merged else []) + plan.adapters}}
    placed = serving_backend(backend).start(plan, folder=folder, api_key=api_key, replicas=replicas, tls=tls)
    record = ServerRecord(id=plan.server_id, models=plan.names, base=plan.base_name, started=time.time(), api_key=api_key,
                          prompting=plan.prompting, backend=backend, runs=runs_by_name,
                          tls_ca=str(Path(tls[0]).expanduser().resolve()) if tls else None, **placed, **labels)
    write_private(folder / f"{plan.server_id}.json", json.dumps(record.model_dump(mode="json", exclude_none=True), indent=1))
    return Server(record)


def serving_backend_for(runs: Sequence[str], backend: str) -> Literal["local", "skypilot"]:
    """`auto` as `finetune serve` decides it: SkyPilot when the first run's spec names accelerators or an infra."""
    if backend != "auto":
        return backend  # type: ignore[return-value]
    if not runs:
        return "local"
    from sdk.backends import choose_backend
    from sdk.runs import get_run

    return choose_backend(get_run(parse_ref(runs[0])[1]).spec(), "auto")
