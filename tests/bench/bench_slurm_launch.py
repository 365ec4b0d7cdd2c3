"""Spec -> job RUNNING on the localhost Slurm harness, as a ratio of SkyPilot's own `sky launch` of `echo`
on the same cluster (goal <= 1.1).

Both sides launch a fresh 1-node SkyPilot cluster on the harness and are timed from the call until
SkyPilot reports the job RUNNING: `sky.launch` of a task whose run is `echo`, and `sdk.submit` of the
tiny recipe (wheel build cached, file mounts, setup with a warm venv cache). One warm-up launch of
each comes first (it pays SkyPilot's runtime install into the shared cache and our venv), then
`--repeats` alternating pairs.

Run: python tests/bench/bench_slurm_launch.py [--repeats 2]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import free_port, wait_for_port  # noqa: E402
from slurm_harness import SlurmHarness, missing_prerequisites  # noqa: E402


def wait_running(cluster: str, job_id: int, timeout: float = 300) -> None:
    import sky

    deadline = time.time() + timeout
    while time.time() < deadline:
        status = sky.get(sky.job_status(cluster, [job_id])).get(job_id)
        name = getattr(status, "name", str(status))
        if name in ("RUNNING", "SUCCEEDED"):
            return
        if name and name.startswith("FAILED"):
            raise RuntimeError(f"{cluster} job {job_id}: {name}")
        time.sleep(0.25)
    raise TimeoutError(f"{cluster} job {job_id} not running after {timeout} s")


def sky_echo(index: int) -> tuple[float, str]:
    import sky

    task = sky.Task(name="echo", run="echo hello; sleep 5")
    task.set_resources(sky.Resources(infra="slurm", cpus=1, memory=2))
    cluster = f"bench-echo-{index}"
    start = time.time()
    job_id, _ = sky.stream_and_get(sky.launch(task, cluster_name=cluster), output_stream=open(os.devnull, "w"))
    wait_running(cluster, job_id)
    return time.time() - start, cluster


def finetune_submit(harness: SlurmHarness, bucket: str) -> tuple[float, str]:
    import sdk
    from sdk.core.recipes import load_recipe

    spec = load_recipe("tiny", [
        "resources.infra=slurm", f"output=s3://{bucket}/runs", "resources.cpus=1", "resources.memory=2",
        "env.HF_HUB_OFFLINE=1", f"env.FINETUNE_NODE_PYTHON={sys.executable}", "env.FINETUNE_VENV_SYSTEM_SITE=1",
        f"env.FINETUNE_VENV={harness.work}/venvs/finetune",
    ])
    start = time.time()
    run = sdk.submit(spec, backend="skypilot")
    wait_running(run.info.cluster, run.info.job_id)
    return time.time() - start, run.info.cluster


def down(cluster: str) -> None:
    import sky

    sky.get(sky.down(cluster))


@contextlib.contextmanager
def harness_with_s3(bucket: str) -> Iterator[SlurmHarness]:
    """The Slurm harness started, moto serving `bucket` on 127.0.0.1 (the process's AWS env points there);
    both stopped, by PID, at the end."""
    missing = missing_prerequisites()
    if missing:
        sys.exit(f"needs: {missing}")
    port = free_port()
    moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    harness = SlurmHarness()
    try:
        wait_for_port(port)
        os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                          AWS_DEFAULT_REGION="us-east-1", FINETUNE_HOME=str(harness.work / "home"))
        import boto3

        boto3.session.Session().client("s3").create_bucket(Bucket=bucket)
        yield harness.start()
    finally:
        harness.stop()
        moto.terminate()
        moto.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    with harness_with_s3("bench-runs") as harness:
        rows: dict[str, list[float]] = {"sky launch echo": [], "finetune submit": []}
        for index in range(args.repeats + 1):
            echo_s, echo_cluster = sky_echo(index)
            ours_s, our_cluster = finetune_submit(harness, "bench-runs")
            for cluster in (echo_cluster, our_cluster):
                down(cluster)
            label = "warm-up" if index == 0 else f"repeat {index}"
            print(f"{label}: sky launch echo {echo_s:.1f} s, finetune submit {ours_s:.1f} s", flush=True)
            if index:
                rows["sky launch echo"].append(echo_s)
                rows["finetune submit"].append(ours_s)
        echo, ours = statistics.median(rows["sky launch echo"]), statistics.median(rows["finetune submit"])
        print(f"median to RUNNING: sky launch echo {echo:.1f} s, finetune submit {ours:.1f} s")
        print(f"ratio finetune / sky launch echo: {ours / echo:.2f} (goal <= 1.1)")


if __name__ == "__main__":
    main()
