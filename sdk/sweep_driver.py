"""`python -m sdk.sweep_driver SWEEP_URI`: the detached process that runs a sweep's trials (sdk.sweeps.drive)."""

from __future__ import annotations

import argparse
import signal
import sys


def main() -> int:
    from sdk.sweeps import Sweep, drive

    parser = argparse.ArgumentParser()
    parser.add_argument("uri")
    parser.add_argument("--poll", type=float, default=1.0)
    args = parser.parse_args()
    handle = Sweep.from_uri(args.uri)

    def on_term(signum, frame):  # killing the driver cancels the sweep rather than orphaning its trials
        handle.store.put_bytes(handle._key("CANCEL"), b"driver signalled")

    signal.signal(signal.SIGTERM, on_term)
    record = drive(handle, poll=args.poll)
    print(f"sweep {record.sweep_id}: done; " + ", ".join(f"{t.name} {t.state}" for t in record.trials), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
