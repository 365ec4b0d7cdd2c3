"""Sweeps: a grid over the tiny recipe runs as ordinary runs, at most N at once, ranked from the store."""

from __future__ import annotations

import json
import re
import time

import pytest

import sdk
from sdk.core.errors import RunNotFound, SpecError
from sdk.core.recipes import load_recipe
from sdk.machine.processes import pid_alive
from sdk.sweeps import check_metric, parse_grid, split_values, trial_specs

FAST = ["train.max_steps=16", "data.max_samples=64", "eval.num_samples=8", "eval.max_new_tokens=4", "eval.generations=0",
        "eval.before=false"]


def test_grid_values_are_yaml_and_commas_inside_brackets_stay():
    assert split_values("{name: lora, r: 8},{name: ia3}") == ["{name: lora, r: 8}", "{name: ia3}"]
    grid = parse_grid(["train.lr=1e-4,3e-4", "method={name: lora, r: 4},{name: ia3}", "data.packing=true,false"])
    assert grid == {"train.lr": [1e-4, 3e-4], "method": [{"name": "lora", "r": 4}, {"name": "ia3"}], "data.packing": [True, False]}
    trials = trial_specs(load_recipe("tiny"), grid)
    assert len(trials) == 8 and len({t.name for _, t in trials}) == 8
    assert trials[0][1].train.lr == 1e-4 and trials[-1][1].method.name == "ia3"


def test_a_metric_is_a_summary_name_or_a_logged_key_with_its_goal():
    assert check_metric("label_accuracy").goal == "max" and check_metric("eval_loss:min").source == "summary"
    for name, goal in (("exact_match", "max"), ("rouge_l", "max"), ("tool_call_match", "max"), ("judge_win_rate", "max"),
                       ("forgetting_ratio", "min")):  # evaluation's summary metrics
        assert (check_metric(name).goal, check_metric(name).source) == (goal, "summary")
    logged = check_metric("rewards/accuracies:max")  # what trl's DPO logs
    assert (logged.name, logged.goal, logged.source) == ("rewards/accuracies", "max", "logged")
    for bad, message in [("eval_los", "did you mean 'eval_loss'?"), ("grad_norm", "--metric grad_norm:max or grad_norm:min"),
                         ("grad_norm:lowest", "the goal after ':' is max or min"), ("eval_loss:max", "eval_loss is better when lower (goal min)")]:
        with pytest.raises(SpecError, match=re.escape(message)):
            check_metric(bad)


def test_a_bad_metric_is_refused_before_launch(run_cli, tmp_path, finetune_home):
    result = run_cli("sweep", "tiny", "--local", "--grid", "train.lr=1e-4,3e-4", "--metric", "grad_norm",
                     "--set", f"output={tmp_path / 'out'}", env={"FINETUNE_HOME": str(finetune_home)})
    assert result.returncode == 2 and "Traceback" not in result.stderr and "--metric" in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("grid,expected", [
    (["train.lrr=1e-4,3e-4"], ["--grid train.lrr=", "train.lrr", "did you mean 'lr'"]),
    (["trian.lr=1e-4"], ["--grid trian.lr=", "did you mean 'train'"]),
    (["method.r=four,8"], ["--grid method.r=", "method.r", "valid integer"]),
    (["method.name=lora,qlorra"], ["method", "qlorra", "did you mean 'qlora'"]),
    (["train.lr"], ["--grid train.lr", "KEY=V1,V2"]),
])
def test_a_bad_grid_is_refused_before_launch_naming_the_field(grid, expected, run_cli, tmp_path, finetune_home):
    args = ["sweep", "tiny", "--local", "--set", f"output={tmp_path / 'out'}"]
    for g in grid:
        args += ["--grid", g]
    result = run_cli(*args, env={"FINETUNE_HOME": str(finetune_home)})
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    for text in expected:
        assert text in result.stderr, (text, result.stderr)
    assert not (tmp_path / "out").exists()  # nothing launched, no sweep folder


def test_budget_is_checked_against_the_planner_before_anything_launches(run_cli, tmp_path, finetune_home):
    catalog = tmp_path / "fakehome" / ".sky" / "catalogs" / "v7" / "aws"
    catalog.mkdir(parents=True)
    catalog.joinpath("vms.csv").write_text("InstanceType,AcceleratorName,AcceleratorCount,Price,SpotPrice\n"
                                           "p5.xlarge,H100,1,4.00,1.50\n")
    env = {"FINETUNE_HOME": str(finetune_home), "HOME": str(tmp_path / "fakehome")}
    common = ["sweep", "tiny", "--grid", "train.lr=1e-4,3e-4", "--set", "resources.accelerators=H100:1", "--set",
              "train.max_steps=1000", "--set", f"output={tmp_path / 'out'}"]
    dry = run_cli(*common, "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr
    # 2 trials x (0.25 h start-up + the tiny model's seconds of compute) x $4/h
    usd = float(dry.stdout.rsplit("estimated cost $", 1)[1].split()[0])
    assert usd == pytest.approx(2.0, abs=0.02), dry.stdout
    refused = run_cli(*common, "--budget", "1.5", env=env)
    assert refused.returncode == 2 and "--budget" in refused.stderr and "over the budget of $1.50" in refused.stderr
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FINETUNE_HOME", str(root / "home"))
        # priced ($36 an hour of this machine): each trial's actual cost, and the sweep's total
        spec = load_recipe("tiny", [*FAST, f"output={root / 'store'}", "resources.hourly_price=36"])
        handle = sdk.sweep(spec, grid={"train.lr": [1e-3, 5e-3], "method.r": [4, 8]}, backend="local", max_parallel=2)
        status = handle.wait(progress=False, timeout=600)
        yield handle, status, root


def test_a_2x2_grid_runs_two_at_a_time_and_is_ranked(finished_sweep):
    handle, status, _ = finished_sweep
    assert status.state == "succeeded" and status.counts == {"succeeded": 4}
    board = handle.leaderboard(as_frame=False)
    assert len(board) == 4 and all(r.metric is not None and r.eval_loss is not None for r in board)
    assert [r.rank for r in board] == [1, 2, 3, 4]
    assert [r.metric for r in board] == sorted((r.metric for r in board), reverse=True)  # label accuracy: higher first
    assert {tuple(sorted(r.values.items())) for r in board} == {
        (("method.r", r), ("train.lr", lr)) for r in (4, 8) for lr in (1e-3, 5e-3)}
    assert handle.best().id == board[0].run_id
    frame = handle.leaderboard()
    assert list(frame["trial"]) == [r.trial for r in board] and "train.lr" in frame.columns
    # at most two trials trained at once, and two did: intervals from each run's own metrics
    spans = []
    for run in handle.runs():
        times = [r["time"] for r in run.metrics() if "time" in r]
        spans.append((min(times), max(times)))
    overlap = max(sum(1 for s, e in spans if s <= t <= e) for t, _ in spans)
    assert overlap == 2, spans
    record = handle.record()
    assert record.finished and not pid_alive(record.driver["pid"])
    # each trial's final cost is its run's, and the sweep's total is their sum
    costs = {run.id: run.cost() for run in handle.runs()}
    assert all(c.final and c.actual_usd > 0 for c in costs.values()), costs
    assert {t.run_id: t.cost_usd for t in record.trials} == {i: c.actual_usd for i, c in costs.items()}
    from sdk.sweeps.spend import spent_usd

    assert spent_usd(record) == pytest.approx(sum(c.actual_usd for c in costs.values()))
    assert {r.run_id: r.cost_usd for r in board} == {t.run_id: t.cost_usd for t in record.trials}


def test_a_sweep_is_read_back_from_the_store_by_a_fresh_process(finished_sweep, run_cli, tmp_path):
    handle, _, root = finished_sweep
    env = {"FINETUNE_HOME": str(tmp_path / "empty-home")}  # no registry: the store alone
    listed = run_cli("sweeps", "--store", str(root / "store"), env=env)
    assert listed.returncode == 0 and handle.id in listed.stdout
    shown = run_cli("status", handle.uri, "--json", env=env)
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    assert data["state"] == "succeeded" and [r["run_id"] for r in data["leaderboard"]] == \
        [r.run_id for r in handle.leaderboard(as_frame=False)]


def test_the_same_trials_rank_by_any_key_they_log(finished_sweep):
    handle, _, _ = finished_sweep
    board = handle.leaderboard(metric="grad_norm:min", as_frame=False)
    last = {run.id: [r["grad_norm"] for r in run.metrics() if "grad_norm" in r][-1] for run in handle.runs()}
    assert [r.metric for r in board] == sorted(last.values()) and all(last[r.run_id] == r.metric for r in board)
    assert handle.best(metric="grad_norm:min").id == board[0].run_id
    assert handle.record().metric == "label_accuracy"  # ranking another way changes nothing stored
    with pytest.raises(RunNotFound, match="log: .*grad_norm"):
        handle.best(metric="rewards/accuracies:max")  # an SFT run logs no DPO rewards: the keys it does log are named


def test_the_same_trials_rank_by_the_exact_match_of_their_answers(finished_sweep):
    """Generation metrics land in each trial's summary (greedy answers to the held-out rows, scored against their
    references), so a sweep ranks by them like by any summary metric: `--metric exact_match`."""
    handle, _, _ = finished_sweep
    board = handle.leaderboard(metric="exact_match", as_frame=False)
    exact = {run.id: run.summary().generation_metrics.after.means["exact_match"] for run in handle.runs()}
    assert [r.metric for r in board] == sorted(exact.values(), reverse=True) and all(exact[r.run_id] == r.metric for r in board)
    assert all(run.summary().generation_metrics.after.counts["exact_match"] == 8 for run in handle.runs())  # eval.num_samples


def test_plot_overlays_every_trial(finished_sweep, tmp_path):
    handle, _, _ = finished_sweep
    fig = handle.plot(tmp_path / "sweep.png")
    assert len(fig.axes[0].lines) == 4 and (tmp_path / "sweep.png").stat().st_size > 1000


def test_cancelling_a_running_sweep_stops_every_trial(tmp_path, finetune_home):
    spec = load_recipe("tiny", ["train.max_steps=2000", "data.max_samples=64", "eval.before=false",
                                f"output={tmp_path / 'store'}"])
    handle = sdk.sweep(spec, grid={"train.lr": [1e-3, 2e-3], "method.r": [4, 8]}, backend="local", max_parallel=2)
    deadline = time.time() + 120
    while time.time() < deadline:
        running = [run for run in handle.runs() if run.status().state == "running" and run.folder.metrics()]
        if len(running) == 2:
            break
        time.sleep(1)
    assert len(running) == 2, handle.status()
    t0 = time.time()
    status = handle.cancel(timeout=90)
    assert time.time() - t0 < 60
    assert status.state == "cancelled" and status.counts == {"cancelled": 4}, status
    record = handle.record()
    assert [t.run_id is None for t in record.trials].count(True) == 2  # the two never launched
    pids = [t.info["pid"] for t in record.trials if t.info] + [record.driver["pid"]]
    deadline = time.time() + 15
    while any(pid_alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.2)
    assert not any(pid_alive(p) for p in pids), pids
    for run in handle.runs():
        assert run.folder.adapter_manifest() is None


# ------------------------------------------------------------------------ a sweep that survives its driver


def _wait_for(what, predicate, timeout: float):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _runs_in_store(store_dir) -> dict[str, int]:
    """Run folders per trial name, counted in the store itself (spec.json of every folder)."""
    counts: dict[str, int] = {}
    for spec_file in sorted(store_dir.glob("*/spec.json")):
        name = json.loads(spec_file.read_text())["name"]
        counts[name] = counts.get(name, 0) + 1
    return counts


def test_a_stopped_or_killed_driver_is_resumed_and_every_trial_runs_exactly_once(tmp_path, finetune_home, run_cli,
                                                                                   monkeypatch):
    """SIGSTOP (a laptop asleep): a resume is refused while the lease lives, takes over once it expired, and the
    woken driver stands down without launching. Then kill -9 of the new driver and a second resume: every trial
    ends once, no run folder twice."""
    import os
    import signal

    monkeypatch.setenv("FINETUNE_SWEEP_LEASE_S", "6")
    store_dir = tmp_path / "store"
    spec = load_recipe("tiny", ["train.max_steps=30", "data.max_samples=32", "eval.before=false", "eval.after=false",
                                f"output={store_dir}"])
    handle = sdk.sweep(spec, grid={"train.lr": [1e-3, 2e-3, 3e-3, 4e-3]}, backend="local", max_parallel=2)
    first = _wait_for("two trials launched", lambda: handle.record().lease if sum(
        1 for t in handle.record().trials if t.uri) == 2 else None, 120)
    os.kill(first.pid, signal.SIGSTOP)
    try:
        refused = run_cli("sweep", "resume", handle.id, "--detach")
        assert refused.returncode == 2 and "driven by" in refused.stderr and str(first.pid) in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr
        _wait_for("the stopped driver's lease to expire", lambda: handle.status().driver == "stopped", 30)
        shown = run_cli("status", handle.id)
        assert f"finetune sweep resume {handle.id}" in shown.stdout, shown.stdout
        resumed = run_cli("sweep", "resume", handle.id, "--detach")
        assert resumed.returncode == 0, resumed.stderr
        second = _wait_for("the new driver", lambda: handle.record().lease if handle.record().lease.pid != first.pid else None, 30)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    _wait_for("the woken driver to stand down", lambda: not pid_alive(first.pid), 60)
    assert second.pid != first.pid and pid_alive(second.pid)
    _wait_for("a third trial launched by the new driver", lambda: sum(1 for t in handle.record().trials if t.run_id) >= 3, 180)
    os.kill(second.pid, signal.SIGKILL)
    _wait_for("the killed driver's lease to read stopped", lambda: handle.status().driver == "stopped", 30)
    done = run_cli("sweep", "resume", handle.id, timeout=600)
    assert done.returncode == 0, done.stderr + done.stdout
    status = handle.status()
    assert status.state == "succeeded" and status.driver == "finished", status
    record = handle.record()
    run_ids = [t.run_id for t in record.trials]
    assert len(set(run_ids)) == 4 and None not in run_ids
    assert _runs_in_store(store_dir) == {t.name: 1 for t in record.trials}  # every trial once, none launched twice
    assert sorted(p.parent.name for p in store_dir.glob("*/spec.json")) == sorted(run_ids)
    log = (finetune_home / "sweeps" / f"{handle.id}.log").read_text()
    assert "taken over by" in log, log  # the woken driver said why it stopped


def _record_with(store_dir, trials_spec, *, n: int):
    from sdk.store import open_store
    from sdk.sweeps import Sweep, SweepRecord, Trial

    handle = Sweep(open_store(str(store_dir)), "sweep-unit-20261130-000000-0000")
    record = SweepRecord(sweep_id=handle.id, name="unit", grid={"train.lr": list(range(n))}, metric="eval_loss", goal="min",
                         max_parallel=n, backend="local", output=str(store_dir),
                         trials=[Trial(index=i, name=f"t{i}", values={"train.lr": i},
                                       spec=trials_spec.model_copy(update={"name": f"t{i}"}).model_dump(mode="json"))
                                 for i in range(n)])
    handle._write(record)
    return handle, record


def test_the_budget_counts_what_finished_trials_spent_and_launches_nothing_past_it(tmp_path):
    """Trials priced by their cost.json (as a run's client writes it): $10, then $5 spent; with a budget of $12 the
    third trial is not launched (the spend has crossed it), naming the budget and the spend."""
    from sdk import sweeps
    from sdk.core.billing import COST_FILE, Billing, CostPart
    from sdk.runs import Run
    from sdk.store import open_store
    from sdk.store.runfolder import RunFolder

    store_dir = tmp_path / "store"
    handle, record = _record_with(store_dir, load_recipe("tiny", [f"output={store_dir}"]), n=4)
    record.max_parallel, record.budget = 1, 12.0
    handle._write(record)
    store, spends, launched = open_store(str(store_dir)), iter([10.0, 5.0, 1.0, 1.0]), []

    def submit(spec, backend, run_id):
        launched.append(run_id)
        folder = RunFolder(store, run_id)
        folder.write_json("spec.json", spec.model_dump(mode="json"))
        seconds = next(spends)  # at $3600 an hour: $1 a second
        part = CostPart(name=run_id, start=1000.0, end=1000.0 + seconds)
        folder.write_json(COST_FILE, Billing(backend="local", hourly_usd=3600.0, price_source="given", final=True,
                                             parts=[part]).model_dump(mode="json"))
        folder.write_status("succeeded")
        return Run(folder.uri)

    final = sweeps.drive(handle, poll=0.05, submit=submit)
    assert final.finished and len(launched) == 2
    assert [t.cost_usd for t in final.trials] == [10.0, 5.0, None, None]
    assert [t.state for t in final.trials] == ["succeeded", "succeeded", "cancelled", "cancelled"]
    assert final.trials[2].error == ("not launched: --budget $12.00, the trials have spent $15.00 and this one is "
                                     "estimated at $0.00")


def test_a_resumed_driver_adopts_what_the_killed_one_launched_and_launches_only_the_rest(tmp_path, monkeypatch):
    """The states a driver killed mid-launch leaves: a run id recorded with no folder (launched now, same id), a
    folder with its launch record (adopted with its backend's handle), a folder without one (adopted; failed once its
    node stays silent past the grace)."""
    from sdk import sweeps
    from sdk.runs import Run
    from sdk.store import open_store
    from sdk.store.runfolder import LAUNCH, RunFolder

    monkeypatch.setattr(sweeps.driver, "LAUNCH_GRACE_S", 0.0)
    store_dir = tmp_path / "store"
    spec = load_recipe("tiny", [f"output={store_dir}"])
    handle, record = _record_with(store_dir, spec, n=5)
    store = open_store(str(store_dir))
    record.trials[4].state = "provisioning"  # a record from before run ids were written first: it may have started
    for trial, (folder_state, launch) in zip(record.trials[:4], [(None, False), ("succeeded", True), ("pending", False),
                                                            (None, None)], strict=True):
        if launch is None:
            continue  # trial 3: never reached (pending, no run id)
        trial.run_id, trial.state = f"{trial.name}-run", "provisioning"
        if folder_state:
            folder = RunFolder(store, trial.run_id)
            folder.write_json("spec.json", trial.spec)
            folder.write_status(folder_state, backend="local")
            if launch:
                folder.write_json(LAUNCH, {"backend": "local", "info": {"pid": 1, "log": "x", "host": "elsewhere"}})
    handle._write(record)
    launched = []

    def submit(spec, backend, run_id):
        launched.append(run_id)
        folder = RunFolder(store, run_id)
        folder.write_json("spec.json", spec.model_dump(mode="json"))
        folder.write_status("succeeded")
        return Run(folder.uri)

    final = sweeps.drive(handle, poll=0.05, submit=submit)
    assert final.finished
    assert launched[0] == "t0-run" and len(launched) == 2 and launched[1].startswith("t3-")  # t1 and t2 adopted
    states = {t.name: t.state for t in final.trials}
    assert states == {"t0": "succeeded", "t1": "succeeded", "t2": "failed", "t3": "succeeded", "t4": "failed"}, states
    assert "launch interrupted" in final.trials[4].error
    assert final.trials[1].backend == "local" and final.trials[1].info["host"] == "elsewhere"
    assert "launch interrupted" in RunFolder(store, "t2-run").status()["error"]


def test_the_driver_rides_out_a_store_outage_and_retries_a_failed_teardown(tmp_path, monkeypatch, capsys):
    """The sweep's folder vanishes for a few seconds (a store that answers 'no such object'): the driver retries
    with backoff instead of dying. A teardown that fails is tried again until it succeeds; the sweep ends only then."""
    import shutil
    import threading

    from sdk import sweeps
    from sdk.runs import Run
    from sdk.store import open_store
    from sdk.store.runfolder import RunFolder

    monkeypatch.setattr(sweeps.driver, "RETRY_DELAYS_S", (0.2,))
    monkeypatch.setenv("FINETUNE_SWEEP_LEASE_S", "1.5")  # renewals fall inside the outage
    store_dir = tmp_path / "store"
    spec = load_recipe("tiny", [f"output={store_dir}"])
    handle, _ = _record_with(store_dir, spec, n=2)
    store = open_store(str(store_dir))
    downs = []

    class FlakyCluster:  # a backend whose clusters stay up after the job and whose teardown fails twice
        def left_up(self, info):
            return True

        def down(self, info):
            downs.append(time.time())
            if len(downs) <= 2:
                raise RuntimeError("cloud API: 503")

    release = threading.Event()

    def submit(spec, backend, run_id):
        folder = RunFolder(store, run_id)
        folder.write_json("spec.json", spec.model_dump(mode="json"))
        folder.write_status("running")

        def finish():
            release.wait(30)
            folder.write_status("succeeded")
        threading.Thread(target=finish, daemon=True).start()
        return Run(folder.uri)

    def run_of(trial):  # each trial's run as the driver sees it, on the flaky infra
        run = Run(trial.uri)
        run._backend = lambda: FlakyCluster()
        return run

    monkeypatch.setattr(handle, "_run", run_of)

    sweep_dir = store_dir / "sweeps" / handle.id
    result = {}
    driver = threading.Thread(target=lambda: result.update(record=sweeps.drive(handle, poll=0.1, submit=submit)))
    driver.start()
    _wait_for("both trials launched", lambda: sum(1 for t in handle.record().trials if t.uri) == 2, 30)
    shutil.move(sweep_dir, tmp_path / "away")  # the outage
    time.sleep(2.5)
    shutil.move(tmp_path / "away", sweep_dir)
    release.set()
    driver.join(60)
    assert not driver.is_alive()
    record = result["record"]
    assert record.finished and [t.state for t in record.trials] == ["succeeded", "succeeded"]
    assert all(t.released for t in record.trials) and len(downs) == 4  # two failures, then one success each
    assert sum(t.teardown_attempts for t in record.trials) == 2 and not any(t.error for t in record.trials)
    assert "store error (1x, retrying in 2 s)" in capsys.readouterr().out


def test_a_teardown_that_blocks_for_several_leases_keeps_the_driver_live(tmp_path, monkeypatch):
    """A SkyPilot teardown queued behind another trial's launch blocks a pass of the loop for minutes (CI saw it on
    Slurm): the driver's lease is renewed meanwhile, so nobody reads the sweep as stopped while its driver works."""
    import threading

    from sdk import sweeps
    from sdk.runs import Run
    from sdk.store import open_store
    from sdk.store.runfolder import RunFolder

    monkeypatch.setenv("FINETUNE_SWEEP_LEASE_S", "1.5")  # stopped reads after expiry + one lease: 3 s without renewal
    store_dir = tmp_path / "store"
    handle, _ = _record_with(store_dir, load_recipe("tiny", [f"output={store_dir}"]), n=1)
    store = open_store(str(store_dir))
    in_teardown = threading.Event()

    class SlowTeardown:
        def left_up(self, info):
            return True

        def down(self, info):
            in_teardown.set()
            time.sleep(6)

    def submit(spec, backend, run_id):
        folder = RunFolder(store, run_id)
        folder.write_json("spec.json", spec.model_dump(mode="json"))
        folder.write_status("succeeded")
        return Run(folder.uri)

    def run_of(trial):
        run = Run(trial.uri)
        run._backend = lambda: SlowTeardown()
        return run

    monkeypatch.setattr(handle, "_run", run_of)
    result = {}
    driver = threading.Thread(target=lambda: result.update(record=sweeps.drive(handle, poll=0.1, submit=submit)))
    driver.start()
    assert in_teardown.wait(30)
    seen = []
    while driver.is_alive() and len(seen) < 50:
        seen.append(handle.status().driver)
        time.sleep(0.1)
    driver.join(30)
    assert result["record"].finished and len(seen) > 40 and set(seen) <= {"running", "finished"}, seen


@pytest.mark.slow
def test_a_kto_sweep_on_smollm2_logs_rewards_and_ranks_by_them(tmp_path, finetune_home):
    """Binary feedback (objective kto) trains the real SmolLM2-135M-Instruct through its own chat template; trl's
    KTO rewards land in metrics.jsonl and rank the sweep's trials."""
    from pathlib import Path

    feedback = Path(__file__).parent / "data" / "formats" / "feedback_messages.jsonl"
    spec = load_recipe("smollm2-news", [
        "objective=kto", f"data.source={feedback}", f"data.eval_source={feedback}", "data.template=auto",
        "data.max_samples=null", "train.max_steps=2", "train.batch_size=2", "train.logging_steps=1", "eval.before=false",
        "eval.after=false", "eval.generations=0", f"output={tmp_path / 'store'}", "env.OMP_NUM_THREADS=1"])
    handle = sdk.sweep(spec, grid={"train.lr": [1e-4, 1e-3]}, backend="local", max_parallel=2, metric="eval_rewards/margins")
    status = handle.wait(progress=False, timeout=900)
    assert status.state == "succeeded", [str(run.logs())[-2000:] for run in handle.runs()]
    for run in handle.runs():
        rows = run.metrics()
        assert any("rewards/chosen" in r and "rewards/rejected" in r for r in rows), rows
        assert "kto: 2 desirable and 2 undesirable rows, weighted 1 and 1" in str(run.logs())
    board = handle.leaderboard(as_frame=False)
    margins = {run.id: [r["eval_rewards/margins"] for r in run.metrics() if "eval_rewards/margins" in r][-1]
               for run in handle.runs()}
    assert [r.metric for r in board] == sorted(margins.values(), reverse=True)
    assert handle.best().id == board[0].run_id


@pytest.mark.slow
@pytest.mark.parametrize(("recipe", "objective", "metric", "key"), [
    ("tiny", "{name: grpo, rewards: [exact_match, {type: token_f1, weight: 0.5}], num_generations: 4, "
             "max_completion_length: 6}", "reward", "reward"),
    ("tiny-dpo", "{name: dpo, loss_type: sigmoid}", "rewards/accuracies", "rewards/accuracies"),
], ids=["grpo-by-mean-reward", "dpo-by-the-readme-metric"])
def test_an_objective_sweep_ranks_by_the_objectives_own_metric(tmp_path, finetune_home, recipe, objective, metric, key):
    """The names docs/sweeps.md gives (`--metric reward`, `--metric rewards/accuracies`) are the keys the node logs."""
    spec = load_recipe(recipe, [f"objective={objective}", "train.max_steps=3", "train.batch_size=8",
                                "train.logging_steps=1", "data.max_samples=32", "eval.num_samples=4",
                                "eval.max_new_tokens=4", f"output={tmp_path / 'store'}"])
    handle = sdk.sweep(spec, grid={"train.lr": [1e-3, 5e-3]}, backend="local", max_parallel=1, metric=metric)
    status = handle.wait(progress=False, timeout=900)
    assert status.state == "succeeded", [str(run.logs())[-2000:] for run in handle.runs()]
    last = {run.id: [r[key] for r in run.metrics() if key in r][-1] for run in handle.runs()}
    board = handle.leaderboard(as_frame=False)
    assert [r.metric for r in board] == sorted(last.values(), reverse=True) and handle.best().id == board[0].run_id


def test_a_launch_that_raises_is_tried_once_more_then_fails_the_trial(tmp_path, monkeypatch):
    """A SkyPilot API server still starting, a provisioning hiccup: the trial's launch is tried again under the same
    run id; a launch that raises twice fails the trial with both tries counted, and the sweep goes on."""
    from sdk import sweeps
    from sdk.runs import Run
    from sdk.store import open_store
    from sdk.store.runfolder import RunFolder

    monkeypatch.setattr(sweeps.driver, "LAUNCH_RETRY_S", 0.0)
    store_dir = tmp_path / "store"
    handle, _ = _record_with(store_dir, load_recipe("tiny", [f"output={store_dir}"]), n=2)
    store = open_store(str(store_dir))
    calls: list[str] = []

    def submit(spec, backend, run_id):
        calls.append(run_id)
        if run_id.startswith("t1-") or calls.count(run_id) == 1:  # t0 fails once, t1 always
            raise RuntimeError("Failed to connect to SkyPilot API server")
        folder = RunFolder(store, run_id)
        folder.write_json("spec.json", spec.model_dump(mode="json"))
        folder.write_status("succeeded")
        return Run(folder.uri)

    final = sweeps.drive(handle, poll=0.05, submit=submit)
    t0, t1 = final.trials
    assert t0.state == "succeeded" and t0.error is None and calls.count(t0.run_id) == 2
    assert t1.state == "failed" and calls.count(t1.run_id) == 2
    assert t1.error == "launch failed (2 tries): Failed to connect to SkyPilot API server"
