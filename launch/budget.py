"""The node's watch on `resources.max_cost`: after each step it projects the spend to the end of the next step plus
the cost of stopping (the checkpoint and the teardown) and, once that would cross the limit, the run stops there with
a checkpoint and ends cancelled, naming the reason.

The price and the billed parts are the client's (cost.json, sdk.core.billing): it knows what SkyPilot launched and
when provisioning began. Read again every REFRESH_S (a cloud price lands once the launch returns). A run folder
without cost.json (a node started by hand) is billed from this process's start at the spec's hourly_price.
"""

from __future__ import annotations

import time
from typing import Any

from sdk.core.billing import COST_FILE, STOP_MARGIN_S, Billing, CostPart, RunCost, over_limit

REFRESH_S = 30.0


class Budget:
    def __init__(self, folder: Any, spec: Any, *, now: float | None = None):
        self.folder = folder
        self.spec = spec
        self.started = time.time() if now is None else now
        self.billing: Billing | None = None
        self.read_at = 0.0
        self.step_s: float | None = None  # the latest step's duration: what the next one will take
        self.step_at: float | None = None

    def current(self, now: float) -> Billing:
        if self.billing is None or now - self.read_at >= REFRESH_S:
            stored = self.folder.read_json(COST_FILE)
            self.read_at = now
            if stored:
                self.billing = Billing.model_validate(stored)
            elif self.billing is None:
                r = self.spec.resources
                source = "resources.hourly_price (no cost.json: billed from the node's start)"
                node = CostPart(name="node", start=self.started, nodes=r.nodes)
                self.billing = Billing(backend="local", hourly_usd=r.hourly_price, max_cost=r.max_cost,
                                       price_source=source, parts=[node])
        return self.billing

    def stop_reason(self, *, step: int, now: float | None = None) -> str | None:
        """Called when a step ends: the reason to stop now, or None."""
        now = time.time() if now is None else now
        if self.step_at is not None:
            self.step_s = now - self.step_at
        self.step_at = now
        if self.spec.resources.max_cost is None:
            return None
        billing = self.current(now)
        if billing.max_cost is None:
            billing = billing.model_copy(update={"max_cost": self.spec.resources.max_cost})
        ahead = (self.step_s or 0.0) * 2 + STOP_MARGIN_S.get(billing.backend, 0.0)  # the next step and the checkpoint
        reason = over_limit(billing, now=now, ahead_s=ahead)
        return None if reason is None else f"{reason}; stopped after step {step} with a checkpoint"

    def view(self, now: float | None = None) -> RunCost | None:
        """The spend as the node sees it when it ends (the client's view adds the teardown)."""
        now = time.time() if now is None else now
        try:
            return self.current(now).view(now)
        except Exception as exc:  # a store hiccup must not fail a run that trained
            print(f"[finetune] warning: cannot read {COST_FILE}: {exc}", flush=True)
            return None
