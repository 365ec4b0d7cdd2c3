"""Fine-tuned models answering on the API's own base URL: one vLLM engine per base model, started on this machine
on the first request for it (sdk.serving, its environment kept apart), with every succeeded job's adapter; a job
that succeeds later is loaded into the running engine (vLLM's runtime LoRA loading) and a deleted model unloaded.

The base model is served through an all-zero adapter once the engine holds any adapter (sdk.serving says why:
vLLM's CPU LoRA kernels). Engines answer to internal names (the job id, the zero adapter); the API rewrites
`model` in their answers to the name the client asked for."""

from __future__ import annotations

import json
import struct
import threading
import time
from pathlib import Path
from typing import Any

from sdk.api.config import ApiConfig
from sdk.api.errors import ApiError, invalid, not_found
from sdk.api.objects import ModelObject
from sdk.api.state import ApiState, JobRecord

ZERO_NAME = "finetune-api-base"  # the engine's name for the zero adapter that serves the base


def zero_adapter(source: Path, target: Path) -> Path:
    """A copy of an adapter whose weights are all zero (B = 0 adds nothing), written from the safetensors layout
    itself: the same header, every data byte zero (0.0 in every float format). No torch on the client."""
    target.mkdir(parents=True, exist_ok=True)
    (target / "adapter_config.json").write_bytes((source / "adapter_config.json").read_bytes())
    raw = (source / "adapter_model.safetensors").read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    (target / "adapter_model.safetensors").write_bytes(raw[: 8 + size] + bytes(len(raw) - 8 - size))
    return target


class Engine:
    def __init__(self, server: Any, *, zero: bool, loaded: set[str]):
        self.server = server
        self.zero = zero  # the zero adapter is loaded: base requests go to it
        self.loaded = loaded  # job ids whose adapters the engine holds
        # the job watcher (a job just succeeded) and a client's first request may load the same adapter at once;
        # vLLM refuses a second load of a name, so loads are serialized and a loaded name is not posted again
        self.loading = threading.Lock()

    @property
    def base_target(self) -> str:
        from sdk.core.serveplan import ENGINE_BASE

        return ZERO_NAME if self.zero else ENGINE_BASE

    def post(self, route: str, body: dict[str, Any]) -> None:
        import httpx

        reply = httpx.post(f"{self.server.url}{route}", json=body, timeout=300,
                           headers={"Authorization": f"Bearer {self.server.api_key}"})
        if reply.status_code >= 300:
            raise ApiError(500, f"the engine refused {route} for {body.get('lora_name')}: {reply.text[:500]}",
                           code="engine_error")


class Inference:
    def __init__(self, config: ApiConfig, state: ApiState):
        self.config = config
        self.state = state
        self.engines: dict[str, Engine] = {}  # by the base's model id
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self.settle: Any = lambda job: None  # the job service's: a job that ended since its watcher looked
        self._stop_stale()

    def _stop_stale(self) -> None:
        """Engines a previous `finetune api` on this store left running (it was killed): stopped, not adopted."""
        from sdk.serving import list_servers

        for server in list_servers():
            if getattr(server.record, "api_store", None) == self.config.store:
                server.stop()

    # -- names

    def _served_jobs(self) -> list[JobRecord]:
        return [j for j in self.state.jobs.values() if j.final == "succeeded" and not j.model_deleted]

    def _base_names(self) -> list[str]:
        """The map's names and the bases succeeded jobs trained (a name only failed jobs asked for is no model)."""
        trained = (j.model for j in self.state.jobs.values() if j.final == "succeeded")
        return list(dict.fromkeys([*self.config.models, *trained]))

    def models(self) -> list[ModelObject]:
        started = int(time.time())
        out = [ModelObject(id=name, created=started, owned_by="finetune") for name in self._base_names()]
        out += [ModelObject(id=j.fine_tuned_model, created=j.finished_at or j.created_at, owned_by="user")
                for j in sorted(self._served_jobs(), key=lambda j: j.created_at)]
        return out

    def model(self, name: str) -> ModelObject:
        for model in self.models():
            if model.id == name:
                return model
        raise not_found("model", name, param="model")

    def _job_named(self, name: str) -> JobRecord | None:
        return next((j for j in self.state.jobs.values() if j.fine_tuned_model == name), None)

    def _base_spec(self, name: str) -> dict[str, Any]:
        """How to load the base a name stands for (a job's spec, whose model section the engine reads)."""
        from sdk.api.jobs import model_entry

        for job in self.state.jobs.values():
            if job.model == name or job.base == name:
                return job.spec
        entry = model_entry(self.config, name)
        return {"model": {"id": entry.model or name}, "data": {"source": "none"}}

    # -- routing a request

    def target(self, name: Any) -> tuple[Engine, str]:
        """The engine for a requested model (started if need be) and the name it answers to there."""
        if not isinstance(name, str) or not name:
            raise invalid("model: the model to answer with", param="model")
        job = self._job_named(name)
        if job is not None and job.final is None:
            self.settle(job)
            job = self._job_named(name)
        if job is not None:
            if job.model_deleted:
                raise not_found("model", name, param="model")
            if job.final != "succeeded":
                raise invalid(f"model {name}: its job {job.id} is not succeeded", param="model",
                              code="model_not_ready")
            reason = unservable(job)
            if reason:
                raise invalid(f"model {name}: {reason}; serve its run merged: finetune serve {job.id} --merge",
                              param="model", code="model_not_servable")
            engine = self._engine(job.spec)
            self._load(engine, job)
            return engine, job.id
        if name not in self._base_names() and not self.config.open_models:
            raise not_found("model", name, param="model")
        engine = self._engine(self._base_spec(name))
        return engine, engine.base_target

    def _engine(self, spec: dict[str, Any]) -> Engine:
        from sdk.core.spec import FineTuneSpec

        base = FineTuneSpec.model_validate(spec).model.id
        with self._guard:
            lock = self._locks.setdefault(base, threading.Lock())
        with lock:
            engine = self.engines.get(base)
            if engine is None or not engine.server.alive():
                engine = self.engines[base] = self._start(base, spec)
        return engine

    def _start(self, base: str, spec: dict[str, Any]) -> Engine:
        from sdk.core.methods import method_of
        from sdk.core.serveplan import VLLM_RANKS, ServedAdapter, ServePlan
        from sdk.core.spec import FineTuneSpec
        from sdk.serving import start_plan
        from sdk.serving.plan import port_free
        from sdk.store.runfolder import RunFolder, new_run_id

        jobs = [j for j in self._served_jobs()
                if FineTuneSpec.model_validate(j.spec).model.id == base and not unservable(j)]
        adapters = []
        for job in jobs:
            job_spec = FineTuneSpec.model_validate(job.spec)
            rank = method_of(job_spec).serving(job_spec.method).lora_rank or 8
            adapters.append(ServedAdapter(name=job.id, run_id=job.id, run_uri=RunFolder(self.state.store, job.id).uri,
                                          rank=rank))
        top = max([self.config.serve.max_lora_rank, *(a.rank for a in adapters)])
        port = next(p for p in range(18000, 19000) if port_free("127.0.0.1", p))
        plan = ServePlan(server_id=new_run_id("api-engine"), base_name=ZERO_NAME, base_spec=spec, adapters=adapters,
                         max_lora_rank=next(r for r in VLLM_RANKS if r >= top), max_loras=self.config.serve.max_loras,
                         port=port, dtype=self.config.serve.dtype, max_model_len=self.config.serve.max_model_len,
                         runtime_lora=True)
        print(f"[finetune api] starting the engine for {base} ({len(adapters)} adapter(s)) on port {port}", flush=True)
        server = start_plan(plan, api_store=self.config.store)
        try:
            server.wait_ready(self.config.serve.start_timeout)
        except BaseException:
            server.stop()
            raise
        return Engine(server, zero=bool(adapters), loaded={a.name for a in adapters})

    def _load(self, engine: Engine, job: JobRecord) -> None:
        with engine.loading:
            if job.id not in engine.loaded:
                self._load_once(engine, job)

    def _load_once(self, engine: Engine, job: JobRecord) -> None:
        from sdk.store.runfolder import RunFolder

        folder = Path(engine.server.record.log or ".").with_suffix("") / "api-adapters"
        path = RunFolder(self.state.store, job.id).fetch_adapter(folder / job.id, overwrite=True)
        if not engine.zero:
            engine.post("/v1/load_lora_adapter", {"lora_name": ZERO_NAME,
                                                  "lora_path": str(zero_adapter(path, folder / ZERO_NAME))})
            engine.zero = True
        engine.post("/v1/load_lora_adapter", {"lora_name": job.id, "lora_path": str(path)})
        engine.loaded.add(job.id)
        print(f"[finetune api] {job.fine_tuned_model} loaded", flush=True)

    # -- what jobs and clients change

    def on_succeeded(self, job: JobRecord) -> None:
        """A job just succeeded: callable at once where its base's engine runs (else the engine starts with it)."""
        from sdk.core.spec import FineTuneSpec

        engine = self.engines.get(FineTuneSpec.model_validate(job.spec).model.id)
        if engine is not None and engine.server.alive():
            self._load(engine, job)

    def delete(self, name: str) -> dict[str, Any]:
        job = self._job_named(name)
        if job is None or job.model_deleted or job.final != "succeeded":
            raise not_found("model", name, param="model")
        self.state.save_job(job.model_copy(update={"model_deleted": True}))
        for engine in self.engines.values():
            with engine.loading:
                if job.id in engine.loaded:
                    engine.post("/v1/unload_lora_adapter", {"lora_name": job.id})
                    engine.loaded.discard(job.id)
        return {"id": name, "object": "model", "deleted": True}

    def close(self) -> None:
        for engine in self.engines.values():
            engine.server.stop()
        self.engines.clear()


def unservable(job: JobRecord) -> str | None:
    """Why a job's adapter cannot be served as LoRA by the engine (DoRA, IA3, a full fine-tune …), or None."""
    from sdk.core.methods import method_of
    from sdk.core.spec import FineTuneSpec

    spec = FineTuneSpec.model_validate(job.spec)
    serving = method_of(spec).serving(spec.method)
    return None if serving.as_lora else serving.reason


def rewrite_model(payload: bytes, name: str) -> bytes:
    """An engine's JSON answer with `model` set to the name the client asked for."""
    try:
        data = json.loads(payload)
    except ValueError:
        return payload
    if isinstance(data, dict) and "model" in data:
        data["model"] = name
    return json.dumps(data).encode()
