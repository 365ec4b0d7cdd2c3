"""The serving preflight: every refusal is one line naming the run or option, before anything starts."""

from __future__ import annotations

import re
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from sdk.core.errors import FinetuneError
from sdk.core.serveplan import VLLM_RANKS, ServedAdapter, ServePlan


class ServeError(FinetuneError, ValueError):
    """A run or setting the server cannot take; one line naming the run or option (the CLI exits 2)."""


CLOUD_IDLE_STOP_MINUTES = 60.0  # a GPU cluster nobody sends requests to stops billing after an hour
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def parse_ref(ref: str) -> tuple[str | None, str]:
    """'alias=RUN' or 'RUN'."""
    left, sep, right = ref.partition("=")
    if sep and _NAME.match(left) and "://" not in left:
        return left, right
    return None, ref


def base_name_for(model_id: str) -> str:
    """The served name of the base: a Hub id as it is; a path or package file by its stem."""
    if re.match(r"^[\w.-]+/[\w.-]+$", model_id) and not Path(model_id).exists():
        return model_id
    return Path(model_id.split("://")[-1]).stem or "base"


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the engine binds (uvicorn sets SO_REUSEADDR): a port left in TIME_WAIT by a stopped server is
        # free, while one with a listener is not.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def plan_serving(runs: Sequence[str], *, merge: bool = False, port: int = 8000, base_name: str | None = None,
                 dtype: str = "float32", max_model_len: int = 2048,
                 backend: Literal["local", "skypilot"] = "local") -> ServePlan:
    """The preflight: every refusal is one line naming the run, and nothing has started. A local server
    listens on 127.0.0.1 (its port checked here); a node on every interface (its port is the node's own)."""
    from sdk.core.methods import method_of
    from sdk.runs import get_run
    from sdk.store.runfolder import new_run_id

    if not runs:
        raise ServeError("serve: name at least one run")
    if merge and len(runs) != 1:
        raise ServeError("--merge: serves one run's merged model; give one run (serve the others as adapters)")
    resolved = []
    for ref in runs:
        alias, run_ref = parse_ref(ref)
        run = get_run(run_ref)
        spec = run.spec()
        state = run.status().state
        if run.folder.adapter_manifest() is None:
            raise ServeError(f"{run.id}: no committed adapter (the run is {state}); nothing to serve")
        if state != "succeeded":
            raise ServeError(f"{run.id}: the run is {state}, not succeeded; serve a run that finished")
        serving = method_of(spec).serving(spec.method)
        if not serving.as_lora and not merge:
            raise ServeError(f"{run.id}: {serving.reason} (finetune serve {run.id} --merge)")
        if merge and method_of(spec).merge == "none":
            raise ServeError(f"{run.id}: {method_of(spec).merge_refusal or 'cannot be merged'}")
        summary = run.summary()
        prompting = {"template": summary.template, "instruction": summary.instruction} if summary else {}
        if summary and summary.tool_calling:  # the engine parses its tool calls (launch/tools/serve.py)
            prompting["tool_parser"] = summary.tool_calling.parser
            prompting["tool_template"] = None if summary.tool_calling.native else run.id
        resolved.append((alias or run.id, run, spec, serving, prompting))
    first = resolved[0]
    for _, run, spec, _, _ in resolved[1:]:
        if spec.model.model_dump() != first[2].model.model_dump():
            raise ServeError(f"runs {first[1].id} and {run.id} have different base models ({first[2].model.id} vs "
                             f"{spec.model.id}); one server holds one base model: serve them separately")
    names = [r[0] for r in resolved]
    base = base_name or base_name_for(first[2].model.id)
    twice = sorted({n for n in names + [base] if (names + [base]).count(n) > 1})
    if twice:
        raise ServeError(f"served names must differ: {', '.join(twice)} given twice (alias=RUN renames a run)")
    host = "127.0.0.1" if backend == "local" else "0.0.0.0"
    if backend == "local" and not port_free(host, port):
        raise ServeError(f"--port {port}: already in use on {host}; pick another port")
    prompting = {name: how for name, _, _, _, how in resolved}
    server_id = new_run_id(f"serve-{names[0]}")
    if merge:
        name, run, spec, _, _ = first
        return ServePlan(server_id=server_id, base_name=base, base_spec=spec.model_dump(mode="json"), adapters=[],
                         merged=ServedAdapter(name=name, run_id=run.id, run_uri=run.uri, rank=0), host=host, port=port,
                         dtype=dtype, max_model_len=max_model_len, prompting=prompting)
    adapters = [ServedAdapter(name=name, run_id=run.id, run_uri=run.uri, rank=serving.lora_rank or 8)
                for name, run, _, serving, _ in resolved]
    top = max(a.rank for a in adapters)
    rank = next((r for r in VLLM_RANKS if r >= top), None)
    if rank is None:
        raise ServeError(f"{adapters[0].run_id}: rank {top} is above vLLM's largest --max-lora-rank ({VLLM_RANKS[-1]})")
    prompting[base] = first[4]
    return ServePlan(server_id=server_id, base_name=base, base_spec=first[2].model_dump(mode="json"), adapters=adapters,
                     max_lora_rank=rank, max_loras=len(adapters) + 1, host=host, port=port, dtype=dtype,
                     max_model_len=max_model_len, prompting=prompting)


# ------------------------------------------------------------------------------------------ servers


def idle_stop_minutes(requested: float | None, *, local: bool, replicas: int | None) -> float | None:
    """The idle stop a server gets: as asked (0: none); by default CLOUD_IDLE_STOP_MINUTES on a cloud cluster and
    none locally. A service's replicas are SkyPilot's to keep up: an engine stopping itself would be replaced."""
    if requested is not None and requested < 0:
        raise ServeError("--idle-stop: minutes without a request, 0 to keep the server up")
    if requested is None:
        requested = None if local or replicas else CLOUD_IDLE_STOP_MINUTES
    if replicas and requested:
        raise ServeError("--idle-stop: a service's replicas are kept up by SkyPilot (a stopped replica is replaced); "
                         "stop the service with finetune servers --stop")
    return requested or None


def check_tls(tls: tuple[str, str]) -> None:
    """(certificate, key): both PEM files that exist, or ServeError naming the option."""
    for option, path in zip(("--tls-cert", "--tls-key"), tls, strict=True):
        file = Path(path).expanduser()
        if not file.is_file():
            raise ServeError(f"{option} {path}: no such file")
        head = file.read_bytes()[:4096]
        if b"-----BEGIN " not in head:
            raise ServeError(f"{option} {path}: not a PEM file (no -----BEGIN line)")
