"""Processes this client started: who they are, is one alive, which members of a process group are left, stop a
group. A PID alone names nobody for long: once a process ends, the kernel hands its number to the next one. So
every PID is recorded with its start time and the boot it belongs to (`identify`), and nothing is signalled
unless both still match (`is_same`)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22)."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def identify(pid: int) -> dict[str, Any]:
    """What to record beside a PID so that a later signal reaches this process and no other."""
    return {"pid": pid, "started": _start_ticks(pid), "boot": _boot_id()}


def is_same(pid: int | None, started: int | None, boot: str | None) -> bool:
    """Is `pid` still the process that was recorded? False when it ended, when the machine rebooted, or when
    the number now belongs to another process. A record without a full identity (an older record, a system
    without /proc) can only be checked by the PID."""
    if not pid:
        return False
    if started is None or boot is None:
        return pid_alive(pid)
    return pid_alive(pid) and _boot_id() == boot and _start_ticks(pid) == started


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)  # reap our own finished child so it is not a zombie
        if done == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def group_members(pgid: int) -> list[int]:
    """Live processes of a process group; zombies hold nothing and are left out."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                out.append(int(entry.name))
    return out


def stop_group(pgid: int, *, grace: float, kill_wait: float = 10, started: int | None = None, boot: str | None = None) -> bool:
    """SIGTERM the group, SIGKILL whatever is left after `grace` seconds; wait until no member is left
    (not only the leader: a torchrun rank or an engine worker outlives its launcher by a moment).
    True when the group is gone. The group is signalled only while it is provably the recorded one: its
    leader is the recorded process (`started`, `boot`), or the leader is gone and members remain (the kernel
    does not reuse a number while a group still carries it)."""
    pid_alive(pgid)  # reap the leader if it is our child
    if pid_alive(pgid) and not is_same(pgid, started, boot):
        return True  # the number belongs to another process now: ours is gone, and nobody is signalled
    if not pid_alive(pgid) and not group_members(pgid):
        return True
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, kill_wait)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return True
        deadline = time.time() + wait
        while time.time() < deadline:
            pid_alive(pgid)
            if not group_members(pgid):
                return True
            time.sleep(0.2)
    return not group_members(pgid)
