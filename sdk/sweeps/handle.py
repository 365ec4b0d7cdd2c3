"""The `Sweep` handle: read, watch, cancel and rank a sweep from any machine that reads its store."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path
from typing import Any, Literal

from sdk.core.errors import LaunchError, RunNotFound
from sdk.core.spec import DEFAULT_OUTPUT
from sdk.store import Store, open_store
from sdk.store.runfolder import TERMINAL, RunState
from sdk.sweeps.lease import LeaseLost, SweepBusy, lease_seconds
from sdk.sweeps.metrics import check_metric, logged_value, metric_value
from sdk.sweeps.record import (
    CANCEL_FILE,
    SWEEP_FILE,
    SWEEPS,
    LeaderboardRow,
    SweepRecord,
    SweepStatus,
    Trial,
    sweep_state,
)

# ------------------------------------------------------------------------------------------- handle


class Sweep:
    """A handle on one sweep; everything it reports is read from the store."""

    def __init__(self, store: Store, sweep_id: str):
        self.store = store
        self.id = sweep_id
        self.uri = store.url(f"{SWEEPS}/{sweep_id}")

    def __repr__(self) -> str:
        return f"Sweep(id={self.id!r}, uri={self.uri!r})"

    @classmethod
    def from_uri(cls, uri: str) -> Sweep:
        root, _, sweep_id = uri.rstrip("/").rpartition(f"/{SWEEPS}/")
        if not root or not sweep_id:
            raise RunNotFound(f"{uri}: not a sweep folder (<store>/{SWEEPS}/<sweep_id>)")
        return cls(open_store(root), sweep_id)

    def _key(self, name: str) -> str:
        return f"{SWEEPS}/{self.id}/{name}"

    def record(self) -> SweepRecord:
        key = self._key(SWEEP_FILE)
        if not self.store.exists(key):
            raise RunNotFound(f"{self.uri}: no {SWEEP_FILE}")
        return SweepRecord.model_validate_json(self.store.get_bytes(key))

    def _write(self, record: SweepRecord) -> None:
        self.store.put_bytes(self._key(SWEEP_FILE), record.model_dump_json(indent=1).encode())

    def cancel_requested(self) -> bool:
        return self.store.exists(self._key(CANCEL_FILE))

    # -- trials

    def runs(self) -> list[Any]:
        """The launched trials as Run handles (with their backend's info: cancellable from here)."""
        return [self._run(t) for t in self.record().trials if t.uri]

    @staticmethod
    def _run(trial: Trial) -> Any:
        from sdk.backends import get_backend
        from sdk.runs import Run

        info = get_backend(trial.backend).Info.model_validate(trial.info) if trial.backend and trial.info else None
        return Run(trial.uri, backend=trial.backend if info else None, info=info)

    def _trial_states(self, record: SweepRecord) -> list[tuple[Trial, RunState, Any]]:
        """Each trial with its state read from its run folder (the backend's view merged in) and its run."""
        out = []
        for t in record.trials:
            if not t.uri:
                out.append((t, t.state, None))
                continue
            run = self._run(t)
            try:
                state = run.status().state
            except Exception:  # a backend that cannot answer: the store's word stands
                state = run.folder.status().get("state", t.state)
            out.append((t, state, run))
        return out

    def driver_state(self, record: SweepRecord) -> tuple[Literal["running", "finished", "stopped"], str | None]:
        """Whether a driver still works on the sweep: its lease is live (renewed every third of it)."""
        if record.finished:
            return "finished", None
        lease = record.lease
        now = time.time()
        if lease is None:  # a record written before leases: the driver's PID on this machine, if any
            driver = record.driver or {}
            if not driver.get("pid") or driver.get("host") != socket.gethostname():
                return "running", None  # no way to tell from here; the old behaviour
            from sdk.machine.processes import pid_alive

            if pid_alive(int(driver["pid"])):
                return "running", None
        elif not lease.provably_dead() and now < lease.expires + lease_seconds():  # a lapse of one renewal is tolerated
            return "running", None
        since = f" at {time.strftime('%H:%M:%S', time.localtime(lease.expires))}" if lease else ""
        return "stopped", (f"its driver stopped (lease expired{since}) with trials left; "
                           f"resume it: finetune sweep resume {self.id}")

    def status(self) -> SweepStatus:
        record = self.record()
        rows = self._trial_states(record)
        states = [s for _, s, _ in rows]
        counts = {s: states.count(s) for s in dict.fromkeys(states)}
        driver, note = self.driver_state(record)
        return SweepStatus(state=sweep_state(states, finished=record.finished), counts=counts,
                           trials=[(t.name, s, t.run_id) for t, s, _ in rows], driver=driver, note=note)

    def wait(self, *, progress: bool = True, timeout: float | None = None, poll: float = 2.0) -> SweepStatus:
        """Block until every trial is final and the driver has written its last record (clusters released);
        a progress line per change. Raises SweepBusy's sibling LaunchError when the driver stopped with work left."""
        deadline = None if timeout is None else time.time() + timeout
        last = None
        while True:
            status = self.status()
            if progress:
                line = f"{self.id}: {status.state} " + ", ".join(f"{n} {s}" for s, n in status.counts.items())
                if line != last:
                    print(line, file=sys.stderr, flush=True)
                    last = line
            if status.driver == "finished":
                return status
            if status.driver == "stopped":
                raise LaunchError(f"sweep {self.id}: {status.note}")
            if deadline is not None and time.time() > deadline:
                raise TimeoutError(f"sweep {self.id} still {status.state} after {timeout} s")
            time.sleep(poll)

    def cancel(self, *, timeout: float = 60.0) -> SweepStatus:
        """Every trial stops: CANCEL in the store (the driver stops launching and cancels what runs), and
        each running trial this machine can reach is cancelled now. A sweep whose driver is gone is driven
        to its end here. Waits until all are final."""
        self.store.put_bytes(self._key(CANCEL_FILE), str(time.time()).encode())
        record = self.record()
        if self.driver_state(record)[0] == "stopped":
            try:
                from sdk.sweeps.driver import drive

                drive(self, max_hours=timeout / 3600)
            except (SweepBusy, LeaseLost):
                pass  # a driver appeared meanwhile: it obeys CANCEL
            return self.status()
        for _trial, state, run in self._trial_states(record):
            if run is not None and state not in TERMINAL and run.info is not None:
                try:
                    run.cancel()
                except LaunchError:
                    pass  # started elsewhere: the driver there cancels it
        deadline = time.time() + timeout
        while time.time() < deadline:
            status = self.status()
            if status.done and status.driver != "running":
                return status
            time.sleep(0.5)
        return self.status()

    # -- results

    def _ranking(self, metric: str | None) -> SweepRecord:
        """The sweep's record, ranked by `metric` instead of its own when one is given (nothing stored changes)."""
        record = self.record()
        if metric is None:
            return record
        chosen = check_metric(metric)
        return record.model_copy(update={"metric": chosen.name, "goal": chosen.goal, "metric_source": chosen.source})

    def leaderboard(self, *, metric: str | None = None, as_frame: bool | None = None) -> Any:
        """One row per trial: its values, state and metrics; succeeded trials ranked by the metric first (the
        sweep's own, or `metric` to rank the same trials another way: `eval_loss`, `grad_norm:min`).
        A pandas DataFrame when pandas is installed (unless as_frame=False), else a list of rows."""
        record = self._ranking(metric)
        rows = []
        for trial, state, run in self._trial_states(record):
            summary = run.summary() if run is not None and state == "succeeded" else None
            error = trial.error
            if run is not None and state in ("failed", "cancelled"):
                error = run.folder.status().get("error") or error
            if record.metric_source == "logged":
                value = logged_value(record.metric, run.metrics()) if summary is not None else None
            else:
                value = metric_value(record.metric, summary)
            rows.append(LeaderboardRow(
                rank=None, trial=trial.name, values=trial.values, state=state, metric=value,
                label_accuracy=metric_value("label_accuracy", summary), eval_loss=summary.eval_loss if summary else None,
                train_loss=summary.train_loss if summary else None,
                runtime_s=summary.runtime_s.total_s if summary else None, cost_usd=trial.cost_usd,
                run_id=trial.run_id, error=error))
        sign = -1 if record.goal == "max" else 1
        # ties (equal accuracy on a small eval set) go to the lower eval loss
        rows.sort(key=lambda r: (r.metric is None, sign * (r.metric or 0.0), r.eval_loss if r.eval_loss is not None else float("inf"), r.trial))
        for i, row in enumerate(r for r in rows if r.metric is not None):
            row.rank = i + 1
        if as_frame is False:
            return rows
        try:
            import pandas as pd
        except ImportError:
            if as_frame:
                raise
            return rows
        return pd.DataFrame([{"rank": r.rank, "trial": r.trial, **r.values, "state": r.state, record.metric: r.metric,
                              **({} if record.metric == "eval_loss" else {"eval_loss": r.eval_loss}),
                              "train_loss": r.train_loss, "runtime_s": r.runtime_s, "run_id": r.run_id, "error": r.error}
                             for r in rows])

    def best(self, *, metric: str | None = None) -> Any:
        """The top trial's Run (by the sweep's metric, or by `metric`)."""
        rows = self.leaderboard(metric=metric, as_frame=False)
        if not rows or rows[0].metric is None:
            record = self._ranking(metric)
            logged = ""
            if record.metric_source == "logged":  # a key no trial logs is a typo more often than a slow trial
                done = [self._run(t) for t, state, _ in self._trial_states(record) if state == "succeeded"]
                keys = sorted({k for run in done for row in run.metrics() for k in row} - {"step", "time"})
                logged = f" (the succeeded trials log: {', '.join(keys)})" if keys else ""
            raise RunNotFound(f"sweep {self.id}: no trial has a {record.metric} yet{logged}")
        trial = next(t for t in self.record().trials if t.run_id == rows[0].run_id)
        return self._run(trial)

    def plot(self, path: str | Path | None = None) -> Any:
        """The trials' training-loss curves overlaid (matplotlib); saved to `path` when given."""
        import matplotlib

        if path is not None:
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 4))
        for trial in self.record().trials:
            if trial.uri:
                rows = [r for r in self._run(trial).metrics() if "loss" in r]
                if rows:
                    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows],
                            label=", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in trial.values.items()))
        ax.set_xlabel("step")
        ax.set_ylabel("train loss")
        ax.set_title(self.id)
        ax.legend(fontsize="small")
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=100)
            plt.close(fig)
        return fig


def is_sweep_ref(ref: str) -> bool:
    """Does `ref` name a sweep rather than a run? Sweep ids start `sweep-`; sweep folders live under sweeps/."""
    return ref.startswith("sweep-") or f"/{SWEEPS}/" in ref


def get_sweep(id_or_uri: str, *, store: str | None = None) -> Sweep:
    """A sweep by id (this machine's registry, then the given or default store) or by its folder URI."""
    from sdk.machine import registry

    if f"/{SWEEPS}/" in id_or_uri:
        handle = Sweep.from_uri(id_or_uri)
    else:
        uri = registry.lookup_sweep(id_or_uri)
        handle = Sweep.from_uri(uri) if uri and not store else Sweep(open_store(store or DEFAULT_OUTPUT), id_or_uri)
    handle.record()  # raises RunNotFound when absent
    return handle


def list_sweeps(*, store: str | None = None, limit: int = 50) -> list[Sweep]:
    """Sweeps in a store (read from the store alone), or the ones started on this machine."""
    from sdk.machine import registry

    if store is None:
        return [Sweep.from_uri(uri) for uri in registry.sweeps(limit)]
    root = open_store(store)
    ids = sorted({k.split("/")[1] for k in root.list(f"{SWEEPS}/") if k.endswith(f"/{SWEEP_FILE}")}, reverse=True)
    return [Sweep(root, i) for i in ids[:limit]]
