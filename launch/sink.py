"""RunSink: the node's writer for status.json and metrics.jsonl, synced to the store every few seconds.

Writes happen on a background thread so a slow store never stalls a training step; `close()`
flushes one last time. Only rank 0 syncs (other ranks get a sink that keeps nothing).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from sdk.store.runfolder import LOG, RunFolder


class RunSink:
    def __init__(self, folder: RunFolder, *, interval: float = 3.0, log_file: str | None = None, enabled: bool = True):
        self.folder = folder
        self.interval = interval
        self.enabled = enabled
        self.log_file = Path(log_file) if log_file else None
        self.rows: list[dict[str, Any]] = []
        self.state = "running"
        self.extra: dict[str, Any] = {}
        self.cancel_requested = False
        self.stop_reason: str | None = None  # why the node stopped itself (resources.max_cost), kept in status.json
        self.budget: Any = None  # launch.budget.Budget on rank 0
        self.listeners: list[Any] = []  # experiment trackers (launch.tracking.Trackers): log(row), finish(state)
        self._dirty = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- called from training code

    def start(self, state: str = "running", **extra: Any) -> None:
        self.set_state(state, **extra)
        self.flush()
        if self.enabled:
            self._thread = threading.Thread(target=self._loop, name="run-sink", daemon=True)
            self._thread.start()

    def set_state(self, state: str, **extra: Any) -> None:
        with self._lock:
            self.state = state
            self.extra.update(extra)
            self._dirty = True

    def progress(self, *, step: int, total: int) -> None:
        with self._lock:
            self.extra.update(step=step, total_steps=total)

    def metric(self, row: dict[str, Any]) -> None:
        with self._lock:
            self.rows.append(row)
            self._dirty = True
        for listener in self.listeners:
            listener.log(row)

    def resume_from(self, step: int) -> None:
        """Keep the metrics rows up to the resumed step, so the curve continues instead of restarting."""
        if not self.enabled:
            return
        kept = [row for row in self.folder.metrics() if row.get("step", 0) <= step]
        with self._lock:
            self.rows[:0] = kept
            self.extra["resumed_from"] = step
            self._dirty = True

    def flush(self) -> None:
        if not self.enabled:
            return
        with self._lock:
            rows, state, extra = list(self.rows), self.state, dict(self.extra)
            self._dirty = False
        if rows:
            last_loss = next((r["loss"] for r in reversed(rows) if "loss" in r), None)
            extra["last_loss"] = last_loss
            self.folder.write_metrics(rows)
        # The interval beside the heartbeat: a reader tells a node that stopped from one between writes.
        self.folder.write_status(state, pid=os.getpid(), sync_interval=self.interval, **extra)
        self._sync_log()
        if not self.cancel_requested and state == "running" and self.folder.cancel_requested():
            self.cancel_requested = True
            self.stop_reason = self.stop_reason or self.folder.cancel_reason()
            print("[finetune] cancel requested in the run folder: stopping after the current step", flush=True)

    def _sync_log(self) -> None:
        # A local-dir store with the log already inside the run folder needs no copy.
        if self.log_file and self.log_file.is_file():
            target = Path(self.folder.store.url(self.folder.key(LOG)))
            if target.resolve() != self.log_file.resolve():
                self.folder.store.upload_file(self.log_file, self.folder.key(LOG))

    def close(self, state: str, **extra: Any) -> None:
        for listener in self.listeners:
            listener.finish(state)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.set_state(state, finished=time.time(), **extra)
        self.flush()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.flush()  # heartbeat even when nothing changed
            except Exception as exc:  # a store hiccup must not kill training; the next flush retries
                print(f"[finetune] warning: status sync failed: {exc}", flush=True)

    # -- cancellation

    def install_signal_handlers(self) -> None:
        def on_term(signum: int, frame: Any) -> None:
            self.cancel_requested = True
            print(f"[finetune] received signal {signum}: stopping after the current step", flush=True)

        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_term)
