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
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from sdk.core.errors import FinetuneError, LaunchError
from sdk.runs.processes import identify, is_same, stop_group


class ServeError(FinetuneError, ValueError):
    """A run or setting the server cannot take; one line naming the run or option (the CLI exits 2)."""

VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the values vLLM's --max-lora-rank accepts
ENGINE_BASE = "finetune-engine-base"
NODE_TLS = {"certfile": "~/.finetune/tls/cert.pem", "keyfile": "~/.finetune/tls/key.pem"}  # where a node finds them
CLOUD_IDLE_STOP_MINUTES = 60.0  # a GPU cluster nobody sends requests to stops billing after an hour
SERVE_KEY_ENV = "FINETUNE_SERVE_API_KEY"  # how the key reaches the serving node (launch/tools/serve.py hands it to vLLM)  # the engine's own name for the bare base; clients use the served names
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class ServedAdapter(BaseModel):
    name: str
    run_id: str
    run_uri: str
    rank: int


class ServePlan(BaseModel):
    """What the serving node does; written as JSON for it (launch/tools/serve.py)."""

    server_id: str
    base_name: str
    base_spec: dict[str, Any]  # the first run's spec: how to load the base model (the same as in training)
    adapters: list[ServedAdapter]
    merged: ServedAdapter | None = None  # --merge: one run served as a merged model, no LoRA
    max_lora_rank: int = 8
    max_loras: int = 1
    host: str = "127.0.0.1"
    port: int = 8000
    dtype: str = "float32"
    max_model_len: int = 2048
    prompting: dict[str, dict[str, str | None]] = {}  # served name -> its run's summary template and instruction
    idle_stop_minutes: float | None = None  # the engine stops after this long without a request (launch/tools/idle_stop.py)
    tls: bool = False  # the engine serves HTTPS with the certificate mounted at NODE_TLS (a single-node cloud server)

    @property
    def names(self) -> list[str]:
        return ([self.merged.name] if self.merged else []) + ([self.base_name] if self.adapters else []) + \
            [a.name for a in self.adapters]


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


def servers_dir() -> Path:
    from sdk.runs.registry import home

    return home() / "servers"


class Server:
    """A running endpoint: `url`, `models` (served names), `client` (an openai.OpenAI), `logs()`, `stop()`.
    `backend` says where it runs: a process group on this machine (`pid`), or a SkyPilot cluster or service."""

    def __init__(self, record: dict[str, Any]):
        self.record = record
        self.id: str = record["id"]
        self.url: str = record["url"]
        self.models: list[str] = record["models"]
        self.base: str = record["base"]
        self.backend: str = record.get("backend", "local")
        self.pid: int | None = record.get("pid")
        self.prompting: dict[str, dict[str, Any]] = record.get("prompting", {})
        self._specs: dict[str, Any] = {}  # served name -> its run's spec, read from the store once

    def __repr__(self) -> str:
        return f"Server(id={self.id!r}, url={self.url!r}, models={self.models})"

    @property
    def api_key(self) -> str:
        """The server's key (every endpoint has one: `finetune servers --show-key ID`); older records had none."""
        return self.record.get("api_key") or "finetune-local"

    @property
    def client(self) -> Any:
        import openai

        ca = self.record.get("tls_ca")  # the certificate given with --tls-cert: trusted as its own authority
        if ca:
            import httpx

            return openai.OpenAI(base_url=f"{self.url}/v1", api_key=self.api_key, max_retries=0, timeout=600,
                                 http_client=httpx.Client(verify=ca, timeout=600))
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=self.api_key, max_retries=0, timeout=600)

    def logs(self) -> str:
        if self.backend == "skypilot":
            from sdk.serving.skypilot import remote_logs

            return remote_logs(self.record)
        path = Path(self.record["log"])
        return path.read_text(errors="replace") if path.is_file() else ""

    def alive(self) -> bool:
        if self.backend == "skypilot":
            from sdk.serving.skypilot import remote_alive

            return remote_alive(self.record)
        who = self.record.get("process") or {}  # the engine's identity (sdk.runs.processes.identify); older records had none
        return is_same(self.pid, who.get("started"), who.get("boot"))

    def state(self) -> Literal["starting", "ready", "stopped"]:
        if not self.alive():
            return "stopped"
        return "ready" if self._ready() else "starting"

    def _ready(self) -> bool:
        import urllib.request

        request = urllib.request.Request(f"{self.url}/v1/models", headers={"Authorization": f"Bearer {self.api_key}"})
        context = None
        if self.record.get("tls_ca"):
            import ssl

            context = ssl.create_default_context(cafile=self.record["tls_ca"])
            context.check_hostname = False  # a cloud endpoint is an IP address; the certificate itself is pinned
        try:
            with urllib.request.urlopen(request, timeout=2, context=context) as response:
                listed = {m["id"] for m in json.loads(response.read())["data"]}
        except (OSError, ValueError, KeyError):
            return False
        return set(self.models) <= listed

    def wait_ready(self, timeout: float = 600) -> Server:
        deadline = time.time() + timeout
        every = 15 if self.backend == "skypilot" else 1  # asking SkyPilot whether a cluster is up takes a second
        polls = 0
        while time.time() < deadline:
            if self._ready():
                return self
            if polls % every == 0 and not self.alive():
                tail = "\n".join(self.logs().splitlines()[-15:])
                raise LaunchError(f"server {self.id} exited before it was ready:\n{tail}")
            polls += 1
            time.sleep(1)
        raise LaunchError(f"server {self.id} not ready after {timeout:.0f} s; see finetune serve logs {self.id}")

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM to the engine's process group, SIGKILL what is left after `timeout` (or the SkyPilot
        cluster or service taken down); the record goes."""
        if self.backend == "skypilot":
            from sdk.serving.skypilot import remote_stop

            remote_stop(self.record)
        elif self.pid:
            who = self.record.get("process") or {}
            stop_group(self.pid, grace=timeout, started=who.get("started"), boot=who.get("boot"))
        import shutil

        folder = servers_dir()
        for path in (folder / f"{self.id}.json", folder / f"{self.id}.plan.json"):
            path.unlink(missing_ok=True)
        shutil.rmtree(folder / self.id, ignore_errors=True)  # fetched adapters, a merged model

    def prompt(self, model: str, text: str) -> Any:
        """`text` written the way `model` was trained (its run's template): a string for the completions
        endpoint, or chat turns for chat completions."""
        from sdk.data.rendering import user_prompt
        from sdk.runs import get_run

        run_id = self.record["runs"].get(model)
        if run_id is None:
            return text
        if model not in self._specs:
            self._specs[model] = get_run(run_id).spec()
        how = self.prompting.get(model) or {}
        return user_prompt(self._specs[model], how.get("template"), text, instruction=how.get("instruction"))

    def ask(self, model: str, text: str, *, max_tokens: int = 32, temperature: float = 0.0) -> str:
        """One answer, prompted the way `model` was trained."""
        prompt = self.prompt(model, text)
        if isinstance(prompt, list):
            reply = self.client.chat.completions.create(model=model, messages=prompt, max_tokens=max_tokens,
                                                        temperature=temperature)
            return reply.choices[0].message.content or ""
        reply = self.client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, temperature=temperature)
        return reply.choices[0].text


def list_servers() -> list[Server]:
    """Servers started from this machine that are still alive (records of dead ones are removed)."""
    out = []
    folder = servers_dir()
    for path in sorted(p for p in folder.glob("*.json") if not p.name.endswith(".plan.json")) if folder.is_dir() else []:
        server = Server(json.loads(path.read_text()))
        if server.alive():
            out.append(server)
        else:
            path.unlink(missing_ok=True)
    return out


def get_server(ident: str) -> Server:
    for server in list_servers():
        if ident in (server.id, server.url, str(server.pid), server.record.get("cluster"), server.record.get("service")):
            return server
    raise FinetuneError(f"{ident}: no running server with that id (finetune servers lists them)")


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
    if backend == "auto":
        from sdk.backends import choose_backend
        from sdk.runs import get_run

        backend = choose_backend(get_run(parse_ref(runs[0])[1]).spec(), "auto") if runs else "local"
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
    import secrets

    folder = servers_dir()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Every endpoint needs a key, a local one too (a workstation is shared): it reaches vLLM through the
    # environment (VLLM_API_KEY), never a command line, a log, a plan file or the store; the record that keeps
    # it is readable by its owner alone.
    api_key = secrets.token_urlsafe(32)
    record = {"id": plan.server_id, "models": plan.names, "base": plan.base_name, "started": time.time(), "api_key": api_key,
              "prompting": plan.prompting, "backend": backend,
              "runs": {**({plan.base_name: plan.adapters[0].run_uri} if plan.adapters else {}),
                       **{a.name: a.run_uri for a in ([plan.merged] if plan.merged else []) + plan.adapters}}}
    if local:
        record.update(_start_local(plan, folder, api_key))
    else:
        from sdk.core.spec import FineTuneSpec
        from sdk.serving.skypilot import launch_server

        # the plan holds the first run's spec, read once by the preflight: its resources are the node's
        record.update(launch_server(plan, FineTuneSpec.model_validate(plan.base_spec), replicas=replicas, api_key=api_key,
                                    tls=tls))
        if tls:
            record["tls_ca"] = str(Path(tls[0]).expanduser().resolve())
    write_private(folder / f"{plan.server_id}.json", json.dumps(record, indent=1))
    server = Server(record)
    if wait:
        try:
            server.wait_ready(timeout)
        except BaseException:
            server.stop()
            raise
    return server


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


def write_private(path: Path, text: str) -> None:
    """A file only its owner can read, created so from the start (no moment of wider permissions)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(path, 0o600)


def _start_local(plan: ServePlan, folder: Path, api_key: str) -> dict[str, Any]:
    from sdk.serving.engine_env import engine_python

    python = engine_python()
    plan_file = folder / f"{plan.server_id}.plan.json"
    plan_file.write_text(plan.model_dump_json(indent=1))
    log = folder / f"{plan.server_id}.log"
    with open(log, "w") as handle:
        proc = subprocess.Popen([sys.executable, "-m", "launch.tools.serve", "--plan", str(plan_file), "--engine-python", str(python)],
                                stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", SERVE_KEY_ENV: api_key})
    return {"pid": proc.pid, "process": identify(proc.pid), "url": f"http://{plan.host}:{plan.port}", "log": str(log)}
