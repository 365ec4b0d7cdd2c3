"""`finetune --help` start-up time as a ratio of `python -c pass` (goal: <= 2x).

Run: python tests/bench/bench_cli_startup.py [--runs N] [--repeats K]
Median wall time of N runs of each, alternating to share noise, repeated K times. The console script
is the one pip installed beside this interpreter (a version manager's shim, such as pyenv's bash
shim, would add its own ~50 ms to one side only).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def wall(cmd: list[str], env: dict | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, capture_output=True, check=True, env=env)
    return time.perf_counter() - start


def cold(cmd: list[str]) -> float:
    """--help with an empty FINETUNE_HOME: nothing cached, typer imported and the help rendered."""
    import os
    import tempfile

    with tempfile.TemporaryDirectory() as home:
        return wall(cmd, {**os.environ, "FINETUNE_HOME": home})


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    beside = Path(sys.executable).with_name("finetune")
    entry = str(beside) if beside.is_file() else shutil.which("finetune")
    cli = [entry, "--help"] if entry else [sys.executable, "-m", "sdk.cli", "--help"]
    base_cmd = [sys.executable, "-c", "pass"]
    print(f"console script: {cli[0]}")
    wall(cli), wall(base_cmd)  # warm the file cache
    ratios = []
    for repeat in range(args.repeats):
        base, help_ = [], []
        for _ in range(args.runs):
            base.append(wall(base_cmd))
            help_.append(wall(cli))
        b, h = statistics.median(base), statistics.median(help_)
        ratios.append(h / b)
        print(f"repeat {repeat + 1}: python -c pass median {b * 1000:6.1f} ms, finetune --help median {h * 1000:6.1f} ms, "
              f"ratio {h / b:.2f}x")
    print(f"ratio {min(ratios):.2f}-{max(ratios):.2f}x over {args.repeats} repeats of {args.runs} (goal <= 2.0x)")
    first = statistics.median(cold(cli) for _ in range(args.runs))
    print(f"first --help on a machine (nothing cached yet): median {first * 1000:.1f} ms, {first / b:.2f}x")
    heavy = subprocess.run(
        [sys.executable, "-c", "import sys, sdk.cli; print(sorted(m for m in ('torch','transformers','sky','pydantic') if m in sys.modules))"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    print(f"heavy modules imported at start-up: {heavy}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
