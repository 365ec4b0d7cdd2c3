"""What a run costs and the max_cost stop: the billing arithmetic, SkyPilot's record read as parts, a local run's
zero and its priced stop at the limit (checkpointed, cancelled with the reason), a plan refused before launch."""

from __future__ import annotations

import json

import pytest

import sdk
from sdk.backends.skypilot_billing import billing_view
from sdk.core.billing import Billing, CostPart, over_limit
from sdk.core.recipes import load_recipe
from sdk.runs.cost import check_max_cost

FAST = ["train.logging_steps=1", "data.max_samples=48", "eval.before=false", "eval.after=false"]


def test_spend_is_price_times_billed_node_time_and_a_part_still_up_keeps_billing():
    billing = Billing(backend="skypilot", hourly_usd=3.6, price_source="x", parts=[
        CostPart(name="c", start=0, end=1000, nodes=2),  # a first cluster, preempted
        CostPart(name="c-2", start=1200, end=None, nodes=2),  # its recovery, still up
    ])
    assert billing.billed_seconds(now=1500) == 2000 + 600
    assert billing.spent(now=1500) == pytest.approx(3.6 * 2600 / 3600)
    view = billing.view(now=1500)
    assert view.actual_usd == pytest.approx(2.6) and not view.final
    assert [p.usd for p in view.parts] == [pytest.approx(2.0), pytest.approx(0.6)]
    assert "so far" in view.line() and "$2.60" in view.line()


def test_the_limit_is_crossed_by_what_the_next_step_and_the_stop_will_cost():
    billing = Billing(backend="local", hourly_usd=3600.0, max_cost=10.0, price_source="p",
                      parts=[CostPart(name="n", start=0)])
    assert over_limit(billing, now=5, ahead_s=4) is None  # $5 spent, $9 after the next step and the checkpoint
    reason = over_limit(billing, now=5, ahead_s=5)
    assert reason.startswith("resources.max_cost: projected spend $10.0000") and "limit of $10.00" in reason
    assert over_limit(billing.model_copy(update={"hourly_usd": None}), now=99, ahead_s=0) is None  # no price: no stop


def test_skypilot_cost_report_rows_become_parts_with_the_catalog_or_the_given_price():
    from sdk.backends.skypilot_billing import run_clusters

    class Resources:
        def __init__(self, hourly):
            self.hourly = hourly

        def get_cost(self, seconds):
            return self.hourly * seconds / 3600

    managed = run_clusters("ft-tiny-20261205-110413-3aff", True, 17)  # SkyPilot's own name for a managed job's
    assert managed == {"ft-tiny-20261205-11041-9q-17"} and run_clusters("ft-a", False, 3) == {"ft-a"}
    name = next(iter(managed))
    rows = [  # newest first, as SkyPilot lists them: a recovery onto new VMs after a preemption
        {"name": name, "num_nodes": 2, "usage_intervals": [(500, None)], "resources": Resources(2.5),
         "cloud": "aws", "region": "us-east-1", "resources_str": "1x g6.xlarge (L4:1) [spot]"},
        {"name": name, "num_nodes": 2, "usage_intervals": [(100, 400)], "resources": Resources(2.0), "cloud": "aws"},
        {"name": "ft-tiny-20261205-11041-9q-170", "num_nodes": 1, "usage_intervals": [(0, 9)]},  # not ours
    ]
    start = Billing(backend="skypilot", parts=[CostPart(name="provisioning", start=90)])
    view = billing_view(rows, managed, start)
    assert [(p.start, p.end, p.nodes) for p in view.parts] == [(100, 400, 2), (500, None, 2)]
    assert view.hourly_usd == 2.5 and "aws/us-east-1" in view.price_source and not view.final
    # SkyPilot prices a Slurm node at 0.0: unknown (resources.hourly_price is needed), not free
    slurm = [{"name": "ft-run-1", "num_nodes": 1, "usage_intervals": [(100, 160)], "cloud": "Slurm",
              "resources": Resources(0.0), "total_cost": 0.0, "duration": 60}]
    view = billing_view(slurm, {"ft-run-1"}, start)
    assert view.hourly_usd is None and "resources.hourly_price" in view.price_source and view.final
    assert billing_view([], {"ft-run-1"}, start) is None  # nothing recorded yet: still provisioning


def test_a_plan_over_max_cost_is_refused_before_launch(run_cli):
    spec = load_recipe("llama8b", ["resources.hourly_price=10", "resources.max_cost=1", "train.max_steps=2000"])
    with pytest.raises(sdk.SpecError, match=r"resources.max_cost: the plan is estimated at \$\d+"):
        check_max_cost(spec, backend="skypilot")
    result = run_cli("launch", "llama8b", "--set", "resources.hourly_price=10", "--set", "resources.max_cost=1",
                     "--set", "train.max_steps=2000", "--dry-run")
    assert result.returncode == 2 and "resources.max_cost" in result.stderr and "Traceback" not in result.stderr
    result = run_cli("launch", "llama8b", "--set", "resources.hourly_price=10", "--set", "resources.max_cost=5000",
                     "--set", "train.max_steps=2000", "--dry-run")
    assert result.returncode == 0 and "estimated cost: $" in result.stdout


def test_a_priced_local_run_stops_at_max_cost_with_a_checkpoint(tmp_path, finetune_home, run_cli):
    # $0.25 a second: the limit comes 40 s after the launch, well into training (the model loads in ~8 s; on a busy
    # machine a load that outlasts the limit is stopped at its first step, past it), far before 100000 steps
    priced = sdk.submit(load_recipe("tiny", [*FAST, "train.max_steps=100000", "resources.hourly_price=900",
                                             "resources.max_cost=10", f"output={tmp_path / 'runs'}"]))
    final = priced.wait(progress=False, timeout=240)
    assert final.state == "cancelled", priced.logs()
    assert final.error.startswith("resources.max_cost: projected spend") and "with a checkpoint" in final.error
    step = int(final.error.rsplit("after step ", 1)[1].split()[0])
    assert priced.folder.adapter_manifest() is None  # cancelled: no adapter, as any cancel
    sealed = priced.folder.store.list(priced.folder.key(f"checkpoints/{step}"))
    assert any(key.endswith("MANIFEST.json") for key in sealed), sealed  # the checkpoint it stopped at, committed
    cost = priced.cost()
    assert cost.final and cost.hourly_usd == 900 and cost.price_source == "resources.hourly_price"
    first_step = min(row["time"] for row in priced.metrics() if "loss" in row)
    if (first_step - cost.parts[0].start) * 0.25 < 10 - 2.5:  # training began with room for the stop (10 s)
        assert 5 <= cost.actual_usd <= 10.0, cost  # at the limit, not past it: the stop is projected with its cost
    else:  # a busy machine's model load outlasted the limit: the node stops at its first step
        assert step <= 2, (step, cost)
    assert cost.actual_usd == pytest.approx(900 * cost.billed_s / 3600, abs=0.03)  # billed_s is rounded to 0.1 s
    shown = run_cli("status", priced.id, "--json")
    assert json.loads(shown.stdout)["cost"]["actual_usd"] == pytest.approx(cost.actual_usd, abs=0.01)


def test_the_client_cancels_a_run_over_max_cost_with_the_reason_and_the_node_keeps_it(tmp_path):
    """Where the node cannot stop itself (stuck provisioning, a slow setup), a waiting client's check cancels; the
    node that reads the marker ends with the client's reason as its error."""
    import time

    from launch.sink import RunSink
    from sdk.runs import Run
    from sdk.runs.cost import watch_max_cost
    from sdk.store import open_store
    from sdk.store.runfolder import RunFolder

    folder = RunFolder(open_store(str(tmp_path)), "r1")
    folder.write_json("spec.json", load_recipe("tiny", ["resources.max_cost=1"]).model_dump(mode="json"))
    folder.write_status("running")

    def spent_for(seconds: float) -> None:
        folder.write_json("cost.json", Billing(backend="skypilot", hourly_usd=36.0, max_cost=1.0, price_source="given",
                                               parts=[CostPart(name="c", start=time.time() - seconds)]).model_dump())

    spent_for(50)  # $0.50 so far
    assert watch_max_cost(Run(folder.uri)) > time.time() and not folder.cancel_requested()
    spent_for(150)  # $1.50
    watch_max_cost(Run(folder.uri))
    assert folder.status()["state"] == "cancelling"
    assert folder.cancel_reason().startswith("resources.max_cost: projected spend $1.5")
    assert folder.cancel_reason().endswith("cancelled by the client")
    sink = RunSink(folder, enabled=True)
    sink.flush()
    assert sink.cancel_requested and sink.stop_reason == folder.cancel_reason()
    folder.write_json("spec.json", load_recipe("tiny").model_dump(mode="json"))
    assert watch_max_cost(Run(folder.uri)) == float("inf")  # no limit: never looked at again


def test_a_finished_local_run_read_from_another_client_costs_what_it_cost(tmp_path):
    """A reader with only the store (another machine, another FINETUNE_HOME) finds the launch record and ends the
    node's part at its final status, instead of billing a finished run on."""
    import time

    from sdk.runs import Run
    from sdk.store import open_store
    from sdk.store.runfolder import LAUNCH, RunFolder

    folder = RunFolder(open_store(str(tmp_path)), "r2")
    folder.write_json(LAUNCH, {"backend": "local", "info": {"pid": 1, "log": "x", "host": "another-host"}})
    start = time.time() - 100
    folder.write_json("cost.json", Billing(backend="local", hourly_usd=36.0, price_source="resources.hourly_price",
                                           parts=[CostPart(name="r2", start=start)]).model_dump())
    folder.write_status("succeeded", finished=start + 20)
    cost = Run(folder.uri).cost()
    assert cost.final and cost.billed_s == 20.0 and cost.actual_usd == pytest.approx(0.2)
