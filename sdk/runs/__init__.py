"""Run handles: submit a spec, watch it, read its metrics and fetch its adapter — all from the store."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from sdk.backends import BackendView
from sdk.core.billing import RunCost
from sdk.core.errors import LaunchError, RunNotFound, StoreError
from sdk.core.spec import DEFAULT_OUTPUT, FineTuneSpec
from sdk.core.summary import RunSummary
from sdk.machine import registry
from sdk.runs.record import Provenance, RunRecord, client_record, read_record, write_client_record
from sdk.store import FETCHED, check_replaceable, contained, fetch_dir, open_store
from sdk.store.runfolder import ADAPTER, LAUNCH, LOG, SPEC, TERMINAL, RunFolder, RunState, new_run_id


class RunStatus(BaseModel):
    """status.json, typed. Unknown keys are kept (the node may add more)."""

    model_config = ConfigDict(extra="allow")

    state: RunState = "pending"
    heartbeat: float | None = None
    phase: str | None = None
    step: int | None = None
    total_steps: int | None = None
    last_loss: float | None = None
    error: str | None = None

    @property
    def done(self) -> bool:
        """Nothing more will happen that a client can wait for: a final state, or a node gone silent."""
        return self.state in TERMINAL or self.state == "lost"


# A node writes its heartbeat every sync interval; this many missed in a row, and at least LOST_AFTER_S,
# and a run that says "running" is read as lost.
LOST_AFTER_INTERVALS = 20
LOST_AFTER_S = 120.0


def lost_view(stored: RunStatus, now: float) -> RunStatus | None:
    """A "running" status whose heartbeat stopped: the node died while nobody watched (a detached client,
    a machine that slept). The store alone says so; nothing is written."""
    if stored.state not in ("running", "cancelling") or stored.heartbeat is None:
        return None
    interval = float(getattr(stored, "sync_interval", None) or 3.0)
    silent = now - stored.heartbeat
    if silent < max(LOST_AFTER_INTERVALS * interval, LOST_AFTER_S):
        return None
    step = f" at step {stored.step}" if stored.step is not None else ""
    return stored.model_copy(update={"state": "lost", "error": f"no heartbeat from the node for {silent:.0f} s{step}; "
                                     "it stopped without a final word (finetune logs shows its last lines)"})


class Run:
    """A handle on one run. Everything it reports is read from the run folder in the store."""

    def __init__(self, uri: str, *, backend: str | None = None, info: BaseModel | None = None):
        self.folder = RunFolder.from_uri(uri)
        self.id = self.folder.run_id
        self.uri = self.folder.uri
        self.backend = backend
        self.info = info  # the backend's typed Info (PID, cluster); None for a run found in a store

    def __repr__(self) -> str:
        return f"Run(id={self.id!r}, uri={self.uri!r}, backend={self.backend!r})"

    def _backend(self) -> Any:
        if not self.backend or self.info is None:
            return None
        from sdk.backends import get_backend

        return get_backend(self.backend)

    # -- state

    def _views(self) -> tuple[RunStatus, BackendView | None]:
        stored = RunStatus.model_validate(self.folder.status())
        backend = self._backend()
        view = backend.status(self.folder, self.info) if backend is not None and not stored.done else None
        return stored, view

    def status(self) -> RunStatus:
        """The run's state: status.json, unless the backend knows better (a node process that died
        without a word, a cluster still provisioning). Reads only; see reconcile()."""
        stored, view = self._views()
        if view is None:  # a backend that can see the node (a live local process) knows better than a heartbeat
            return (lost_view(stored, time.time()) if self._backend() is None else None) or stored
        update = {"state": view.state, "error": view.error or stored.error, **({"note": view.note} if view.note else {})}
        return stored.model_copy(update=update)

    def reconcile(self) -> RunStatus:
        """Write the backend's view into status.json when it differs from what the store says, so that
        a client elsewhere, reading the store alone, sees it too."""
        stored, view = self._views()
        if view is None or view.note:  # nothing new: the backend agrees, or did not answer
            return stored
        extra = stored.model_dump(exclude={"state", "heartbeat", "error"}, exclude_none=True)
        self.folder.write_status(view.state, **extra, **({"error": view.error} if view.error else {}))
        return RunStatus.model_validate(self.folder.status())

    def wait(self, *, progress: bool = True, timeout: float | None = None, poll: float = 1.0) -> RunStatus:
        """Block until the run ends; show step/total and loss on a progress bar (notebook or terminal)."""
        deadline = None if timeout is None else time.time() + timeout
        bar, next_cost_check = None, time.time() + 30.0
        try:
            while True:
                status = self.status()
                if progress:
                    from sdk.runs.progress import _update_bar

                    bar = _update_bar(bar, status, self.id)
                if status.done:
                    # A final state only the backend knew (the node died silently) goes into the store.
                    if status.state == "lost" or self.folder.status().get("state") == status.state:
                        return status
                    return self.reconcile()
                if time.time() >= next_cost_check:  # the client's half of resources.max_cost
                    from sdk.runs.cost import watch_max_cost

                    next_cost_check = watch_max_cost(self)
                if deadline is not None and time.time() > deadline:
                    raise TimeoutError(f"run {self.id} still {status.state} after {timeout} s")
                time.sleep(poll)
        finally:
            if bar is not None:
                bar.close()

    def cancel(self, *, reason: str | None = None) -> RunStatus:
        """Stop the run: the backend's own stop where this client knows the backend (SkyPilot then records the job
        as cancelled, rather than finding it ended by itself), and a cancel marker in its folder, written whatever
        the backend did (the node polls it and stops after its current step, whatever machine started it). A run
        that already ended is left as it is: nothing is signalled and its state does not change. `reason` becomes
        the cancelled run's error."""
        if self.folder.status().get("state") in TERMINAL:
            return self.status()
        backend = self._backend()
        try:
            if backend is not None:
                backend.cancel(self.folder, self.info)
        finally:
            self.folder.request_cancel(reason=reason)
        return self.status()

    def down(self) -> None:
        """Tear down the cluster this run left up (SkyPilot runs on infra without autodown, e.g. Slurm)."""
        backend = self._backend()
        if backend is None:
            raise LaunchError(f"run {self.id} ran on the {self.backend or 'unknown'} backend: there is no cluster to tear down")
        backend.down(self.info)

    # -- artifacts

    def spec(self) -> FineTuneSpec:
        return self.folder.spec()

    def record(self) -> RunRecord | None:
        """What it read and ran with (sdk.core.record: data hashes, packages, torch, image); None before records."""
        return read_record(self.folder)

    def cost(self) -> RunCost | None:
        """What the run cost: estimate at launch, actual spend (so far, or final once its cluster is down) and
        the billed parts; None for a run from before costs were recorded."""
        from sdk.runs.cost import run_cost

        return run_cost(self.folder, self._backend(), self.info)

    def metrics(self, *, as_frame: bool = False) -> Any:
        rows = self.folder.metrics()
        if as_frame:
            import pandas as pd

            return pd.DataFrame(rows)
        return rows

    def summary(self) -> RunSummary | None:
        """summary.json, typed; None until the run has finished. Its cost is the client's (final once the cluster
        is down), not the node's view when it ended."""
        summary = self.folder.summary()
        cost = self.cost() if summary is not None else None
        return summary.model_copy(update={"cost": cost}) if summary is not None and cost is not None else summary

    def logs(self, *, follow: bool = False, poll: float = 1.0) -> str | Iterator[str]:
        """The node's log: all of it, or (follow=True) an iterator of new text until the run ends."""
        if follow:
            return self._follow(poll)
        return self._log_text()

    def _log_text(self) -> str:
        backend = self._backend()
        text = backend.logs(self.folder, self.info) if backend is not None else None
        if text is None:
            key = self.folder.key(LOG)
            text = self.folder.store.get_bytes(key).decode(errors="replace") if self.folder.store.exists(key) else ""
        return text

    def _follow(self, poll: float) -> Iterator[str]:
        seen = 0
        while True:
            done = self.status().done
            text = self._log_text()
            if len(text) > seen:
                yield text[seen:]
                seen = len(text)
            if done:
                return
            time.sleep(poll)

    def fetch_adapter(self, dest: str | Path, *, overwrite: bool = False) -> Path:
        """Download the committed adapter, verified against its manifest; all or nothing."""
        return self.folder.fetch_adapter(dest, overwrite=overwrite, state=lambda: self.status().state)

    def export(self, format: str, *, out: str | Path | None = None, force: bool = False,
               **options: Any) -> dict[str, Any]:
        """Export this run (sdk.exports.export): format gguf | ollama | merged | hub; options as `finetune export`
        takes them (quants=["q8_0", "q4_k_m"], adapter_only=True, tolerance=5.0, repo=..., dry_run=True …).
        Returns the report; the files land in the run folder under exports/<format>/ (and in `out` when given)."""
        from sdk.exports import export

        return export(self.uri, format=format, out=out, force=force, **options)

    def fetch_export(self, format: str, dest: str | Path, *, overwrite: bool = False) -> Path:
        """A committed export into dest, every file verified against its manifest."""
        from sdk.exports import fetch_export

        return fetch_export(self.uri, format, dest, overwrite=overwrite)

    def generate(self, prompts: str | list[str], *, max_new_tokens: int | None = None, base: bool = False,
                 tools: str | Path | None = None) -> list[str]:
        """Greedy completions of the tuned model (`base=True`: the adapter off), each prompt written in the
        run's own training template; transformers + peft in a subprocess (the client never imports torch).
        `tools`: a JSON file of the functions the prompts offer; the answers are then the generated text, tool
        calls included as written (sdk.runs.tools.generate returns them parsed)."""
        from sdk.runs.tools import generate

        items = [prompts] if isinstance(prompts, str) else list(prompts)
        result = generate(self.uri, items, max_new_tokens=max_new_tokens, base=base, tools=str(tools) if tools else None)
        return [o["text"] for o in result["outputs"]]

    def fetch(self, dest: str | Path, *, overwrite: bool = False, checkpoints: bool = False) -> Path:
        """The whole run folder (metrics, logs, summary, tracker files such as tensorboard/ and wandb/, the
        adapter verified against its manifest) into dest, all or nothing; checkpoints only when asked."""
        from sdk.store.atomic import staged_dir
        from sdk.store.runfolder import CHECKPOINTS

        dest = Path(dest).expanduser().resolve()
        if dest.exists() and any(dest.iterdir()) and not overwrite:
            raise StoreError(f"{dest}: destination exists and is not empty (pass overwrite=True / --force)")
        if overwrite:
            check_replaceable(dest)
        with staged_dir(dest) as staging:
            prefix = self.folder.key("")
            for key in self.folder.store.list(prefix):
                rel = key[len(prefix):]
                top = rel.split("/", 1)[0]
                if top == ADAPTER or (top == CHECKPOINTS and not checkpoints):
                    continue
                target = contained(staging, rel)  # a key planted in a shared bucket never writes outside dest
                target.parent.mkdir(parents=True, exist_ok=True)
                self.folder.store.download_file(key, target)
            if self.folder.adapter_manifest() is not None:
                fetch_dir(self.folder.store, self.folder.key(ADAPTER), staging / ADAPTER)
            (staging / FETCHED).write_text(f"{self.uri}\n")
        return dest

    def plot(self, path: str | Path | None = None) -> Any:
        """Loss and learning-rate curves (matplotlib); saved to `path` when given."""
        import matplotlib

        if path is not None:
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = [r for r in self.metrics() if "loss" in r]
        fig, (ax_loss, ax_lr) = plt.subplots(1, 2, figsize=(10, 3.5))
        ax_loss.plot([r["step"] for r in rows], [r["loss"] for r in rows], label="train loss")
        evals = [r for r in self.metrics() if "eval_loss" in r]
        if evals:
            ax_loss.plot([r["step"] for r in evals], [r["eval_loss"] for r in evals], "o-", label="eval loss")
        ax_loss.set_xlabel("step")
        ax_loss.set_title(f"{self.id}: loss")
        ax_loss.legend()
        ax_lr.plot([r["step"] for r in rows if "lr" in r], [r["lr"] for r in rows if "lr" in r])
        ax_lr.set_xlabel("step")
        ax_lr.set_title("learning rate")
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=100)
            plt.close(fig)
        return fig


def preflight_data(spec: FineTuneSpec) -> Any:
    """The data report, or DataError naming every bad row (the first 20, and how many more)."""
    from sdk.data.check import check_data
    from sdk.data.rows import DataError

    report = check_data(spec)
    if not report.ok:
        raise DataError(report.error())
    return report


def submit(spec: FineTuneSpec, *, backend: str = "auto", check_data: bool = True, run_id: str | None = None,
           provenance: Provenance | None = None) -> Run:
    """Create the run folder (spec.json, never overwriting a run) and start the node on the backend.

    Before anything starts, every row of the data is read and checked (sdk.data.check): a bad row raises
    DataError listing file:line and what is wrong. `check_data=False` skips that (the node checks anyway).
    `run_id` is chosen by the caller when it must know the id before the launch returns (a sweep driver
    records it first, so that a driver killed mid-launch is resumed without launching the trial twice)."""
    from sdk.backends import choose_backend, get_backend
    from sdk.backends.tracking import check_env
    from sdk.core.spec import check_new_spec
    from sdk.runs.shipping import check_shipped, ship

    check_new_spec(spec)
    name = choose_backend(spec, backend)
    impl = get_backend(name)
    impl.check(spec)
    check_env(spec)
    if check_data:
        preflight_data(spec)
    check_shipped(spec)  # before the run folder exists: a bad reward file leaves nothing behind
    from sdk.runs.cost import check_max_cost, start_billing

    estimate = check_max_cost(spec, backend=name)
    known = client_record(spec, backend=name, given=provenance)  # before the folder: the data hashed first
    store = open_store(spec.output)
    if run_id is not None and (not run_id or "/" in run_id or run_id in (".", "..")):
        raise LaunchError(f"run id {run_id!r}: not a folder name")
    folder = RunFolder(store, run_id or new_run_id(spec.name))
    if folder.exists():
        raise LaunchError(f"{folder.uri} already exists; refusing to overwrite a run")
    folder.write_json(SPEC, spec.model_dump(mode="json"))
    ship(spec, folder)
    write_client_record(spec, folder, backend=name, given=provenance, record=known)  # and a rerun's lock
    folder.write_status("pending", backend=name)
    start_billing(spec, folder, backend=name, estimate=estimate)
    try:
        info = impl.submit(spec, folder)
    except BaseException as exc:
        folder.write_status("failed", error=f"submit failed: {exc}")
        raise
    folder.write_json(LAUNCH, {"backend": name, "info": info.model_dump(mode="json")})
    from sdk.runs.cost import run_cost

    run_cost(folder, impl, info)  # the launched cluster's price into cost.json, for the node's max_cost watch
    registry.record(folder.run_id, folder.uri, name, info.model_dump(mode="json"))
    return Run(folder.uri, backend=name, info=info)


def _from_entry(entry: dict[str, Any]) -> Run:
    """A registry row as a Run with its backend's typed Info."""
    from sdk.backends import get_backend

    info = get_backend(entry["backend"]).Info.model_validate(entry["info"])
    return Run(entry["uri"], backend=entry["backend"], info=info)


def get_run(id_or_uri: str, *, store: str | None = None) -> Run:
    """A run by id (registry, then the given or default store) or by its folder URI."""
    entry = registry.lookup(id_or_uri)
    if entry is not None:
        return _from_entry(entry)
    if "://" in id_or_uri or "/" in id_or_uri or Path(id_or_uri).expanduser().is_dir():
        run = Run(id_or_uri)
        if not run.folder.exists():
            raise RunNotFound(f"{run.uri}: no run here (no {SPEC})")
        entry = registry.lookup(run.id)
        if entry is not None and entry["uri"] == run.uri:  # submitted here: the backend can cancel it
            return _from_entry(entry)
        return run
    root = open_store(store or DEFAULT_OUTPUT)
    folder = RunFolder(root, id_or_uri)
    if folder.exists():
        return Run(folder.uri)
    raise RunNotFound(f"no run {id_or_uri!r} in the registry or in {root.uri}")


def list_runs(*, store: str | None = None, limit: int = 100) -> list[Run]:
    """Runs in a store (read from the store alone), or the locally registered ones."""
    if store is None:
        return [_from_entry(e) for e in registry.entries(limit)]
    root = open_store(store)
    ids = sorted({key.split("/")[0] for key in root.list("") if key.count("/") == 1 and key.endswith(f"/{SPEC}")}, reverse=True)
    return [Run(root.url(run_id)) for run_id in ids[:limit]]

