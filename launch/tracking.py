"""Experiment trackers on rank 0 — MLflow, W&B, TensorBoard — logging the rows metrics.jsonl gets.

The trap users meet: every restart after a kill or a spot preemption starts a new tracker run
(transformers' report_to does). Here each tracker's run id is kept in the run folder (tracking.json),
so a resumed node continues the same tracker run:
  MLflow       the same run; steps it already holds are not logged twice
  W&B          the same run id with resume="allow" (W&B itself drops steps it already has)
  TensorBoard  event files in the run folder's tensorboard/; a resumed writer purges the steps after the
               checkpoint it resumed from, so the series has no duplicates
Logging runs on a background thread: a slow or unreachable tracker warns once and never stalls training.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from pathlib import Path
from typing import Any, Protocol

from sdk.core.spec import FineTuneSpec
from sdk.store.runfolder import RunFolder

TRACKING = "tracking.json"
_SKIP = {"step", "epoch", "time"}


def numeric(row: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in row.items() if k not in _SKIP and isinstance(v, (int, float)) and not isinstance(v, bool)}


def params(spec: FineTuneSpec) -> dict[str, str]:
    """The spec flattened to key → value strings (trackers' hyperparameter tables)."""
    out: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item)
        elif value is not None:
            out[prefix] = str(value)[:500]

    walk("", spec.model_dump(mode="json", exclude={"env", "secrets", "tracking"}))
    return out


class Tracker(Protocol):
    name: str

    def start(self, *, state: dict[str, Any], resumed_from: int | None) -> dict[str, Any]: ...
    def log(self, metrics: dict[str, float], step: int) -> None: ...
    def sync(self) -> None: ...
    def finish(self, state: str) -> None: ...


class MlflowTracker:
    name = "mlflow"

    def __init__(self, cfg: Any, spec: FineTuneSpec, folder: RunFolder, workdir: Path):
        self.cfg, self.spec, self.folder = cfg, spec, folder
        self.last_step = 0

    def start(self, *, state: dict[str, Any], resumed_from: int | None) -> dict[str, Any]:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        uri = os.environ.get(self.cfg.uri_env)
        if not uri:
            raise RuntimeError(f"{self.cfg.uri_env} is not set on the node")
        self.client = MlflowClient(tracking_uri=uri)
        if state.get("run_id"):
            self.run_id = state["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
            keys = self.client.get_run(self.run_id).data.metrics
            self.last_step = max((m.step for key in keys for m in self.client.get_metric_history(self.run_id, key)), default=0)
            print(f"[finetune] mlflow: continuing run {self.run_id} after step {self.last_step}", flush=True)
            return state
        name = self.cfg.experiment or self.spec.name or "finetune"
        found = self.client.get_experiment_by_name(name)
        experiment_id = found.experiment_id if found else self.client.create_experiment(name)
        run = self.client.create_run(experiment_id, run_name=self.folder.run_id,
                                     tags={"finetune.run_id": self.folder.run_id, "finetune.run_uri": self.folder.uri})
        self.run_id = run.info.run_id
        items = [Param(k, v) for k, v in params(self.spec).items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=items[i:i + 100])
        print(f"[finetune] mlflow: run {self.run_id} in experiment {name!r}", flush=True)
        return {"run_id": self.run_id, "experiment_id": experiment_id}

    def log(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        if step <= self.last_step:  # already in the run from before the restart
            return
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])

    def sync(self) -> None:
        pass

    def finish(self, state: str) -> None:
        status = {"succeeded": "FINISHED", "cancelled": "KILLED"}.get(state, "FAILED")
        self.client.set_terminated(self.run_id, status=status)


class WandbTracker:
    name = "wandb"

    def __init__(self, cfg: Any, spec: FineTuneSpec, folder: RunFolder, workdir: Path):
        self.cfg, self.spec, self.folder, self.workdir = cfg, spec, folder, workdir

    def start(self, *, state: dict[str, Any], resumed_from: int | None) -> dict[str, Any]:
        import wandb

        run_id = state.get("id") or wandb.util.generate_id()
        self.run = wandb.init(project=self.cfg.project or self.spec.name or "finetune", entity=self.cfg.entity,
                              name=self.folder.run_id, id=run_id, resume="allow", mode=self.cfg.mode,
                              dir=str(self.workdir), config=params(self.spec), reinit="finish_previous")
        print(f"[finetune] wandb: run {run_id} ({self.cfg.mode})", flush=True)
        return {"id": run_id, "project": self.run.project}

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def sync(self) -> None:
        pass

    def finish(self, state: str) -> None:
        run_dir = Path(self.run.dir).parent  # wandb/<offline-run-…>/files → the run's directory
        self.run.finish(exit_code=0 if state == "succeeded" else 1)
        if self.cfg.mode == "offline":  # the node's disk goes away: keep the run for `wandb sync`
            for path in sorted(p for p in run_dir.rglob("*") if p.is_file()):
                self.folder.store.upload_file(path, self.folder.key(f"wandb/{run_dir.name}/{path.relative_to(run_dir)}"))


class TensorBoardTracker:
    name = "tensorboard"

    def __init__(self, cfg: Any, spec: FineTuneSpec, folder: RunFolder, workdir: Path):
        self.folder = folder
        self.local = workdir / "tensorboard"

    def start(self, *, state: dict[str, Any], resumed_from: int | None) -> dict[str, Any]:
        from torch.utils.tensorboard import SummaryWriter

        self.local.mkdir(parents=True, exist_ok=True)
        # purge_step: TensorBoard drops the earlier files' events from this step on (logged after the checkpoint)
        self.writer = SummaryWriter(log_dir=str(self.local), purge_step=resumed_from + 1 if resumed_from else None)
        return {"logdir": self.folder.uri + "/tensorboard"}

    def log(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)

    def sync(self) -> None:
        self.writer.flush()
        for path in self.local.iterdir():
            if path.is_file():
                self.folder.store.upload_file(path, self.folder.key(f"tensorboard/{path.name}"))

    def finish(self, state: str) -> None:
        self.writer.close()
        self.sync()


TRACKERS: dict[str, type] = {"mlflow": MlflowTracker, "wandb": WandbTracker, "tensorboard": TensorBoardTracker}


class Trackers:
    """The spec's trackers behind one queue. Attached to the RunSink: every metrics row is logged, and the
    sink's close finishes the tracker runs with the run's final state."""

    SYNC_EVERY_S = 30.0  # TensorBoard's event files reach the store this often while training

    def __init__(self, spec: FineTuneSpec, folder: RunFolder):
        import tempfile

        self.folder = folder
        # Not the node's scratch folder: that is removed when training ends, before the sink closes the trackers.
        self.scratch = Path(tempfile.mkdtemp(prefix=f"finetune-trackers-{folder.run_id}-"))
        self.trackers: list[Any] = [TRACKERS[t.name](t, spec, folder, self.scratch) for t in spec.tracking]
        self._queue: queue.Queue[Any] = queue.Queue()
        self._failed: set[tuple[str, str]] = set()
        self._thread: threading.Thread | None = None

    def start(self, *, resumed_from: int | None) -> None:
        saved = self.folder.read_json(TRACKING) or {}
        started = []
        for tracker in self.trackers:
            try:
                saved[tracker.name] = tracker.start(state=saved.get(tracker.name) or {}, resumed_from=resumed_from)
                started.append(tracker)
            except Exception as exc:  # a tracker is an observer: the run goes on without it
                print(f"[finetune] warning: {tracker.name} tracking is off for this run: {exc}", flush=True)
        self.trackers = started
        self.folder.write_json(TRACKING, saved)  # before the first step: a restart finds the same tracker runs
        self._thread = threading.Thread(target=self._loop, name="trackers", daemon=True)
        self._thread.start()

    def log(self, row: dict[str, Any]) -> None:
        metrics = numeric(row)
        if metrics and "step" in row and self.trackers:
            self._queue.put(("log", metrics, int(row["step"])))

    def sync(self, timeout: float = 60) -> None:
        """Everything queued so far written (called before a checkpoint commits, so a resume finds it)."""
        done = threading.Event()
        self._queue.put(("sync", done))
        done.wait(timeout)

    def finish(self, state: str, timeout: float = 120) -> None:
        if self._thread is None:
            return
        self._queue.put(("finish", state))
        self._thread.join(timeout)
        self._thread = None
        import shutil

        shutil.rmtree(self.scratch, ignore_errors=True)

    def _call(self, tracker: Any, method: str, *args: Any) -> None:
        try:
            getattr(tracker, method)(*args)
        except Exception as exc:
            if (tracker.name, method) not in self._failed:  # once per kind of failure; later calls still try
                print(f"[finetune] warning: {tracker.name}: {method} failed ({exc}); training goes on", flush=True)
            self._failed.add((tracker.name, method))

    def _loop(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=self.SYNC_EVERY_S)
            except queue.Empty:
                item = ("sync", threading.Event())
            if item[0] == "log":
                for tracker in self.trackers:
                    self._call(tracker, "log", item[1], item[2])
            elif item[0] == "sync":
                for tracker in self.trackers:
                    self._call(tracker, "sync")
                item[1].set()
            else:
                for tracker in self.trackers:
                    self._call(tracker, "finish", item[1])
                return
