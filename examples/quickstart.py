"""Quickstart: describe a run in Python, submit it, watch it, plot it and fetch the adapter.

    python examples/quickstart.py [OUTPUT]      # OUTPUT: a local dir (default ./runs) or s3://bucket/prefix

Uses the tiny local model and the builtin news-topics data, so it needs no download and takes
seconds on a CPU. Swap `model` for a Hub id and `output` for your bucket to do it for real.
"""

from __future__ import annotations

import sys
from pathlib import Path

import sdk


def main(output: str = "runs") -> sdk.Run:
    spec = sdk.FineTuneSpec(
        name="quickstart",
        model="tiny:llama",
        method={"name": "lora", "r": 8, "alpha": 16},
        data={
            "source": "builtin:news-topics",
            "eval_source": "builtin:news-topics:test",
            "max_samples": 128,
            "max_length": 128,
        },
        train={"max_steps": 20, "batch_size": 8, "lr": 5e-3, "scheduler": "constant", "precision": "fp32", "logging_steps": 2},
        eval={"labels": ["World", "Sports", "Business", "Sci/Tech"], "num_samples": 16, "max_new_tokens": 8},
        output=output,
    )
    run = sdk.submit(spec)  # local backend: no accelerators or infra in the spec
    print(f"submitted {run.id} -> {run.uri}")
    status = run.wait(progress=True)
    print(f"finished: {status.state}")
    if status.state != "succeeded":
        print(run.logs(), file=sys.stderr)
        raise SystemExit(1)

    summary = run.summary()
    acc = summary.label_accuracy
    print(f"trainable {summary.trainable_params:,} params ({summary.trainable_percent:.2f}%), "
          f"loss {summary.first_loss:.3f} -> {summary.last_loss:.3f}, "
          f"label accuracy {acc.before.accuracy:.0%} -> {acc.after.accuracy:.0%}")
    print(f"{len(run.metrics())} metric rows; last: {run.metrics()[-1]}")
    run.plot(Path(output) / f"{run.id}-loss.png" if "://" not in output else f"{run.id}-loss.png")
    adapter = run.fetch_adapter(Path("adapters") / run.id if "://" in output else Path(output) / f"{run.id}-adapter")
    print(f"adapter in {adapter}: {sorted(p.name for p in adapter.iterdir())}")
    return run


if __name__ == "__main__":
    main(*sys.argv[1:2])
