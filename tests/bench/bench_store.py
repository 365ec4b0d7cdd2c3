"""Adapter-commit throughput vs a raw boto3 upload_file of the same bytes to the same S3 server,
and the end-to-end wall time of the tiny local run.

Run: python tests/bench/bench_store.py [--mb 64] [--repeats 3] [--skip-e2e]
Prints: commit throughput as a ratio of raw upload throughput (goal >= 0.9) and the tiny run's
wall time (goal <= 20 s on 2 cores). The S3 server is moto on 127.0.0.1, started and stopped here.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import free_port, wait_for_port  # noqa: E402


def make_artifact(root: Path, total_mb: int) -> int:
    root.mkdir(parents=True, exist_ok=True)
    big = total_mb * 1024 * 1024 - 64 * 1024
    (root / "adapter_model.safetensors").write_bytes(os.urandom(big))
    for name in ("adapter_config.json", "tokenizer.json", "tokenizer_config.json", "README.md"):
        (root / name).write_bytes(os.urandom(16 * 1024))
    return sum(p.stat().st_size for p in root.iterdir())


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-e2e", action="store_true")
    args = parser.parse_args()

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        endpoint = f"http://127.0.0.1:{port}"
        os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                          AWS_DEFAULT_REGION="us-east-1")
        import boto3

        from sdk.store import S3Store, commit_dir

        client = boto3.client("s3", endpoint_url=endpoint)
        client.create_bucket(Bucket="bench")
        with tempfile.TemporaryDirectory() as tmp:
            artifact = Path(tmp) / "adapter"
            size = make_artifact(artifact, args.mb)
            files = sorted(artifact.iterdir())
            raw, ours = [], []
            store = S3Store("s3://bench/ours")  # one store per run, as the node holds one
            store.exists("warm-up")  # create its client outside the timing, as the baseline's was
            for i in range(args.repeats):
                start = time.perf_counter()
                for path in files:  # the baseline: boto3's managed upload, default settings
                    client.upload_file(str(path), "bench", f"raw/{i}/{path.name}")
                raw.append(time.perf_counter() - start)
                start = time.perf_counter()
                commit_dir(store, artifact, f"run{i}/adapter")
                ours.append(time.perf_counter() - start)
            r, o = statistics.median(raw), statistics.median(ours)
            mb = size / 1e6
            print(f"artifact {mb:.1f} MB in {len(files)} files, median of {args.repeats}")
            print(f"raw boto3 upload_file   {r:6.2f} s  {mb / r:6.1f} MB/s")
            print(f"finetune commit_dir     {o:6.2f} s  {mb / o:6.1f} MB/s  (sha256 manifest, written last)")
            print(f"commit throughput ratio {r / o:.2f} (goal >= 0.9)")
    finally:
        server.terminate()
        server.wait(timeout=10)

    if not args.skip_e2e:
        with tempfile.TemporaryDirectory() as tmp:
            env = {**os.environ, "FINETUNE_HOME": tmp, "HF_HUB_OFFLINE": "1"}
            env.pop("AWS_ENDPOINT_URL", None)
            start = time.perf_counter()
            result = subprocess.run(["finetune", "launch", "tiny", "--local", f"--set=output={tmp}/runs"],
                                    capture_output=True, text=True, env=env)
            wall = time.perf_counter() - start
            state = "succeeded" if result.returncode == 0 else f"exit {result.returncode}"
            print(f"tiny local run end to end {wall:6.1f} s ({state}; goal <= 20 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
