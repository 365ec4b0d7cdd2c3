"""Every registered method trains the tiny recipe on a GPU at precision auto, so do QLoRA under ZeRO-3, LoRA under
FSDP2, and LoRA and full fine-tuning under FSDP2 with CPU offload (one process each: the wrapping, loading and saving
paths a CPU cannot run), then QLoRA and LoRA merge.

Run (GPU): python tests/bench/gpu_methods.py [--parallel 4]
Checks the GPU path end to end through `sdk.submit` (local backend): the run succeeds on CUDA, not on a
silent CPU fallback, and prints per method the precision, loss, label accuracy, peak memory and time.
On a CPU-only machine every run fails fast by design unless FINETUNE_ALLOW_CPU=1 (then it measures the CPU).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


FSDP_OFFLOAD = ["distributed={strategy: fsdp, offload: true}"]  # FSDP2's CPUOffloadPolicy: trains and saves
DISTRIBUTED = {"qlora-zero3": ["method={name: qlora}", "distributed.strategy=deepspeed", "distributed.zero_stage=3"],
               "lora-fsdp": ["method={name: lora}", "distributed.strategy=fsdp"],
               "lora-fsdp-offload": ["method={name: lora}", *FSDP_OFFLOAD],
               "full-fsdp-offload": ["method={name: full}", *FSDP_OFFLOAD]}

# An 8-bit base (LLM.int8): CUDA's int8 matmul kernels, which the CPU tests (tests/test_node.py) do not reach.
INT8 = {"qlora-int8": ["method={name: qlora, quant_type: int8}"]}


def main() -> int:
    import argparse

    import sdk
    from sdk.core.methods import REGISTRY
    from sdk.core.recipes import load_recipe
    from sdk.runs.tools import merge

    parser = argparse.ArgumentParser()
    parser.add_argument("--parallel", type=int, default=4, help="runs training at once (start-up dominates on a GPU)")
    parser.add_argument("--only", help="comma-separated case names")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gpu-methods-"))
    os.environ.update(HF_HUB_OFFLINE="1", FINETUNE_HOME=str(work / "home"), SKYPILOT_NUM_GPUS_PER_NODE="1")
    cases = {name: [f"method={{name: {name}}}"] for name in REGISTRY} | INT8 | DISTRIBUTED
    if args.only:
        cases = {k: v for k, v in cases.items() if k in args.only.split(",")}
    failures, runs, pending = 0, {}, list(cases.items())
    active: list[tuple[str, object, float]] = []
    while pending or active:
        while pending and len(active) < args.parallel:
            name, overrides = pending.pop(0)
            spec = load_recipe(str(ROOT / "recipes" / "tiny.yaml"),
                               [*overrides, "train.precision=auto", "train.max_steps=20", f"output={work / 'runs'}"])
            active.append((name, sdk.submit(spec, backend="local"), time.time()))
        name, run, t0 = active.pop(0)
        state = run.wait(progress=False).state
        if state != "succeeded":
            failures += 1
            print(f"{name:15s} {state}\n{run.logs()[-3000:]}", flush=True)
            continue
        s = run.summary()
        acc = s.label_accuracy
        print(f"{name:15s} {s.hardware.device} {s.hardware.name} {s.precision} {s.strategy}, loss {s.first_loss:.3f} -> {s.last_loss:.3f}, "
              f"accuracy {acc.before.accuracy if acc.before else float('nan'):.0%} -> {acc.after.accuracy if acc.after else float('nan'):.0%}, "
              f"peak {s.peak_memory_bytes / 2**20:.0f} MiB, {time.time() - t0:.1f} s (with {args.parallel} at once)", flush=True)
        runs[name] = run.id
    for name in ("qlora", "qlora-int8", "lora"):
        if name in runs:
            try:
                report = merge(runs[name], work / f"merged-{name}")
            except sdk.FinetuneError as exc:
                failures += 1
                print(f"merge {name}: {exc}", flush=True)
                continue
            print(f"merge {name}: into the {report['merged_into']}, max logit diff {report['max_logit_diff']:.3g}"
                  + (f" (4-bit merge would give {report['max_logit_diff_4bit_merge']:.3g})" if "max_logit_diff_4bit_merge" in report else "")
                  + (f" (the int8 model differs by {report['max_logit_diff_int8_model']:.3g})"
                     if "max_logit_diff_int8_model" in report else ""),
                  flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
