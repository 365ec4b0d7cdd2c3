"""Setup to first training step on the localhost Slurm harness, with a cold and a warm package cache.

Each case submits the tiny recipe through SkyPilot onto a fresh 1-node cluster and times, from the submit
call, (1) SkyPilot reporting the job RUNNING (setup done) and (2) the first training step in the run folder:
  cold      a new node environment and an empty pip cache: everything the node installs is downloaded
            (torch from this machine's local wheel: the index would serve a CUDA build of several GB)
  warm      a new node environment, the pip cache the cold case filled
  reused    the environment the warm case built (a second run on the same cluster home: only the package)
Every case prints its `[finetune] setup:` stage lines with their times from the node log.

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
    stages = [line for line in run.logs().splitlines() if "[finetune] setup:" in line]
    down(run.info.cluster)
    return {"running_s": running, "first_step_s": first_step, "state": final.state, "stages": stages}


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-setup-"))
    os.chmod(work, 0o777)  # the harness's login user builds the environments here
    with harness_with_s3("bench-setup") as harness:
        cache = work / "pip-cache"
        cases = [("cold", work / "venv-cold"), ("warm", work / "venv-warm"), ("reused", work / "venv-warm")]
        for name, venv in cases:
            result = submit(harness, "bench-setup", venv, cache)
            print(f"{name:7s} setup done (RUNNING) {result['running_s']:6.1f} s, first step {result['first_step_s']:6.1f} s "
                  f"({result['state']})", flush=True)
            for line in result["stages"]:
                print(f"          {line.strip()}", flush=True)


if __name__ == "__main__":
    main()
