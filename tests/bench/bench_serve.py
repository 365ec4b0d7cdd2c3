"""Serving benchmark: server start time, then tokens/s and requests/s with 12 concurrent requests for the
base model, one adapter, and two adapters mixed — all on one vLLM engine (`finetune serve`).

    python tests/bench/bench_serve.py RUN_A RUN_B [--requests 12] [--max-tokens 32]

RUN_A and RUN_B: two runs with adapters on the same base (e.g. two smollm2-news runs). Prints one line per
case and a JSON summary; the ratios are against the base model measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor

PROMPTS = [
    "Storm floods the coastal city as rivers burst their banks",
    "Striker scores twice in the cup final",
    "Bank raises its interest rate for the third time",
    "New chip doubles phone battery life",
]


def measure(server, models: list[str], requests: int, max_tokens: int) -> dict[str, float]:
    client = server.client
    jobs = [(models[i % len(models)], PROMPTS[i % len(PROMPTS)]) for i in range(requests)]

    def one(job):
        model, text = job
        reply = client.completions.create(model=model, prompt=server.prompt(model, text), max_tokens=max_tokens,
                                          temperature=0, extra_body={"ignore_eos": True})
        return reply.usage.completion_tokens

    with ThreadPoolExecutor(len(jobs)) as pool:
        list(pool.map(one, jobs))  # warm: the engine's first batches of this size compile and allocate
        start = time.perf_counter()
        tokens = sum(pool.map(one, jobs))
    seconds = time.perf_counter() - start
    return {"tokens_per_s": tokens / seconds, "requests_per_s": len(jobs) / seconds, "seconds": seconds, "tokens": tokens}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("runs", nargs=2)
    parser.add_argument("--requests", type=int, default=12)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()

    import sdk
    from sdk.serving.engine_env import engine_python

    engine_python()  # created once, not counted in the start time
    start = time.perf_counter()
    server = sdk.serve([f"a={args.runs[0]}", f"b={args.runs[1]}"], port=args.port)
    started = time.perf_counter() - start
    print(f"server start: {started:.1f} s (adapters fetched, engine up, all models listed)", flush=True)
    try:
        cases = {"base": [server.base], "one adapter": ["a"], "two adapters": ["a", "b"]}
        results = {name: measure(server, models, args.requests, args.max_tokens) for name, models in cases.items()}
    finally:
        server.stop()
    base = results["base"]["tokens_per_s"]
    for name, r in results.items():
        print(f"{name:13s} {r['tokens_per_s']:7.1f} tokens/s  {r['requests_per_s']:5.2f} requests/s  "
              f"({r['tokens']} tokens in {r['seconds']:.1f} s; {r['tokens_per_s'] / base:.2f}x base)", flush=True)
    print(json.dumps({"start_s": started, "concurrent_requests": args.requests, "max_tokens": args.max_tokens, **results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
