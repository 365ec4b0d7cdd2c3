"""How a followed run shows its progress: a bar redrawn on a terminal, a plain line per change (at most one per
10 s while steps advance) where nobody watches (CI logs, `> file`, nohup)."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sdk.runs import RunStatus


class PlainProgress:
    """Progress where no one watches a terminal (CI logs, `> file`, nohup): one plain line when the state or
    phase changes, and at most one every `every` seconds while steps advance (a bar would rewrite itself with a
    carriage return every second: hundreds of KB per run in a log)."""

    def __init__(self, run_id: str, *, every: float = 10.0, out: Any = None):
        self.run_id, self.every, self.out = run_id, every, out or sys.stderr
        self.last_key: tuple | None = None
        self.last_step: int | None = None
        self.last_time = 0.0

    def update(self, status: RunStatus) -> None:
        key = (status.state, status.phase if not status.done else None)
        now = time.time()
        moved = status.step is not None and status.step != self.last_step
        if key == self.last_key and not (moved and now - self.last_time >= self.every):
            return
        parts = [f"{self.run_id}: {status.state}"]
        if status.phase and not status.done:
            parts.append(status.phase)
        if status.step is not None:
            parts.append(f"step {status.step}" + (f"/{status.total_steps}" if status.total_steps else ""))
        if status.last_loss is not None:
            parts.append(f"loss {status.last_loss:.4f}")
        print(", ".join(parts), file=self.out, flush=True)
        self.last_key, self.last_step, self.last_time = key, status.step, now

    def close(self) -> None:
        pass


def _interactive() -> bool:
    """A terminal or a notebook is watching (a bar redraws in place there)."""
    return sys.stderr.isatty() or "ipykernel" in sys.modules


def _update_bar(bar: Any, status: RunStatus, run_id: str) -> Any:
    if isinstance(bar, PlainProgress) or (bar is None and not _interactive()):
        bar = bar or PlainProgress(run_id)
        bar.update(status)
        return bar
    from tqdm.auto import tqdm

    if bar is None:
        bar = tqdm(total=status.total_steps or None, desc=run_id, unit="step", dynamic_ncols=True)
    if status.total_steps and bar.total != status.total_steps:
        bar.total = status.total_steps
    if status.step is not None and status.step > bar.n:
        bar.update(status.step - bar.n)
    post = {"state": status.state}
    if status.phase and not status.done:
        post["phase"] = status.phase
    if status.last_loss is not None:
        post["loss"] = f"{status.last_loss:.4f}"
    bar.set_postfix(post, refresh=True)
    return bar


# ---------------------------------------------------------------------------------------- functions
