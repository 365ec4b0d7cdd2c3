"""A sweep's --budget against what its trials actually spend: each launched trial's cost (sdk.runs.cost: final once
its cluster is down, so far while it runs) kept in its record, summed; no trial launches once the spend plus its
estimate would cross the budget, and running trials are cancelled once the spend itself crosses it."""

from __future__ import annotations

import time
from typing import Any

from sdk.sweeps.record import SweepRecord, Trial

# How often running trials' spend is read: a SkyPilot cost report is one API call per trial; a local trial's is a file
# in the store, cheap enough to read as the driver polls (two trials started together cross a small budget fast).
REFRESH_S = {"local": 2.0, "skypilot": 30.0}


def spent_usd(record: SweepRecord) -> float:
    return round(sum(t.cost_usd or 0.0 for t in record.trials), 6)


class SpendWatch:
    def __init__(self, handle: Any):
        self.handle = handle
        self.read_at = 0.0

    def refresh(self, record: SweepRecord, *, force: bool = False) -> None:
        """Each launched trial's cost into its record (a final cost is not read again)."""
        now = time.time()
        if not force and now - self.read_at < REFRESH_S.get(record.backend, 30.0):
            return
        self.read_at = now
        for trial in record.trials:
            if not trial.uri or trial.cost_final:
                continue
            try:
                cost = self.handle._run(trial).cost()
            except Exception:  # an unreachable store or backend: the last known spend stands until the next read
                continue
            if cost is not None:
                trial.cost_usd = cost.actual_usd if cost.actual_usd is not None else cost.estimate_usd
                trial.cost_final = cost.final

    def over(self, record: SweepRecord) -> str | None:
        """The reason to cancel what runs: the spend so far has reached the budget."""
        if record.budget is None:
            return None
        self.refresh(record)
        spent = spent_usd(record)
        if spent < record.budget:
            return None
        return f"--budget: the trials have spent ${spent:,.2f}, reaching the budget of ${record.budget:,.2f}"

    def blocks(self, record: SweepRecord, trial: Trial) -> str | None:
        """The reason not to launch `trial`: the spend so far plus its estimate would cross the budget."""
        if record.budget is None:
            return None
        from sdk.core.plan import estimate_cost
        from sdk.core.spec import FineTuneSpec

        self.refresh(record, force=True)
        spent = spent_usd(record)
        estimate = estimate_cost(FineTuneSpec.model_validate(trial.spec), backend=record.backend).usd or 0.0
        if spent + estimate <= record.budget and spent < record.budget:
            return None
        return (f"not launched: --budget ${record.budget:,.2f}, the trials have spent ${spent:,.2f} and this one is "
                f"estimated at ${estimate:,.2f}")
