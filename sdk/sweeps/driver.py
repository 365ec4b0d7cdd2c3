"""`python -m sdk.sweeps.driver SWEEP_URI --token T`: the detached process that runs a sweep's trials
(sdk.sweeps.drive), under the lease its starter wrote with token T."""

from __future__ import annotations

import argparse
import signal
import sys


def main() -> int:
    from sdk.sweeps import LeaseLost, Sweep, SweepBusy, drive

    parser = argparse.ArgumentParser()
    parser.add_argument("uri")
    parser.add_argument("--poll", type=float, default=1.0)
    parser.add_argument("--token", default=None)
    args = parser.parse_args()
    handle = Sweep.from_uri(args.uri)

    def on_term(signum, frame):  # a shutdown or logout stops the driver, not the sweep: `finetune sweep resume`
        raise SystemExit(143)  # goes on later; only `finetune cancel` cancels the trials

    signal.signal(signal.SIGTERM, on_term)
    try:
        record = drive(handle, poll=args.poll, token=args.token)
    except (SweepBusy, LeaseLost) as exc:  # another driver has the sweep: this one leaves it alone
        print(f"sweep {handle.id}: {exc}", flush=True)
        return 0
    state = "done" if record.finished else "stopped with trials left (finetune sweep resume)"
    print(f"sweep {record.sweep_id}: {state}; " + ", ".join(f"{t.name} {t.state}" for t in record.trials), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
