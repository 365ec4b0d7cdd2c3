"""A started endpoint: the `Server` handle, and the records of the servers this machine started."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from typing import Any, Literal

from sdk.core.errors import FinetuneError, LaunchError
from sdk.serving.record import ServerRecord, serving_backend, write_private

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")  # SkyPilot colours its logs


def servers_dir() -> Path:
    from sdk.machine.registry import home

    return home() / "servers"


class Server:
    """A running endpoint: `url`, `models` (served names), `client` (an openai.OpenAI), `logs()`, `stop()`.
    `backend` says where it runs: a process group on this machine (`pid`), or a SkyPilot cluster or service."""

    def __init__(self, record: ServerRecord | dict[str, Any]):
        self.record = record if isinstance(record, ServerRecord) else ServerRecord.model_validate(record)
        self.id = self.record.id
        self.url = self.record.url
        self.models = self.record.models
        self.base = self.record.base
        self.backend = self.record.backend
        self.pid = self.record.pid
        self.prompting = self.record.prompting
        self._where = serving_backend(self.backend)
        self._specs: dict[str, Any] = {}  # served name -> its run's spec, read from the store once
        self._probe = "none answered"  # what the last readiness probe got

    def __repr__(self) -> str:
        return f"Server(id={self.id!r}, url={self.url!r}, models={self.models})"

    @property
    def api_key(self) -> str:
        """The server's key (every endpoint has one: `finetune servers --show-key ID`); older records had none."""
        return self.record.api_key or "finetune-local"

    @property
    def client(self) -> Any:
        import openai

        if self.record.tls_ca:  # the certificate given with --tls-cert: trusted as its own authority
            import httpx

            return openai.OpenAI(base_url=f"{self.url}/v1", api_key=self.api_key, max_retries=0, timeout=600,
                                 http_client=httpx.Client(verify=self.record.tls_ca, timeout=600))
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=self.api_key, max_retries=0, timeout=600)

    def logs(self) -> str:
        return self._where.logs(self.record)

    def alive(self) -> bool:
        return self._where.alive(self.record)

    def state(self) -> Literal["starting", "ready", "stopped"]:
        if not self.alive():
            return "stopped"
        return "ready" if self._ready() else "starting"

    def _ready(self) -> bool:
        import urllib.request

        request = urllib.request.Request(f"{self.url}/v1/models", headers={"Authorization": f"Bearer {self.api_key}"})
        context = None
        if self.record.tls_ca:
            import ssl

            context = ssl.create_default_context(cafile=self.record.tls_ca)
            context.check_hostname = False  # a cloud endpoint is an IP address; the certificate itself is pinned
        try:
            with urllib.request.urlopen(request, timeout=2, context=context) as response:
                listed = {m["id"] for m in json.loads(response.read())["data"]}
        except (OSError, ValueError, KeyError) as exc:  # the last one is quoted when the wait gives up
            self._probe = f"{type(exc).__name__}: {exc}"[:200]
            return False
        missing = sorted(set(self.models) - listed)
        self._probe = f"{self.url} lists {sorted(listed)}, not {missing}"[:200]
        return not missing

    def wait_ready(self, timeout: float = 600) -> Server:
        """Until every served name is listed; a LaunchError when the engine exits first or `timeout` passes, which
        keeps the engine's log (fetched here, before the caller stops the server and a cluster takes it along)."""
        deadline = time.time() + timeout
        polls = 0
        while time.time() < deadline:
            if self._ready():
                return self
            if polls % self._where.poll_every == 0 and (why := self._where.exited(self.record)):
                raise self.failure(f"exited before it was ready ({why})")
            polls += 1
            time.sleep(1)
        raise self.failure(f"not ready after {timeout:.0f} s (last readiness probe: {self._probe})")

    def failure(self, what: str, lines: int = 20) -> LaunchError:
        """The engine's log saved as <servers>/<id>.failed.log (its owner's alone), and an error quoting its end."""
        text = ANSI.sub("", self.logs())
        path = servers_dir() / f"{self.id}.failed.log"
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_private(path, text)
        tail = "\n".join(text.rstrip().splitlines()[-lines:]) or "(the engine wrote nothing)"
        return LaunchError(f"server {self.id} {what}; its log is kept in {path}, ending:\n{tail}")

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM to the engine's process group, SIGKILL what is left after `timeout` (or the SkyPilot
        cluster or service taken down); the record goes."""
        self._where.stop(self.record, timeout=timeout)
        folder = servers_dir()
        for path in (folder / f"{self.id}.json", folder / f"{self.id}.plan.json"):
            path.unlink(missing_ok=True)
        shutil.rmtree(folder / self.id, ignore_errors=True)  # fetched adapters, a merged model

    def prompt(self, model: str, text: str) -> Any:
        """`text` written the way `model` was trained (its run's template): a string for the completions
        endpoint, or chat turns for chat completions."""
        from sdk.data.rendering import user_prompt
        from sdk.runs import get_run

        run_id = self.record.runs.get(model)
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
        record = server.record
        if ident in (server.id, server.url, str(server.pid), record.cluster, record.service):
            return server
    raise FinetuneError(f"{ident}: no running server with that id (finetune servers lists them)")
