"""How far the same seed gives the same loss curve, on this CPU: the tiny model trained by the node (as
`finetune launch --local` runs it) in pairs of runs that differ in one thing, each pair's largest per-step loss
difference printed. The numbers behind docs/reproducibility.md.

Run: python tests/bench/bench_reproducibility.py [--steps 20] [--recipe tiny|smollm2-135m]
Pairs: one process twice (what `finetune rerun` reproduces); one process with 1 and with 2 intra-op threads; two
processes (DDP over gloo) twice; one process against two with the same global batch.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def train_one(out: Path, run_id: str, overrides: list[str], env: dict[str, str] | None = None, *,
          recipe: str = "tiny") -> dict[int, float]:
    """One run of the node through the launcher; its logged loss per step."""
    sys.path.insert(0, str(ROOT))
    from sdk.core.recipes import load_recipe
    from sdk.store import open_store
    from sdk.store.runfolder import SPEC, RunFolder

    spec = load_recipe(recipe, [*overrides, f"output={out}"])
    folder = RunFolder(open_store(str(out)), run_id)
    folder.write_json(SPEC, spec.model_dump(mode="json"))
    t0 = time.time()
    result = subprocess.run([sys.executable, "-m", "launch.launcher", "--run-dir", folder.uri], capture_output=True,
                            text=True, cwd=ROOT, timeout=600,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})
    if result.returncode != 0:
        raise SystemExit(f"{run_id} failed:\n{result.stderr[-3000:]}")
    print(f"  {run_id}: {time.time() - t0:.0f} s", flush=True)
    return {r["step"]: r["loss"] for r in folder.metrics() if "loss" in r}


def spread(a: dict[int, float], b: dict[int, float]) -> tuple[float, float, int]:
    """(largest |difference| of a step's loss, the same relative to the loss, the first step that differs or 0)."""
    steps = sorted(set(a) & set(b))
    assert steps and len(steps) == len(a) == len(b), (a, b)
    diffs = [abs(a[s] - b[s]) for s in steps]
    first = next((s for s in steps if a[s] != b[s]), 0)
    return max(diffs), max(d / abs(a[s]) for d, s in zip(diffs, steps, strict=True)), first


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--recipe", default="tiny", help="tiny, or smollm2-135m (a real 135M model from a wheel)")
    args = parser.parse_args()
    base = [f"train.max_steps={args.steps}", "train.logging_steps=1", "data.max_samples=256", "eval.before=false",
            "eval.after=false", "eval.generations=0"]
    ddp = ["distributed.strategy=ddp", "distributed.nproc_per_node=2"]
    with tempfile.TemporaryDirectory(prefix="bench-repro-") as tmp:
        out = Path(tmp)

        def train(run_id: str, overrides: list[str], env: dict[str, str] | None = None) -> dict[int, float]:
            return train_one(out, run_id, overrides, env, recipe=args.recipe)

        one = train("one-a", base)
        pairs = {
            "one process, run twice": (one, train("one-b", base)),
            "one process, 1 vs 2 intra-op threads": (train("threads-1", base, {"OMP_NUM_THREADS": "1"}),
                                                     train("threads-2", base, {"OMP_NUM_THREADS": "2"})),
        }
        two = train("ddp-a", [*base, *ddp, "train.batch_size=4"])
        pairs["two processes (DDP, gloo), run twice"] = (two, train("ddp-b", [*base, *ddp, "train.batch_size=4"]))
        pairs["one process (batch 8) vs two (4 each)"] = (one, two)
    print(f"\n{args.recipe}, LoRA, fp32, {args.steps} steps, same seed; torch {__import__('torch').__version__}, CPU")
    print(f"{'pair':44} {'max |Δloss|':>12} {'relative':>10} {'first step that differs':>24}")
    for name, (a, b) in pairs.items():
        largest, relative, first = spread(a, b)
        print(f"{name:44} {largest:12.3g} {relative:10.2g} {first or '-':>24}")


if __name__ == "__main__":
    main()
