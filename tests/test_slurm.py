"""SkyPilot end to end on a REAL Slurm cluster started on localhost (tests/slurm_harness.py), with a real
S3 server (moto) for the store: 2-node DDP over gloo, cancel, teardown."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from helpers import ROOT, needs_service
from slurm_harness import SlurmHarness, missing_prerequisites

import sdk

pytestmark = [pytest.mark.slow, needs_service("the Slurm harness", ", ".join(missing_prerequisites()) or None)]


@pytest.fixture(scope="module")
def slurm():
    harness = SlurmHarness().start()
    try:
        yield harness
    finally:
        harness.stop()


def node_overrides(harness, bucket: str) -> list[str]:
    """The harness's nodes share this machine's Python (offline, no torch download) and a venv cache."""
    return [
        "resources.infra=slurm", f"output=s3://{bucket}/runs", "resources.cpus=1", "resources.memory=2",
        "env.HF_HUB_OFFLINE=1", f"env.FINETUNE_NODE_PYTHON={sys.executable}", "env.FINETUNE_VENV_SYSTEM_SITE=1",
        f"env.FINETUNE_VENV={harness.work}/venvs/finetune",
    ]


def cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sdk.cli", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env=os.environ.copy())


def clusters() -> list[str]:
    import sky

    return [record["name"] for record in sky.get(sky.status())]


def test_two_node_ddp_through_skypilot_on_slurm(slurm, s3_env, finetune_home, tmp_path):
    env, bucket = s3_env
    sets = [f"--set={o}" for o in [*node_overrides(slurm, bucket), "resources.nodes=2", "train.max_steps=10",
                                   "eval.num_samples=8", "resources.hourly_price=36"]]  # Slurm has no catalog
    began = time.time()
    launched = cli("launch", "recipes/tiny.yaml", *sets, "--detach")
    assert launched.returncode == 0, launched.stdout[-3000:] + launched.stderr[-3000:]
    run_id = next(line.split()[1] for line in launched.stdout.splitlines() if line.startswith("run "))
    run = sdk.get_run(run_id)
    assert run.backend == "skypilot" and run.info.cluster in clusters()
    final = run.wait(progress=False, timeout=300)
    assert final.state == "succeeded", run.logs()
    summary = run.summary()
    assert summary.world_size == 2 and summary.strategy == "auto" and summary.steps == 10
    assert "--nnodes 2" in run.logs() and "GLOO_SOCKET_IFNAME=lo" in run.logs()
    import boto3

    client = boto3.session.Session().client("s3", endpoint_url=env["AWS_ENDPOINT_URL"])
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=f"runs/{run_id}/")["Contents"]}
    assert {f"runs/{run_id}/{k}" for k in ("metrics.jsonl", "summary.json", "adapter/MANIFEST.json")} <= keys
    fetched = cli("fetch", run_id, str(tmp_path / "adapter"))
    assert fetched.returncode == 0 and (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    down = cli("down", run_id)
    ended = time.time()
    assert down.returncode == 0, down.stderr
    assert run.info.cluster not in clusters()
    # billed: both nodes, from SkyPilot's provisioning to the teardown, at the given price per node-hour
    cost = run.cost()
    assert cost.final and cost.hourly_usd == 36 and cost.price_source == "resources.hourly_price", cost
    assert [(p.name, p.nodes) for p in cost.parts] == [(run.info.cluster, 2)]
    assert cost.actual_usd == pytest.approx(36 * cost.billed_s / 3600, abs=0.001)
    assert ended - began - 60 <= cost.billed_s / 2 <= ended - began, (cost, ended - began)
    shown = cli("status", run_id)
    assert f"cost: ${cost.actual_usd:,.2f} (final" in shown.stdout, shown.stdout


def test_cancel_a_running_skypilot_job(slurm, s3_env, finetune_home):
    from sdk.core.recipes import load_recipe

    env, bucket = s3_env
    spec = load_recipe("tiny", [*node_overrides(slurm, bucket), "train.max_steps=100000"])
    run = sdk.submit(spec)
    try:
        deadline = time.time() + 300
        while (run.status().step or 0) < 3 and time.time() < deadline:
            assert not run.status().done, run.logs()
            time.sleep(2)
        start = time.time()
        assert run.cancel().state == "cancelled"
        took = time.time() - start
        assert took < 30
        import sky

        jobs = sky.get(sky.job_status(run.info.cluster, [run.info.job_id]))
        assert jobs[run.info.job_id].name in ("CANCELLED", "FAILED")  # SkyPilot stopped it, not only our flag
        assert run.folder.adapter_manifest() is None
    finally:
        run.down()


@pytest.fixture
def consolidated_jobs_controller():
    """Managed jobs with the controller inside the local API server (no controller VM to provision)."""
    from slurm_harness import start_skypilot, stop_skypilot

    config = os.path.expanduser("~/.sky/config.yaml")
    old = open(config).read() if os.path.exists(config) else None
    stop_skypilot()
    with open(config, "w") as handle:
        handle.write("jobs:\n  controller:\n    consolidation_mode: true\n")
    start_skypilot()  # with that config
    try:
        yield
    finally:
        stop_skypilot()  # its ~12 controller processes go with it
        if old is None:
            os.remove(config)
        else:
            with open(config, "w") as handle:
                handle.write(old)


def test_a_managed_job_reaches_running_and_is_cancelled(slurm, s3_env, finetune_home, consolidated_jobs_controller):
    """Managed jobs cannot finish offline (the controller checks internet reachability): RUNNING, then cancel."""
    from sdk.core.recipes import load_recipe

    env, bucket = s3_env
    spec = load_recipe("tiny", [*node_overrides(slurm, bucket), "resources.managed=true", "train.max_steps=100000"])
    run = sdk.submit(spec)
    assert run.info.managed is True
    backend = run._backend()
    deadline = time.time() + 420
    state = None
    while time.time() < deadline:
        state = backend._sky_state(run.info)
        if state in ("RUNNING",) or (state or "").startswith("FAILED"):
            break
        time.sleep(3)
    assert state == "RUNNING", (state, run.logs())
    # A managed job's controller tears the job's cluster down before SkyPilot says CANCELLED, which can outlast
    # cancel's own wait: until then the run honestly reads cancelling, and its status turns cancelled once it does.
    assert run.cancel().state in ("cancelling", "cancelled")
    deadline = time.time() + 180
    while run.status().state != "cancelled" and time.time() < deadline:
        time.sleep(3)
    assert run.status().state == "cancelled"
    deadline = time.time() + 180  # SkyPilot itself says CANCELLED once the controller has torn the cluster down
    while backend._sky_state(run.info) != "CANCELLED" and time.time() < deadline:
        time.sleep(3)
    assert backend._sky_state(run.info) == "CANCELLED"


@pytest.mark.timeout(900)
def test_a_sweep_runs_each_trial_on_a_cluster_of_its_own(slurm, s3_env, finetune_home, tmp_path):
    """Two trials through SkyPilot (one cluster each, launched one at a time as SkyPilot's launches go), the
    driver tears their clusters down (Slurm has no autodown), and a fresh process ranks them from S3. That
    trials overlap up to max_parallel is the driver's own logic, shown by the local sweep tests
    (test_sweep.py); here the trials are short."""
    import json

    from sdk.core.recipes import load_recipe

    env, bucket = s3_env
    spec = load_recipe("tiny", [*node_overrides(slurm, bucket), "resources.cpus=3", "train.max_steps=20",
                                "train.logging_steps=5", "eval.num_samples=8", "eval.before=false", "eval.generations=0"])
    handle = sdk.sweep(spec, grid={"train.lr": [1e-3, 5e-3]}, backend="skypilot", max_parallel=2)
    status = handle.wait(progress=False, timeout=800)
    assert status.state == "succeeded", ([(t.name, t.state, t.error) for t in handle.record().trials],
                                         [run.logs()[-2000:] for run in handle.runs()])
    runs = handle.runs()
    names = {run.info.cluster for run in runs}
    assert len(names) == 2 and all(run.backend == "skypilot" for run in runs)
    deadline = time.time() + 120
    while names & set(clusters()) and time.time() < deadline:
        time.sleep(2)
    assert not names & set(clusters())  # Slurm has no autodown: the driver took them down
    fresh = subprocess.run([sys.executable, "-m", "sdk.cli", "status", handle.uri, "--json"], capture_output=True, text=True,
                           timeout=120, cwd=ROOT, env={**os.environ, "FINETUNE_HOME": str(tmp_path / "fresh-home")})
    assert fresh.returncode == 0, fresh.stderr
    board = json.loads(fresh.stdout)["leaderboard"]
    assert len(board) == 2 and all(r["state"] == "succeeded" and r["metric"] is not None for r in board)
    assert board[0]["run_id"] == handle.best().id


@pytest.mark.timeout(2400)  # trains (<= 600 s), waits for the engine (<= 900 s), exports on a node (<= 600 s)
def test_a_served_run_answers_through_its_endpoint_on_slurm(slurm, s3_env, finetune_home, tmp_path):
    """`finetune serve` through SkyPilot onto Slurm, which opens no ports: the endpoint is the node's own
    address. The node fetches the adapter from S3 (manifest-verified), starts vLLM's CPU build (the engine
    environment this machine already has, named by FINETUNE_ENGINE_PYTHON) and answers token for token
    as `finetune generate` does; stopping the server takes the cluster down. Then the same run is exported to
    GGUF on a node (a SkyPilot task: merge, convert, llama.cpp's check), committed to S3 and fetched back
    verified; the export's cluster is gone when it returns."""
    from helpers import free_port

    from sdk.core.recipes import load_recipe
    from sdk.runs.tools import generate
    from sdk.serving.engine_env import engine_python

    env, bucket = s3_env
    spec = load_recipe("smollm2-news", [*node_overrides(slurm, bucket), "resources.cpus=2", "resources.memory=4",
                                        f"env.FINETUNE_ENGINE_PYTHON={engine_python()}", "train.max_steps=6",
                                        "data.max_samples=48", "eval.before=false", "eval.after=false", "eval.generations=0"])
    run = sdk.submit(spec, backend="local")  # trained here, into the S3 store the Slurm node reads
    assert run.wait(progress=False, timeout=600).state == "succeeded", run.logs()[-2000:]
    prompt = "Striker scores twice in the cup final"
    wanted = generate(run.uri, [prompt], max_new_tokens=12)["outputs"][0]["text"]

    server = sdk.serve([f"news={run.uri}"], backend="skypilot", port=free_port(), timeout=900)
    try:
        assert server.backend == "skypilot" and server.record.cluster in clusters()
        got = server.client.completions.create(model="news", prompt=server.prompt("news", prompt), max_tokens=12,
                                               temperature=0).choices[0].text
        assert got == wanted
        listed = cli("servers")
        assert server.id in listed.stdout, listed.stdout + listed.stderr
    finally:
        stopped = cli("servers", "--stop", server.id)
    assert stopped.returncode == 0, stopped.stderr
    assert server.record.cluster not in clusters()

    from sdk.exports.remote import export_cluster

    # six steps leave the model unsure between labels, so rounding flips some answers in either runtime: the check's
    # judgement of a confident model is test_export_gguf's; here the node's execution, commit and fetch are the test
    report = run.export("gguf", quants=["q8_0"], rows=20, tolerance=100, on="node")
    answered = report["check"]["files"]["q8_0"]  # llama.cpp loaded the node's file and answered every row
    assert answered["rows"] == 20 and 0 <= answered["llama_cpp"] <= 1 and answered["chat_template_carried"], report
    assert report["committed"] == f"{run.uri}/exports/gguf", report
    assert export_cluster(run.id, "gguf") not in clusters()
    fetched = cli("fetch", run.uri, str(tmp_path / "gguf"), "--export", "gguf")
    assert fetched.returncode == 0, fetched.stderr
    assert sorted(p.name for p in (tmp_path / "gguf").iterdir() if not p.name.startswith(".")) == [
        "MANIFEST.json", "export_report.json", "smollm2-news-q8_0.gguf"]


@pytest.mark.timeout(900)  # setup downloads liger-kernel and triton (~290 MB) into a new node environment
def test_a_node_installs_the_kernels_its_spec_asks_for(slurm, s3_env, finetune_home):
    """`train.liger_kernels` on a harness node: setup installs the `liger` extra (liger-kernel and triton), the
    node imports it, then refuses the kernel itself with the CPU message (Liger needs a GPU), not an ImportError."""
    from sdk.core.recipes import load_recipe

    env, bucket = s3_env
    spec = load_recipe("tiny", [*node_overrides(slurm, bucket), "train.liger_kernels=true", "train.max_steps=2"])
    run = sdk.submit(spec)
    try:
        final = run.wait(progress=False, timeout=540)
        logs = run.logs()
        assert final.state == "failed", logs
        assert "Liger's Triton kernels need a CUDA GPU" in (final.error or ""), (final.error, logs[-3000:])
        assert "cannot be imported" not in logs and "setup: installing finetune[train,liger]" in logs
    finally:
        run.down()
