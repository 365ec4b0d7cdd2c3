"""Sweep records in the store: sweep.json (the grid, the metric, every trial, the driver's lease) and
the typed views of it (status, leaderboard rows)."""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, Field

from sdk.store.runfolder import TERMINAL, RunState, new_run_id

SWEEPS = "sweeps"
SWEEP_FILE = "sweep.json"
CANCEL_FILE = "CANCEL"
SweepState = Literal["pending", "running", "succeeded", "partial", "failed", "cancelled"]

FINAL = TERMINAL | {"lost"}  # trial states that will not change on their own: a lost node writes nothing more


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
    launch_attempts: int = 0  # launches that raised (a second try follows the first, sdk.sweeps.driver)
    next_launch: float | None = None  # a failed launch is tried again from then on
    cost_usd: float | None = None  # its actual spend (sdk.sweeps.spend), so far until cost_final
    cost_final: bool = False


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
    budget: float | None = None  # USD: no trial launches past it, running ones are cancelled at it (actual spend)
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
    cost_usd: float | None = None
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
