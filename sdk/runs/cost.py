"""A run's cost on the client: the estimate and the price written into cost.json at launch, the billed parts asked
of the backend (SkyPilot's own record of each cluster from provisioning to teardown, spot recoveries included; the
local node process), and resources.max_cost enforced where the node cannot (provisioning, setup, a stuck node).

cost.json has one writer, the client (sdk.core.billing); the node only reads it (launch.budget)."""

from __future__ import annotations

import time
from typing import Any

from sdk.core.billing import COST_FILE, Billing, CostPart, RunCost, over_limit
from sdk.core.errors import SpecError
from sdk.core.spec import FineTuneSpec
from sdk.store.runfolder import LAUNCH, TERMINAL, RunFolder

GIVEN_PRICE = "resources.hourly_price"  # the price source of a price the spec gives
WATCH_S = 30.0  # how often a waiting client reads the spend (a SkyPilot cost report is one API call)


def check_max_cost(spec: FineTuneSpec, *, backend: str) -> Any:
    """The planner's estimate, refused when it already exceeds resources.max_cost (before anything launches)."""
    from sdk.core.plan import estimate_cost

    estimate = estimate_cost(spec, backend=backend)
    limit = spec.resources.max_cost
    if limit is not None and estimate.usd is not None and estimate.usd > limit:
        per = f"{estimate.hours:.2f} h" if estimate.hours is not None else "the run"
        raise SpecError(f"resources.max_cost: the plan is estimated at ${estimate.usd:,.2f} ({per} on "
                        f"{estimate.gpus or 1} x {estimate.gpu or 'this machine'}), over the limit of ${limit:,.2f}; "
                        "raise max_cost, shorten the run or pick a cheaper accelerator. Nothing launched")
    return estimate


def unpriced_limit(spec: FineTuneSpec, *, backend: str) -> str | None:
    """A warning when resources.max_cost can never stop the run: nothing prices it (this machine unless priced;
    Slurm, Kubernetes and SSH nodes, which have no catalog)."""
    r = spec.resources
    if r.max_cost is None or r.hourly_price is not None:
        return None
    infra = (r.infra or "").split("/")[0].lower()
    if backend == "local" or infra in ("slurm", "kubernetes", "k8s", "ssh"):
        where = "this machine costs $0" if backend == "local" else f"infra {infra} has no catalog price"
        return f"resources.max_cost: {where}, so the limit cannot stop this run; set resources.hourly_price"
    return None


def start_billing(spec: FineTuneSpec, folder: RunFolder, *, backend: str, estimate: Any) -> Billing:
    """cost.json at launch: billing starts now (provisioning begins with the launch call). A price the spec gives
    is used as is; locally it is 0 unless given; a cloud price comes from what SkyPilot launched (update_billing)."""
    r = spec.resources
    if r.hourly_price is not None:
        hourly, source = r.hourly_price, GIVEN_PRICE
    elif backend == "local":
        hourly, source = 0.0, "this machine (set resources.hourly_price to price it)"
    else:
        hourly, source = None, "SkyPilot's catalog, once the cluster is up"
    billing = Billing(backend=backend, estimate_usd=estimate.usd if estimate is not None else None, hourly_usd=hourly,
                      price_source=source, max_cost=r.max_cost, updated=time.time(),
                      parts=[CostPart(name=folder.run_id if backend == "local" else "provisioning", start=time.time(),
                                      nodes=r.nodes)])
    folder.write_json(COST_FILE, billing.model_dump(mode="json"))
    return billing


def read_billing(folder: RunFolder) -> Billing | None:
    return folder.read_model(COST_FILE, Billing)  # a wrong field: one StoreError line naming the file


def update_billing(folder: RunFolder, billing: Billing, view: Any) -> Billing:
    """Merge the backend's billing view (a price and its parts, or None) and finish when everything has ended."""
    if view is None:
        return billing
    given = billing.price_source == GIVEN_PRICE  # the user's price stands over the backend's
    hourly, source = (billing.hourly_usd, billing.price_source) if given else (view.hourly_usd, view.price_source)
    parts = view.parts or billing.parts
    done = folder.status().get("state") in TERMINAL and bool(parts) and all(p.end is not None for p in parts)
    updated = billing.model_copy(update={"hourly_usd": hourly, "price_source": source or billing.price_source,
                                         "parts": parts, "final": done and view.final, "updated": time.time()})
    if updated.model_dump(exclude={"updated"}) != billing.model_dump(exclude={"updated"}):
        folder.write_json(COST_FILE, updated.model_dump(mode="json"))
    return updated


def backend_of(folder: RunFolder) -> tuple[Any, Any]:
    """The backend and handle the launching client recorded (launch.json): a client elsewhere, reading only the
    store, asks the same backend for the billing (or finds the local node's final status)."""
    from sdk.runs import _from_entry  # a launch record has a registry row's shape

    try:
        run = _from_entry({**(folder.read_json(LAUNCH) or {}), "uri": folder.uri})
        return run._backend(), run.info
    except Exception:  # no launch record (yet), or a backend this client does not have
        return None, None


def run_cost(folder: RunFolder, backend: Any, info: Any) -> RunCost | None:
    """The run's cost now: final once every billed part has ended (the cluster is down); None for a run launched
    before costs were recorded."""
    billing = read_billing(folder)
    if billing is None:
        return None
    if not billing.final and (backend is None or info is None):
        backend, info = backend_of(folder)
    if not billing.final and backend is not None and info is not None and hasattr(backend, "billing"):
        try:
            billing = update_billing(folder, billing, backend.billing(folder, info, billing))
        except Exception as exc:  # a slow or gone API server: the stored view, said to be one
            view = billing.view()
            view.price_source += f" (not refreshed: {exc})"
            return view
    return billing.view()


def enforce_max_cost(folder: RunFolder, cost: RunCost | None) -> str | None:
    """The reason to stop a run whose spend so far already crosses resources.max_cost, else None."""
    if cost is None or cost.max_cost is None or cost.final or folder.status().get("state") in TERMINAL:
        return None
    billing = read_billing(folder)
    return over_limit(billing, now=time.time(), ahead_s=0.0) if billing is not None else None


def watch_max_cost(run: Any) -> float:
    """The client's half of max_cost, while it waits: a run whose spend has reached the limit where the node cannot
    stop it (a launch stuck provisioning, a slow setup, a node that stopped reading its folder) is cancelled through
    its backend with the reason. Returns when to look again (never, for a run without a limit)."""
    try:
        limit = run.spec().resources.max_cost
    except Exception:  # a folder without a readable spec has no limit to enforce
        limit = None
    if limit is None:
        return float("inf")
    reason = enforce_max_cost(run.folder, run.cost())
    if reason is not None and not run.folder.cancel_requested():
        run.cancel(reason=f"{reason}; cancelled by the client")
    return time.time() + WATCH_S
