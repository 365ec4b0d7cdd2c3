"""`python -m launch.tools.idle_stop --pid PID --activity FILE --minutes N`: stop an engine nobody uses.

The engine's auth middleware (launch/tools/engine_auth.py) touches FILE on every request that is not a health probe.
When FILE is older than N minutes this watcher sends the engine SIGTERM (SIGKILL after a grace), so the serving
job ends; a SkyPilot cluster launched with autostop then goes down (a GPU left serving nobody bills by the hour).
It ends with the engine."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time


def idle_for(activity: str, now: float) -> float:
    try:
        return now - os.stat(activity).st_mtime
    except OSError:
        return float("inf")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launch.tools.idle_stop")
    parser.add_argument("--pid", type=int, required=True)
    parser.add_argument("--activity", required=True)
    parser.add_argument("--minutes", type=float, required=True)
    parser.add_argument("--poll", type=float, default=30.0)
    args = parser.parse_args(argv)
    limit = args.minutes * 60
    while True:
        try:
            os.kill(args.pid, 0)
        except ProcessLookupError:
            return 0
        idle = idle_for(args.activity, time.time())
        if idle > limit:
            print(f"[finetune] no request for {idle / 60:.1f} min (idle stop {args.minutes:g} min): stopping the engine",
                  flush=True)
            try:
                os.kill(args.pid, signal.SIGTERM)  # vLLM shuts its own workers down on SIGTERM
                deadline = time.time() + 60
                while time.time() < deadline:
                    os.kill(args.pid, 0)
                    time.sleep(1)
                os.killpg(os.getpgid(args.pid), signal.SIGKILL)  # the engine's group, this watcher with it
            except (ProcessLookupError, PermissionError):
                pass
            return 0
        time.sleep(min(args.poll, max(1.0, limit - idle)))


if __name__ == "__main__":
    sys.exit(main())
