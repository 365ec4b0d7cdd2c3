"""What a run costs: cost.json in the run folder (written by the client only) and the arithmetic the client and the
node share, so that `finetune status`, the summary and the node's max_cost stop agree on one number.

Billed time is per node, from provisioning to teardown: each part is one stretch a cluster (or the local process)
was up — a managed job's spot recovery is a new part. The price is per node-hour: the catalog's for what SkyPilot
launched, the user's `resources.hourly_price` where there is no catalog (Slurm, Kubernetes), 0 locally.
"""

from __future__ import annotations

import time

from pydantic import BaseModel, ConfigDict

COST_FILE = "cost.json"
# What stopping costs beyond the step under way: the checkpoint upload, the final status and the teardown, billed
# too (a tiny model on a busy 2-core machine took 2-4 s from the decision to its final status). The node stops when the
# spend after the next step plus this would cross max_cost, so the run ends at the limit, not past it.
STOP_MARGIN_S = {"local": 10.0, "skypilot": 420.0}  # a cluster: 2 min of teardown and the 5 idle min of autodown


class CostPart(BaseModel):
    """One stretch of billed time: a cluster from provisioning to teardown, or the local node process."""

    model_config = ConfigDict(extra="ignore")

    name: str
    start: float
    end: float | None = None  # None: still up (billing)
    nodes: int = 1

    def seconds(self, now: float) -> float:
        return max(0.0, (self.end if self.end is not None else now) - self.start) * self.nodes


class Billing(BaseModel):
    """cost.json: the estimate made at launch, the price and where it came from, and the billed parts."""

    model_config = ConfigDict(extra="ignore")

    backend: str
    estimate_usd: float | None = None
    hourly_usd: float | None = None  # per node-hour; None while unknown (a cloud price before the launch returns)
    price_source: str = ""
    max_cost: float | None = None
    parts: list[CostPart] = []
    final: bool = False  # every part has ended: the actual cost will not change
    updated: float = 0.0

    def billed_seconds(self, now: float | None = None) -> float:
        now = time.time() if now is None else now
        return sum(part.seconds(now) for part in self.parts)

    def spent(self, now: float | None = None) -> float | None:
        if self.hourly_usd is None:
            return None
        return self.hourly_usd * self.billed_seconds(now) / 3600

    def running_nodes(self) -> int:
        return sum(part.nodes for part in self.parts if part.end is None)

    def view(self, now: float | None = None) -> RunCost:
        now = time.time() if now is None else now
        spent = self.spent(now)
        parts = [PartCost(name=p.name, start=p.start, end=p.end, nodes=p.nodes, seconds=round(p.seconds(now), 1),
                          usd=None if self.hourly_usd is None else round(self.hourly_usd * p.seconds(now) / 3600, 6))
                 for p in self.parts]
        return RunCost(estimate_usd=self.estimate_usd, actual_usd=None if spent is None else round(spent, 6),
                       hourly_usd=self.hourly_usd, price_source=self.price_source,
                       billed_s=round(self.billed_seconds(now), 1), max_cost=self.max_cost, final=self.final,
                       parts=parts)


class BillingView(BaseModel):
    """A backend's word on a run's billing (Backend.billing): the price of what it launched, and each part."""

    hourly_usd: float | None = None
    price_source: str = ""
    parts: list[CostPart] = []
    final: bool = False  # the backend has nothing up for this run any more


class PartCost(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str
    start: float
    end: float | None
    nodes: int
    seconds: float
    usd: float | None


class RunCost(BaseModel):
    """summary.cost and `finetune status`'s cost: the estimate at launch, the actual spend (so far, until `final`)
    and its parts. actual_usd is None when the price is unknown."""

    model_config = ConfigDict(extra="ignore")

    estimate_usd: float | None = None
    actual_usd: float | None = None
    hourly_usd: float | None = None
    price_source: str = ""
    billed_s: float = 0.0
    max_cost: float | None = None
    final: bool = False
    parts: list[PartCost] = []

    def line(self) -> str:
        """One line for people: `$0.42 (final; 0.12 node-h at $3.50/node-h, catalog aws/us-east-1 ...; est $0.40)`."""
        if self.actual_usd is None:
            spent = f"price unknown ({self.price_source or 'no price'}), {self.billed_s / 3600:.2f} node-h billed"
        else:
            when = "final" if self.final else "so far"
            spent = (f"${self.actual_usd:,.2f} ({when}; {self.billed_s / 3600:.3f} node-h at "
                     f"${self.hourly_usd:,.2f}/node-h, {self.price_source})")
        estimate = "" if self.estimate_usd is None else f", estimated ${self.estimate_usd:,.2f}"
        limit = "" if self.max_cost is None else f", max_cost ${self.max_cost:,.2f}"
        return spent + estimate + limit


def over_limit(billing: Billing, *, now: float, ahead_s: float) -> str | None:
    """The reason to stop when the spend `ahead_s` seconds from now (the next step, the checkpoint and the teardown)
    would cross max_cost; None to go on (or when the price or the limit is unknown)."""
    if billing.max_cost is None or billing.hourly_usd is None:
        return None
    spent = billing.spent(now) or 0.0
    nodes = max(1, billing.running_nodes())
    projected = spent + billing.hourly_usd * nodes * ahead_s / 3600
    if projected < billing.max_cost:
        return None
    return (f"resources.max_cost: projected spend ${projected:,.4f} (${spent:,.4f} so far at "
            f"${billing.hourly_usd:,.2f}/node-h, {billing.price_source}) crosses the limit of ${billing.max_cost:,.2f}")
