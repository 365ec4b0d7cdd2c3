"""`finetune --help` start-up time as a ratio of `python -c pass` (goal: <= 3x).

Run: python tests/bench/bench_cli_startup.py [--runs N]
Median wall time of N runs of each, measured in the same process, alternating to share noise.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time


def wall(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, capture_output=True, check=True)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    entry = shutil.which("finetune")
    cli = [entry, "--help"] if entry else [sys.executable, "-m", "sdk.cli", "--help"]
    base_cmd = [sys.executable, "-c", "pass"]
    wall(cli), wall(base_cmd)  # warm the file cache
    base, help_ = [], []
    for _ in range(args.runs):
        base.append(wall(base_cmd))
        help_.append(wall(cli))
    b, h = statistics.median(base), statistics.median(help_)
    print(f"python -c pass   median {b * 1000:7.1f} ms")
    print(f"finetune --help  median {h * 1000:7.1f} ms")
    print(f"ratio {h / b:.2f}x (goal <= 3.0x)")
    heavy = subprocess.run(
        [sys.executable, "-c", "import sys, sdk.cli; print(sorted(m for m in ('torch','transformers','sky','pydantic') if m in sys.modules))"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    print(f"heavy modules imported at start-up: {heavy}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
