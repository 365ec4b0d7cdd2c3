"""Sweeps: one spec fanned out over a grid of values, the trials run as ordinary runs, ranked by a metric.

A sweep is a folder in the output store, beside the runs: `sweeps/<sweep_id>/sweep.json` holds the grid,
the metric and every trial (its values, its full spec, and once launched its run id, URI, backend and
the backend's info). Any machine that can read the store can list, watch and rank a sweep; cancelling
writes `sweeps/<sweep_id>/CANCEL`, which the sweep's driver obeys.

The driver (`python -m sdk.sweeps.driver URI`) is a detached process on the machine that started the
sweep. It is the only writer of sweep.json after creation: it launches trials through `sdk.submit`,
at most `max_parallel` at once, records each, and stops when every trial is final or on CANCEL (then it
cancels the running trials and marks the unlaunched ones cancelled). A trial that fails does not stop it.

Modules: record (sweep.json, typed), metrics, grid, handle (`Sweep`), lease (who drives), driver (the loop).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sdk.core.errors import SpecError
from sdk.core.spec import DEFAULT_OUTPUT, FineTuneSpec
from sdk.store import open_store
from sdk.sweeps.driver import drive  # noqa: F401
from sdk.sweeps.grid import parse_grid, split_values, trial_specs  # noqa: F401
from sdk.sweeps.handle import Sweep, get_sweep, is_sweep_ref, list_sweeps  # noqa: F401
from sdk.sweeps.lease import LeaseLost, SweepBusy, _check_free, hand_over  # noqa: F401
from sdk.sweeps.metrics import check_metric, default_metric
from sdk.sweeps.record import (
    SWEEP_FILE,  # noqa: F401
    SWEEPS,  # noqa: F401
    SweepRecord,
    SweepStatus,  # noqa: F401
    Trial,
    new_sweep_id,
)

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
        key = (trial.data.model_dump_json(), trial.objective.name, trial.model.id, str(trial.eval.labels))
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
    if budget is not None:  # unpriced trials launch: the driver then holds the budget against their actual spend
        if total is not None and total > budget:
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
        goal=chosen.goal, metric_source=chosen.source, max_parallel=max_parallel, backend=backend_name,
        output=spec.output, estimate_usd=total, budget=budget,
        trials=[Trial(index=i, name=t.name or f"trial-{i}", values=values, spec=t.model_dump(mode="json"))
                for i, (values, t) in enumerate(trials)],
    )
    hand_over(handle, record)
    from sdk.machine import registry

    registry.record_sweep(sweep_id, handle.uri)
    return handle


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
