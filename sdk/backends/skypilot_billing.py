"""A SkyPilot run's billed time and price from SkyPilot's own record of its clusters (`sky.cost_report`): every
stretch each cluster was up, provisioning to teardown, setup included. A managed job's cluster is named by SkyPilot
(`generate_managed_job_cluster_name`: the task name shortened, hashed, and the job id); a recovery onto new VMs
launches it again, which SkyPilot records as another cluster of that name: each is a part of its own."""

from __future__ import annotations

from typing import Any

from sdk.core.billing import Billing, BillingView, CostPart


def run_clusters(cluster: str, managed: bool, job_id: int | None) -> set[str]:
    """The names SkyPilot gives a run's clusters: the task's own, or a managed job's (the name the jobs controller
    launches, the same for each recovery)."""
    if not managed or job_id is None:
        return {cluster}
    from sky.jobs.utils import generate_managed_job_cluster_name

    return {generate_managed_job_cluster_name(cluster, job_id)}


def clusters_of(rows: list[dict[str, Any]], names: set[str]) -> list[dict[str, Any]]:
    return [row for row in rows if str(row.get("name") or "") in names]


NO_CATALOG = ("slurm", "kubernetes", "ssh")  # SkyPilot prices their nodes at 0.0: unknown, not free


def node_hourly(row: dict[str, Any]) -> float | None:
    """The catalog's price per node-hour of what the cluster launched (spot or on-demand, as launched); None where
    there is no catalog (SkyPilot says 0.0 there) or no price."""
    if str(row.get("cloud") or "").lower() in NO_CATALOG:
        return None
    resources = row.get("resources")
    price = None
    try:
        if resources is not None and hasattr(resources, "get_cost"):
            price = float(resources.get_cost(3600))
    except Exception:  # a cloud with no catalog: the spec's hourly_price is needed
        price = None
    if price is None:
        duration, nodes, total = row.get("duration") or 0, row.get("num_nodes") or 1, row.get("total_cost")
        price = float(total) * 3600 / duration / nodes if total and duration else None
    return price or None


def describe(row: dict[str, Any]) -> str:
    where = "/".join(str(row[k]) for k in ("cloud", "region") if row.get(k))
    what = row.get("resources_str") or row.get("accelerators") or ""
    return f"SkyPilot catalog: {where} {what}".strip()


def billing_view(rows: list[dict[str, Any]], names: set[str], billing: Billing) -> BillingView | None:
    """The parts and price SkyPilot records for the run's clusters (`names`; None when it has none yet: still
    provisioning). A part of a cluster that is still up has no end: SkyPilot closes it at teardown. SkyPilot lists
    the newest cluster first: its price is the one quoted."""
    mine = clusters_of(rows, names)
    if not mine:
        return None
    parts: list[CostPart] = []
    for row in mine:
        nodes = int(row.get("num_nodes") or 1)
        for start, end in row.get("usage_intervals") or []:
            parts.append(CostPart(name=str(row["name"]), start=float(start), end=None if end is None else float(end),
                                  nodes=nodes))
    parts.sort(key=lambda p: p.start)
    priced = next((node_hourly(row) for row in mine if node_hourly(row) is not None), None)
    described = next((row for row in mine if row.get("cloud")), mine[0])  # a recovery's row may lack it
    source = describe(described) if priced is not None else \
        "no catalog price for this infra: set resources.hourly_price"
    return BillingView(hourly_usd=priced, price_source=source, parts=parts or billing.parts,
                       final=bool(parts) and all(p.end is not None for p in parts))
