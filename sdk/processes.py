"""Processes this client started: is one alive, which members of a process group are left, stop a group."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


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


def stop_group(pgid: int, *, grace: float, kill_wait: float = 10) -> bool:
    """SIGTERM the group, SIGKILL whatever is left after `grace` seconds; wait until no member is left
    (not only the leader: a torchrun rank or an engine worker outlives its launcher by a moment).
    True when the group is gone."""
    pid_alive(pgid)  # reap the leader if it is our child
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
