"""Who drives a sweep: the lease in sweep.json (renewed by the driver), starting a driver, handing over and
resuming a sweep whose driver stopped."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from typing import TYPE_CHECKING

from sdk.core.errors import LaunchError
from sdk.sweeps.record import Lease, SweepRecord

if TYPE_CHECKING:
    from sdk.sweeps.handle import Sweep

# ------------------------------------------------------------------------------------------- driver

LEASE_S = 120.0  # FINETUNE_SWEEP_LEASE_S: a driver renews its lease every third of this


class SweepBusy(LaunchError):
    """Another driver holds the sweep's lease."""


class LeaseLost(Exception):
    """Another driver took the sweep over while this one was stopped past its lease: stop without writing."""


def lease_seconds() -> float:
    return float(os.environ.get("FINETUNE_SWEEP_LEASE_S", LEASE_S))


def _new_lease(token: str, pid: int) -> Lease:
    from sdk.machine.processes import identify

    who = identify(pid)
    return Lease(token=token, host=socket.gethostname(), pid=pid, started=who["started"], boot=who["boot"],
                 expires=time.time() + lease_seconds())


def _check_free(handle: Sweep, record: SweepRecord, *, token: str | None = None) -> None:
    """SweepBusy unless the lease is ours (`token`), expired, or held by a process on this machine that ended."""
    lease = record.lease
    if lease is None or lease.token == token or not lease.live(time.time()) or lease.provably_dead():
        return
    raise SweepBusy(f"sweep {handle.id}: driven by {lease.describe()}; a second driver would launch its trials twice. "
                    "Resume it once that lease has expired")


def start_driver(handle: Sweep, *, token: str) -> int:
    """The detached driver process; it drives only under the lease that carries `token` (written before)."""
    from sdk.machine.registry import home

    log = home() / "sweeps" / f"{handle.id}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        process = subprocess.Popen([sys.executable, "-m", "sdk.sweeps.driver", handle.uri, "--token", token], stdout=out,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return process.pid


def hand_over(handle: Sweep, record: SweepRecord) -> int:
    """Start a driver and write its lease (its PID, a token only it was given): from then on a second `resume`
    refuses. The driver waits for that lease before it writes anything, so this write never lands over its own."""
    import secrets

    token = secrets.token_hex(8)
    record.lease = _new_lease(token, os.getpid())  # held by this process until the driver's own PID is in it
    handle._write(record)
    pid = start_driver(handle, token=token)
    try:
        record.lease = _new_lease(token, pid)
        handle._write(record)
    except BaseException:
        os.kill(pid, 15)  # it would wait for a lease naming it, then leave; do not leave it waiting
        raise
    return pid
