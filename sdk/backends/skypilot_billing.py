"""A SkyPilot run's billed time and price from SkyPilot's own record of its clusters (`sky.cost_report`): every
stretch each cluster was up, provisioning to teardown, setup included. A managed job's clusters are named
`<job name>-<job id>`, one per recovery onto new VMs, so each recovery is a part of its own."""

from __future__ import annotations

import re
from typing import Any

from sdk.core.billing import Billing, BillingView, CostPart


def clusters_of(rows: list[dict[str, Any]], cluster: str) -> list[dict[str, Any]]:
    pattern = re.compile(rf"^{re.escape(cluster)}(-\d+)?$")
    return [row for row in rows if pattern.match(str(row.get("name") or ""))]


def node_hourly(row: dict[str, Any]) -> float | None:
    """The catalog's price per node-hour of what the cluster launched (spot or on-demand, as launched)."""
    resources = row.get("resources")
    try:
        if resources is not None and hasattr(resources, "get_cost"):
            return float(resources.get_cost(3600))
    except Exception:  # a cloud with no catalog (Slurm, Kubernetes): the spec's hourly_price is needed
        pass
    duration, nodes, total = row.get("duration") or 0, row.get("num_nodes") or 1, row.get("total_cost")
    return float(total) * 3600 / duration / nodes if total and duration else None


def describe(row: dict[str, Any]) -> str:
    where = "/".join(str(row[k]) for k in ("cloud", "region") if row.get(k))
    what = row.get("resources_str") or row.get("accelerators") or ""
    return f"SkyPilot catalog: {where} {what}".strip()


def billing_view(rows: list[dict[str, Any]], cluster: str, billing: Billing) -> BillingView | None:
    """The parts and price SkyPilot records for `cluster` (None when it has none yet: still provisioning). A part
    of a cluster that is still up has no end: SkyPilot closes it at teardown."""
    mine = clusters_of(rows, cluster)
    if not mine:
        return None
    parts: list[CostPart] = []
    for row in mine:
        nodes = int(row.get("num_nodes") or 1)
        for start, end in row.get("usage_intervals") or []:
            parts.append(CostPart(name=str(row["name"]), start=float(start), end=None if end is None else float(end),
                                  nodes=nodes))
    parts.sort(key=lambda p: p.start)
    priced = next((node_hourly(row) for row in reversed(mine) if node_hourly(row) is not None), None)
    described = next((row for row in reversed(mine) if row.get("cloud")), mine[-1])  # a recovery's row may lack it
    source = describe(described) if priced is not None else \
        "no catalog price for this infra: set resources.hourly_price"
    return BillingView(hourly_usd=priced, price_source=source, parts=parts or billing.parts,
                       final=bool(parts) and all(p.end is not None for p in parts))
