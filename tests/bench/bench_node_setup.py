"""Setup to first training step on the localhost Slurm harness: a cold build, then a node restoring it.

Each case submits the tiny recipe through SkyPilot onto a fresh 1-node cluster and times, from the submit
call, (1) SkyPilot reporting the job RUNNING (setup done) and (2) the first training step in the run folder:
  cold      a new node environment, an empty pip cache, nothing in the store's environment cache: the node
            resolves and installs everything (torch from this machine's local wheel: the index would serve a
            CUDA build of several GB), then keeps the environment in the store (<output>/.envs/)
  restored  a second node with a new environment path and the same lock: the client finds what this stack
            last built, and the node restores the stored environment instead of building it
Every case prints its `[finetune] setup:` stage lines from the node log (the save line carries the archive's
size and what saving cost the cold run; the restore line what restoring took).

Run: python tests/bench/bench_node_setup.py
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_slurm_launch import down, harness_with_s3, wait_running  # noqa: E402
from slurm_harness import SlurmHarness  # noqa: E402


def submit(harness: SlurmHarness, bucket: str, venv: Path, pip_cache: Path) -> dict:
    import sdk
    from sdk.core.recipes import load_recipe

    spec = load_recipe("tiny", [
        "resources.infra=slurm", f"output=s3://{bucket}/runs", "resources.cpus=1", "resources.memory=2",
        "env.HF_HUB_OFFLINE=1", f"env.FINETUNE_NODE_PYTHON={sys.executable}", f"env.FINETUNE_VENV={venv}",
        f"env.PIP_CACHE_DIR={pip_cache}", "train.max_steps=3", "eval.before=false", "eval.after=false",
    ])
    start = time.time()
    run = sdk.submit(spec, backend="skypilot")
    wait_running(run.info.cluster, run.info.job_id, timeout=1200)
    running = time.time() - start
    deadline = time.time() + 600
    while not any("loss" in row for row in run.metrics()) and time.time() < deadline:
        if run.status().done:
            break
        time.sleep(0.5)
    first_step = time.time() - start
    final = run.wait(progress=False, timeout=600)
    stages = [line for line in (run.logs() or "").splitlines() if "[finetune] setup:" in line]
    down(run.info.cluster)
    return {"running_s": running, "first_step_s": first_step, "state": final.state, "stages": stages}


def cached(bucket: str) -> list[str]:
    from sdk.store import open_store

    return [k for k in open_store(f"s3://{bucket}/runs").list(".envs") if not k.endswith("/lock.txt")]


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-setup-"))
    os.chmod(work, 0o777)  # the harness's login user builds the environments here
    with harness_with_s3("bench-setup") as harness:
        cache = work / "pip-cache"
        for name, venv in [("cold", work / "venv-cold"), ("restored", work / "venv-second-node")]:
            result = submit(harness, "bench-setup", venv, cache)
            running, first = result["running_s"], result["first_step_s"]
            print(f"{name:8s} submit -> RUNNING (setup done) {running:6.1f} s, submit -> first step {first:6.1f} s, "
                  f"RUNNING -> first step {first - running:5.1f} s ({result['state']})", flush=True)
            for line in result["stages"]:
                print(f"          {line.strip()}", flush=True)
            print(f"          stored: {', '.join(cached('bench-setup')) or 'nothing'}", flush=True)


if __name__ == "__main__":
    main()
