"""Sweeps: one spec fanned out over a grid of values, the trials run as ordinary runs, ranked by a metric.

A sweep is a folder in the output store, beside the runs: `sweeps/<sweep_id>/sweep.json` holds the grid,
the metric and every trial (its values, its full spec, and once launched its run id, URI, backend and
the backend's info). Any machine that can read the store can list, watch and rank a sweep; cancelling
writes `sweeps/<sweep_id>/CANCEL`, which the sweep's driver obeys.

The driver (`python -m sdk.sweeps.driver URI`) is a detached process on the machine that started the
sweep. It is the only writer of sweep.json after creation: it launches trials through `sdk.submit`,
at most `max_parallel` at once, records each, and stops when every trial is final or on CANCEL (then it
cancels the running trials and marks the unlaunched ones cancelled). A trial that fails does not stop it.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from sdk.core.errors import LaunchError, RunNotFound, SpecError, StoreError
from sdk.core.spec import DEFAULT_OUTPUT, FineTuneSpec
from sdk.store import Store, open_store
from sdk.store.runfolder import TERMINAL, RunState, new_run_id

SWEEPS = "sweeps"
SWEEP_FILE = "sweep.json"
CANCEL_FILE = "CANCEL"
SweepState = Literal["pending", "running", "succeeded", "partial", "failed", "cancelled"]

FINAL = TERMINAL | {"lost"}  # trial states that will not change on their own: a lost node writes nothing more


# ------------------------------------------------------------------------------------------- metrics


class Metric(BaseModel):
    name: str
    goal: Literal["max", "min"]
    description: str
    source: Literal["summary", "logged"] = "summary"  # the run's summary, or the last value of a metrics.jsonl key


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric(name="label_accuracy", goal="max", description="label accuracy on held-out rows after training"),
    Metric(name="eval_loss", goal="min", description="loss on the eval split after training"),
    Metric(name="train_loss", goal="min", description="mean training loss"),
    Metric(name="last_loss", goal="min", description="the last logged training loss"),
)}


def default_metric(spec: FineTuneSpec) -> str:
    """Label accuracy after training when the spec names labels, else eval loss."""
    return "label_accuracy" if spec.eval.labels and spec.eval.after else "eval_loss"


def metric_value(name: str, summary: Any) -> float | None:
    if summary is None:
        return None
    if name == "label_accuracy":
        after = summary.label_accuracy.after
        return None if after is None else after.accuracy
    return getattr(summary, name)


def logged_value(name: str, rows: Sequence[Mapping[str, Any]]) -> float | None:
    """The last value a run logged under `name` in metrics.jsonl (e.g. DPO's rewards/accuracies)."""
    values = [row[name] for row in rows if isinstance(row.get(name), int | float) and not isinstance(row.get(name), bool)]
    return float(values[-1]) if values else None


def check_metric(text: str) -> Metric:
    """A summary metric by name, or any key the runs log in metrics.jsonl with its goal: `rewards/accuracies:max`."""
    key, sep, goal = text.rpartition(":")
    if sep and goal in ("max", "min") and key:
        if key in METRICS and METRICS[key].goal != goal:
            raise SpecError(f"--metric {text}: {key} is better when {'higher' if METRICS[key].goal == 'max' else 'lower'} "
                          f"(goal {METRICS[key].goal})")
        return METRICS[key] if key in METRICS else Metric(name=key, goal=goal, source="logged",
                                                          description=f"the last logged {key}")
    if sep and key:
        raise SpecError(f"--metric: {text!r}: the goal after ':' is max or min, not {goal!r}")
    if text not in METRICS:
        import difflib

        near = difflib.get_close_matches(text, METRICS, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise SpecError(f"--metric: {text!r} is not a summary metric (one of {', '.join(METRICS)}){hint}; to rank by "
                        f"a key the runs log in metrics.jsonl, give its goal: --metric {text}:max or {text}:min")
    return METRICS[text]


# ---------------------------------------------------------------------------------------------- grid


def split_values(text: str) -> list[str]:
    """'1e-4,3e-4' -> ['1e-4', '3e-4']; commas inside [] or {} belong to the value ('{name: lora, r: 8},{name: ia3}')."""
    parts, depth, current = [], 0, ""
    for char in text:
        if char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [p.strip() for p in parts]


def parse_grid(items: Sequence[str]) -> dict[str, list[Any]]:
    """`--grid key=v1,v2` options into {key: [values]}; each value is read as YAML, like `--set`."""
    import yaml

    grid: dict[str, list[Any]] = {}
    for text in items:
        key, sep, raw = text.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise SpecError(f"--grid {text}: write KEY=V1,V2 with a dotted spec key, e.g. train.lr=1e-4,3e-4")
        values = []
        for part in split_values(raw):
            if not part:
                raise SpecError(f"--grid {text}: empty value")
            try:
                values.append(_number(yaml.safe_load(part)))
            except yaml.YAMLError:
                values.append(part)
        if key in grid:
            raise SpecError(f"--grid {key}: given twice; list every value in one --grid")
        grid[key] = values
    return grid


def _number(value: Any) -> Any:
    """YAML 1.1 reads '1e-4' as a string; a grid of learning rates means numbers."""
    if isinstance(value, str):
        for kind in (int, float):
            try:
                return kind(value)
            except ValueError:
                pass
    return value


def _slug(key: str, value: Any) -> str:
    short = key.rsplit(".", 1)[-1]
    text = value.get("name", json.dumps(value)) if isinstance(value, dict) else f"{value:g}" if isinstance(value, float) else str(value)
    return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{short}_{text}").strip("_.-")


def trial_specs(spec: FineTuneSpec, grid: Mapping[str, Sequence[Any]]) -> list[tuple[dict[str, Any], FineTuneSpec]]:
    """Every combination of the grid applied to the spec, each validated: a key that is not a spec field
    or a value of the wrong type fails here, before anything launches, naming the field."""
    from sdk.core.recipes import apply_overrides
    from sdk.core.spec import check_new_spec, parse_spec

    if not grid:
        raise SpecError("--grid: give at least one KEY=V1,V2")
    for key, values in grid.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
            raise SpecError(f"--grid {key}: give a non-empty list of values")
    base = spec.model_dump(mode="json")
    base_name = spec.name or "sweep"
    trials = []
    for combo in itertools.product(*grid.values()):
        values = dict(zip(grid, combo, strict=True))
        data, origin = apply_overrides(base, [])
        for key, value in values.items():
            data, more = _set(data, key, value)
            origin.update(more)
        name = "-".join([base_name, *(_slug(k, v) for k, v in values.items())])[:40].rstrip("._-")
        data["name"] = name
        trial = parse_spec(data, locate=lambda path, origin=origin: _grid_origin(path, origin))
        check_new_spec(trial)  # each trial is a run about to start
        trials.append((values, trial))
    return trials


def _set(data: dict[str, Any], key: str, value: Any) -> tuple[dict[str, Any], dict[tuple, str]]:
    from sdk.core.recipes import apply_overrides

    # apply_overrides reads text; hand it the value as YAML so `--grid` and `sdk.sweep(grid=...)` agree
    return apply_overrides(data, [f"{key}={json.dumps(value)}"])


def _grid_origin(path: tuple, origin: dict[tuple, str]) -> str | None:
    for n in range(len(path), 0, -1):
        if tuple(path[:n]) in origin:
            return origin[tuple(path[:n])].replace("--set", "--grid")
    below = [text for key, text in origin.items() if key[: len(path)] == tuple(path)]  # an unknown section
    return below[0].replace("--set", "--grid") if below else None


# ---------------------------------------------------------------------------------------- records


class Trial(BaseModel):
    index: int
    name: str
    values: dict[str, Any]
    spec: dict[str, Any]
    run_id: str | None = None
    uri: str | None = None
    backend: str | None = None
    info: dict[str, Any] | None = None
    state: RunState = "pending"  # as last seen by the driver; a launched trial's own folder is the truth
    error: str | None = None
    launched: float | None = None
    released: bool = False  # its cluster torn down (or there was none to tear down)
    teardown_attempts: int = 0
    next_teardown: float | None = None  # a failed teardown is tried again from then on, until it succeeds
    adopted: float | None = None  # when a resumed driver found its run folder without a launch record


class Lease(BaseModel):
    """Who drives the sweep. The driver renews it while it lives; a second driver refuses a live lease and
    takes over an expired one (or one whose holder is a dead process on its own machine)."""

    token: str
    host: str
    pid: int
    started: int | None = None  # the holder's identity (sdk.machine.processes.identify): a reused PID is not the holder
    boot: str | None = None
    expires: float

    def live(self, now: float) -> bool:
        return now < self.expires

    def provably_dead(self) -> bool:
        """The holder is a process on this machine that has ended (no need to wait for the expiry)."""
        from sdk.machine.processes import is_same

        return self.host == socket.gethostname() and not is_same(self.pid, self.started, self.boot)

    def describe(self) -> str:
        return f"the driver {self.host}:{self.pid} (lease until {time.strftime('%H:%M:%S', time.localtime(self.expires))})"


class SweepRecord(BaseModel):
    """sweep.json."""

    sweep_id: str
    name: str
    created: float = Field(default_factory=time.time)
    grid: dict[str, list[Any]]
    metric: str
    goal: Literal["max", "min"]
    metric_source: Literal["summary", "logged"] = "summary"  # logged: the last value of that key in metrics.jsonl
    max_parallel: int
    backend: str
    output: str
    estimate_usd: float | None = None
    driver: dict[str, Any] = Field(default_factory=dict)  # host and PID of the driver process
    lease: Lease | None = None  # the driver that may write this record, until `expires`
    finished: bool = False
    trials: list[Trial]


class LeaderboardRow(BaseModel):
    rank: int | None
    trial: str
    values: dict[str, Any]
    state: RunState
    metric: float | None
    label_accuracy: float | None = None
    eval_loss: float | None = None
    train_loss: float | None = None
    runtime_s: float | None = None
    run_id: str | None = None
    error: str | None = None


class SweepStatus(BaseModel):
    state: SweepState
    counts: dict[str, int]
    trials: list[tuple[str, RunState, str | None]]  # (name, state, run id)
    driver: Literal["running", "finished", "stopped"] = "running"  # stopped: its lease expired with work left
    note: str | None = None

    @property
    def done(self) -> bool:
        return self.state in ("succeeded", "partial", "failed", "cancelled")


def sweep_state(states: Sequence[str], *, finished: bool) -> SweepState:
    if not states or all(s == "pending" for s in states) and not finished:
        return "pending"
    if not all(s in FINAL for s in states):
        return "running"
    if all(s == "succeeded" for s in states):
        return "succeeded"
    if "succeeded" in states:
        return "partial"
    return "cancelled" if "cancelled" in states else "failed"


def new_sweep_id(name: str) -> str:
    return new_run_id(f"sweep-{name}")


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
                runtime_s=summary.runtime_s.total_s if summary else None, run_id=trial.run_id, error=error))
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


# ---------------------------------------------------------------------------------------- functions


def total_usd(costs: Sequence[Any]) -> float | None:
    """What all trials would cost; None when any of them cannot be priced."""
    return None if any(c.usd is None for c in costs) else round(sum(c.usd for c in costs), 2)


def check_trial_data(trials: Sequence[FineTuneSpec]) -> None:
    """The data of every trial checked once per distinct data setting, before any trial launches
    (the trials then skip the check: a grid over lr must not read the data N times)."""
    from sdk.runs import preflight_data

    seen = set()
    for trial in trials:
        key = (trial.data.model_dump_json(), trial.objective, trial.model.id, str(trial.eval.labels))
        if key not in seen:
            seen.add(key)
            preflight_data(trial)


def plan_sweep(spec: FineTuneSpec, *, grid: Mapping[str, Sequence[Any]], backend: str = "auto",
               metric: str | None = None, budget: float | None = None) -> tuple[list[tuple[dict[str, Any], FineTuneSpec]], str, Any]:
    """The trials, the backend they run on and the cost estimate of all of them, checked against the budget."""
    from sdk.backends import choose_backend
    from sdk.core.plan import estimate_cost

    trials = trial_specs(spec, grid)
    check_metric(metric or default_metric(spec))
    name = choose_backend(spec, backend)
    check_trial_data([t for _, t in trials])
    costs = [estimate_cost(t, backend=name) for _, t in trials]
    total = total_usd(costs)
    if budget is not None:
        if total is None:
            why = next(c.note for c in costs if c.usd is None)
            raise SpecError(f"--budget: cannot price the trials ({why}); nothing launched")
        if total > budget:
            raise SpecError(f"--budget: {len(trials)} trials are estimated at ${total:,.2f}, over the budget of ${budget:,.2f}; "
                            "nothing launched")
    return trials, name, costs


def sweep(spec: FineTuneSpec, *, grid: Mapping[str, Sequence[Any]], backend: str = "auto", max_parallel: int = 2,
          metric: str | None = None, budget: float | None = None, name: str | None = None) -> Sweep:
    """Fan the spec out over the grid and start the sweep's driver; returns at once."""
    if max_parallel < 1:
        raise SpecError("--max-parallel: must be at least 1")
    trials, backend_name, costs = plan_sweep(spec, grid=grid, backend=backend, metric=metric, budget=budget)
    chosen = check_metric(metric or default_metric(spec))
    store = open_store(spec.output or DEFAULT_OUTPUT)
    sweep_id = new_sweep_id(name or spec.name or "sweep")
    handle = Sweep(store, sweep_id)
    total = total_usd(costs)
    record = SweepRecord(
        sweep_id=sweep_id, name=name or spec.name or "sweep", grid={k: list(v) for k, v in grid.items()}, metric=chosen.name,
        goal=chosen.goal, metric_source=chosen.source, max_parallel=max_parallel, backend=backend_name, output=spec.output, estimate_usd=total,
        trials=[Trial(index=i, name=t.name or f"trial-{i}", values=values, spec=t.model_dump(mode="json"))
                for i, (values, t) in enumerate(trials)],
    )
    hand_over(handle, record)
    from sdk.machine import registry

    registry.record_sweep(sweep_id, handle.uri)
    return handle


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


# ------------------------------------------------------------------------------------------- driver

LEASE_S = 120.0  # FINETUNE_SWEEP_LEASE_S: a driver renews its lease every third of this
LAUNCH_GRACE_S = 3600.0  # a run folder a resumed driver finds without a launch record: how long its node has to report
STORE_PATIENCE_S = 1800.0  # store errors in a row before a driver gives up (its lease then expires: resume it)
RETRY_DELAYS_S = (5, 15, 30, 60, 120, 300)  # teardowns and cancels that failed are tried again after these


class SweepBusy(LaunchError):
    """Another driver holds the sweep's lease."""


class LeaseLost(Exception):
    """Another driver took the sweep over while this one was stopped past its lease: stop without writing."""


def lease_seconds() -> float:
    return float(os.environ.get("FINETUNE_SWEEP_LEASE_S", LEASE_S))


def _new_lease(token: str, pid: int) -> Lease:
    from sdk.machine.processes import identify

    who = identify(pid)
    return Lease(token=token, host=socket.gethostname(), pid=pid, started=who["started"], boot=who["boot"],
                 expires=time.time() + lease_seconds())


def _check_free(handle: Sweep, record: SweepRecord, *, token: str | None = None) -> None:
    """SweepBusy unless the lease is ours (`token`), expired, or held by a process on this machine that ended."""
    lease = record.lease
    if lease is None or lease.token == token or not lease.live(time.time()) or lease.provably_dead():
        return
    raise SweepBusy(f"sweep {handle.id}: driven by {lease.describe()}; a second driver would launch its trials twice. "
                    "Resume it once that lease has expired")


def start_driver(handle: Sweep, *, token: str) -> int:
    """The detached driver process; it drives only under the lease that carries `token` (written before)."""
    from sdk.machine.registry import home

    log = home() / "sweeps" / f"{handle.id}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        process = subprocess.Popen([sys.executable, "-m", "sdk.sweeps.driver", handle.uri, "--token", token], stdout=out,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return process.pid


def hand_over(handle: Sweep, record: SweepRecord) -> int:
    """Start a driver and write its lease (its PID, a token only it was given): from then on a second `resume`
    refuses. The driver waits for that lease before it writes anything, so this write never lands over its own."""
    import secrets

    token = secrets.token_hex(8)
    record.lease = _new_lease(token, os.getpid())  # held by this process until the driver's own PID is in it
    handle._write(record)
    pid = start_driver(handle, token=token)
    try:
        record.lease = _new_lease(token, pid)
        handle._write(record)
    except BaseException:
        os.kill(pid, 15)  # it would wait for a lease naming it, then leave; do not leave it waiting
        raise
    return pid


def resume_sweep(id_or_uri: str, *, store: str | None = None) -> Sweep:
    """Start a new driver for a sweep whose driver is gone (killed, its machine asleep past the lease). It reads
    sweep.json, adopts every trial whose run id was recorded (launched or not), and goes on where the last one
    stopped; no trial is launched twice."""
    handle = get_sweep(id_or_uri, store=store)
    record = handle.record()
    if record.finished:
        raise SweepBusy(f"sweep {handle.id}: already finished ({handle.status().state}); nothing to resume")
    _check_free(handle, record)
    hand_over(handle, record)
    return handle


def drive(handle: Sweep, *, poll: float = 1.0, max_hours: float = 168.0, token: str | None = None,
          submit: Callable[..., Any] | None = None) -> SweepRecord:
    """Drive the sweep until every trial is final and released, or until CANCEL has been carried out.
    Refuses (SweepBusy) while another driver holds a live lease; stops without writing (LeaseLost) once
    another driver has taken over."""
    return _Driver(handle, poll=poll, max_hours=max_hours, token=token, submit=submit).run()


class _Driver:
    """Keeps up to max_parallel trials launching or running (launches run in threads: a SkyPilot launch blocks
    for its provisioning, and trials must not queue behind each other's), records each (its run id before the
    launch), tears down a finished trial's cluster where its infra leaves it up (retrying until it succeeds),
    obeys CANCEL, and ends when all are final. Only this driver writes sweep.json, and only under its lease."""

    def __init__(self, handle: Sweep, *, poll: float, max_hours: float, token: str | None, submit: Callable[..., Any] | None):
        import secrets

        self.handle, self.poll = handle, poll
        self.deadline = time.time() + max_hours * 3600
        self.max_hours = max_hours
        self.handed_over = token is not None
        self.token = token or secrets.token_hex(8)
        self.submit = submit or self._launch
        self.serial = threading.Lock()
        self.launching: dict[int, Any] = {}  # trial index -> Future of its launch
        self.retry_at: dict[int, float] = {}  # trial index -> earliest next try of a failed cancel
        self.cancel_tries: dict[int, int] = {}
        self.cancel_sent: set[int] = set()
        self.cancelling = False
        self.cancel_deadline = float("inf")

    # -- the lease

    def _acquire(self) -> SweepRecord:
        record = self.handle.record()
        if self.handed_over:  # started by hand_over: its starter writes a lease naming our PID right after starting us
            deadline = time.time() + 30
            while (record.lease is None or record.lease.token != self.token or record.lease.pid != os.getpid()) \
                    and time.time() < deadline:
                time.sleep(0.2)
                record = self.handle.record()
            if record.lease is None or record.lease.token != self.token:
                raise SweepBusy(f"sweep {self.handle.id}: the lease this driver was started for never came")
        if record.finished:
            return record
        _check_free(self.handle, record, token=self.token)
        record.lease = _new_lease(self.token, os.getpid())
        record.driver = {"host": record.lease.host, "pid": os.getpid(), "started": time.time()}
        self.handle._write(record)
        time.sleep(min(1.0, lease_seconds() / 10))  # two drivers taking over at the same moment: the later write wins
        if (self.handle.record().lease or record.lease).token != self.token:
            raise SweepBusy(f"sweep {self.handle.id}: another driver took it over at the same moment")
        return record

    def _write(self, record: SweepRecord) -> None:
        current = self.handle.record().lease
        if current is None or current.token != self.token:
            raise LeaseLost(f"sweep {self.handle.id}: taken over by "
                            f"{current.describe() if current else 'another driver'}; this driver stops")
        record.lease = current.model_copy(update={"expires": time.time() + lease_seconds()})
        self.handle._write(record)

    # -- launching

    def _launch(self, spec: FineTuneSpec, backend: str, run_id: str) -> Any:
        from sdk.backends import get_backend
        from sdk.runs import submit as submit_run

        impl = get_backend(backend)
        if impl.serial_launch(spec):
            with self.serial:  # one launch at a time onto this infra; the trials still run side by side
                self._still_ours()
                return submit_run(spec, backend=backend, check_data=False, run_id=run_id)
        self._still_ours()
        return submit_run(spec, backend=backend, check_data=False, run_id=run_id)

    def _still_ours(self) -> None:
        """Checked in the launch thread right before a launch: a driver that lost its lease launches nothing."""
        lease = self.handle.record().lease
        if lease is None or lease.token != self.token:
            raise LeaseLost(f"sweep {self.handle.id}: taken over; launch skipped")

    @staticmethod
    def _folder(trial: Trial) -> Any:
        from sdk.store.runfolder import RunFolder

        return RunFolder(open_store(FineTuneSpec.model_validate(trial.spec).output), trial.run_id)

    def _adopt(self, trial: Trial) -> bool:
        """A trial whose run id was recorded but whose launch did not come back to this driver: its run folder
        says whether it started. True when adopted (it will not be launched again)."""
        from sdk.store.runfolder import LAUNCH

        folder = self._folder(trial)
        if not folder.exists():
            return False
        trial.uri = folder.uri
        launch = folder.read_json(LAUNCH)
        if launch:
            trial.backend, trial.info = launch.get("backend"), launch.get("info")
        else:  # the launch was cut short before it recorded its backend: the node may still report
            trial.adopted = trial.adopted or time.time()
        return True

    def _collect(self, record: SweepRecord) -> None:
        for index, future in list(self.launching.items()):
            if not future.done():
                continue
            trial = record.trials[index]
            del self.launching[index]
            try:
                run = future.result()
            except Exception as exc:  # a trial that cannot start does not stop the sweep
                try:
                    if trial.run_id and self._adopt(trial):  # its folder exists: another driver launched it, or
                        continue                             # the launch failed after creating it (its status says)
                except (StoreError, RunNotFound):
                    continue  # the store is down: the next passes adopt or relaunch it (_heal)
                if isinstance(exc, LeaseLost):
                    continue
                trial.state, trial.error = "failed", f"launch failed: {exc}"
                continue
            trial.uri, trial.backend = run.uri, run.backend
            trial.info = run.info.model_dump(mode="json") if run.info is not None else None

    def _start_trials(self, record: SweepRecord, pool: Any) -> None:
        busy = len(self.launching) + sum(1 for t in record.trials if t.uri and t.state not in FINAL)
        for trial in record.trials:
            if busy >= record.max_parallel:
                return
            if trial.uri or trial.state != "pending" or trial.index in self.launching:
                continue
            before = trial.model_copy()
            # one id per trial of this sweep: two drivers that both launch it collide on its folder instead of
            # starting it twice (submit refuses an existing folder; the loser adopts it)
            trial.run_id = trial.run_id or f"{trial.name}-{record.sweep_id[-20:]}-t{trial.index}"
            trial.state, trial.launched = "provisioning", time.time()
            try:
                self._write(record)  # the run id is in the store before the launch: a resumed driver finds it
            except BaseException:
                record.trials[trial.index] = before  # not recorded: not launched (the next pass tries again)
                raise
            self.launching[trial.index] = pool.submit(self.submit, FineTuneSpec.model_validate(trial.spec), record.backend,
                                                      trial.run_id)
            busy += 1

    # -- watching

    def _heal(self, record: SweepRecord) -> None:
        """Trials marked provisioning that no launch of this driver carries (a launch whose outcome a store outage
        hid, a record left by a killed driver): adopt the run folder, or launch again under the same id."""
        from sdk.store.runfolder import LAUNCH

        for trial in record.trials:
            if trial.index in self.launching or trial.uri or trial.state != "provisioning":
                continue
            if trial.run_id is None:  # a record from before run ids were recorded first: it may have started
                trial.state, trial.error = "failed", "launch interrupted (the driver stopped during it)"
            elif not self._adopt(trial):
                trial.state = "pending"
        for trial in record.trials:  # adopted without its launch record: it may have been written since
            if trial.adopted and not trial.backend and trial.uri:
                launch = self._folder(trial).read_json(LAUNCH)
                if launch:
                    trial.backend, trial.info = launch.get("backend"), launch.get("info")

    def _refresh(self, record: SweepRecord) -> None:
        now = time.time()
        for trial, state, run in self.handle._trial_states(record):
            if not trial.uri:
                continue
            if trial.adopted and not trial.backend and state == "pending" and now - trial.adopted > LAUNCH_GRACE_S:
                run.folder.request_cancel()  # a node that still starts obeys it
                run.folder.write_status("failed", error=f"launch interrupted: the sweep driver stopped during the launch "
                                                        f"and no node reported within {LAUNCH_GRACE_S:.0f} s")
                state = "failed"
            trial.state = state
            if state in FINAL:
                self._release(trial, run, now)
            elif self.cancelling:
                self._cancel(trial, run, now)

    def _release(self, trial: Trial, run: Any, now: float) -> None:
        """A finished trial's cluster goes down where its infra does not take it down itself (Slurm); a teardown
        that fails is tried again, later and later, until it succeeds (a cluster left up keeps billing)."""
        if trial.released or run is None or (trial.next_teardown and now < trial.next_teardown):
            return
        backend = run._backend()
        if backend is not None and backend.left_up(run.info):
            try:
                backend.down(run.info)
            except Exception as exc:  # the error is kept in the trial; the next try is scheduled
                if "does not exist" in str(exc) or "not found" in str(exc).lower():
                    trial.released, trial.next_teardown = True, None  # already gone: nothing bills
                    return
                trial.teardown_attempts += 1
                delay = RETRY_DELAYS_S[min(trial.teardown_attempts, len(RETRY_DELAYS_S)) - 1]
                trial.next_teardown = now + delay
                trial.error = f"teardown failed ({trial.teardown_attempts}x, next try in {delay} s): {exc}"
                return
        if trial.teardown_attempts:
            trial.error = None
        trial.released, trial.next_teardown = True, None

    def _cancel(self, trial: Trial, run: Any, now: float) -> None:
        if run is None or trial.index in self.cancel_sent or now < self.retry_at.get(trial.index, 0.0):
            return
        try:
            if run.info is not None:
                run.cancel()
            else:  # adopted without its backend's record: the node obeys the marker
                run.folder.request_cancel()
            self.cancel_sent.add(trial.index)
        except Exception as exc:
            self.cancel_tries[trial.index] = tries = self.cancel_tries.get(trial.index, 0) + 1
            self.retry_at[trial.index] = now + RETRY_DELAYS_S[min(tries, len(RETRY_DELAYS_S)) - 1]
            trial.error = f"cancel failed ({tries}x): {exc}"

    def _begin_cancel(self, record: SweepRecord, reason: str) -> None:
        """Nothing more launches; launches under way finish (SkyPilot cannot be interrupted mid-provision) and are
        cancelled by the loop; trials never launched are cancelled; running ones are cancelled (retried)."""
        self.cancelling = True
        self.cancel_deadline = max(self.deadline, time.time() + 60)
        for future in self.launching.values():
            future.cancel()
        for trial in record.trials:
            if trial.index in self.launching and self.launching[trial.index].cancelled():
                del self.launching[trial.index]
                if trial.run_id and not self._adopt(trial):
                    trial.state, trial.error = "cancelled", reason
            elif not trial.uri and trial.index not in self.launching and trial.state in ("pending", "provisioning"):
                trial.state, trial.error = "cancelled", reason
        self._write(record)

    # -- the loop

    def _step(self, record: SweepRecord, pool: Any) -> bool:
        """One pass; True when the sweep is finished."""
        self._collect(record)
        self._heal(record)
        self._refresh(record)
        if not self.cancelling and (self.handle.cancel_requested() or time.time() > self.deadline):
            reason = "sweep cancelled" if self.handle.cancel_requested() else f"sweep driver stopped after {self.max_hours} h"
            self._begin_cancel(record, reason)
        if not self.cancelling:
            self._start_trials(record, pool)
        settled = all(t.state in FINAL and (t.released or not t.uri) for t in record.trials)
        if not self.launching and settled:
            record.finished = True
            self._write(record)
            return True
        return False

    def run(self) -> SweepRecord:
        from concurrent.futures import ThreadPoolExecutor

        record = self._acquire()
        if record.finished:
            return record
        self._heal(record)  # trials a previous driver recorded but did not see launched
        self._write(record)
        last_written = record.model_copy(deep=True)
        failing_since: float | None = None
        failures = 0
        with ThreadPoolExecutor(max_workers=record.max_parallel, thread_name_prefix="launch") as pool:
            try:
                while True:
                    try:
                        if self._step(record, pool):
                            return record
                        if self.cancelling and time.time() > self.cancel_deadline:  # left to `sweep resume` / cancel
                            self._write(record)
                            return record
                        lease = record.lease
                        due = lease is None or lease.expires - time.time() < lease_seconds() * 2 / 3
                        if due or record.model_dump(exclude={"lease"}) != last_written.model_dump(exclude={"lease"}):
                            self._write(record)  # one PUT per change or renewal, not per poll (S3 bills requests)
                            last_written = record.model_copy(deep=True)
                        failing_since, failures = None, 0
                    except (StoreError, RunNotFound) as exc:  # the store is down or throttling: keep what we know, retry
                        failing_since = failing_since or time.time()
                        failures += 1
                        if time.time() - failing_since > STORE_PATIENCE_S:
                            raise
                        delay = min(60.0, 2.0 ** failures)
                        print(f"sweep {self.handle.id}: store error ({failures}x, retrying in {delay:.0f} s): {exc}", flush=True)
                        time.sleep(delay)
                        continue
                    time.sleep(self.poll)
            finally:
                for future in self.launching.values():
                    future.cancel()
