"""Per-epoch cadence: `train.evals_per_epoch` / `saves_per_epoch` resolved into the Trainer's eval and save steps
from the real count of training rows (after hold-out, mixing and packing), which the user cannot know beforehand."""

from __future__ import annotations

import math
from typing import Any

from sdk.core.spec import FineTuneSpec


def steps_per_epoch(rows: int, *, batch_size: int, grad_accum: int, world_size: int) -> int:
    """Optimizer steps in one epoch, as the Trainer counts them: each rank's share of the rows (a distributed sampler
    pads to equal shares), in batches (the last one partial), then accumulated (the last group partial)."""
    per_rank = math.ceil(rows / max(world_size, 1))
    batches = math.ceil(per_rank / batch_size)
    return max(math.ceil(batches / grad_accum), 1)


def per_epoch_steps(epoch_steps: int, times: int | None) -> int | None:
    """Every how many steps to act `times` an epoch (Axolotl's reading: the epoch's steps divided, at least 1)."""
    return None if not times else max(epoch_steps // times, 1)


def resolve_cadence(spec: FineTuneSpec, rows: int, *, world_size: int) -> dict[str, int] | None:
    """{steps_per_epoch, eval_steps, save_steps} for the per-epoch settings the spec has, or None without them;
    `steps_per_run` too when max_steps ends the run within its first epoch (the steps are then parts of the run)."""
    t = spec.train
    if not (t.evals_per_epoch or t.saves_per_epoch):
        return None
    epoch = steps_per_epoch(rows, batch_size=t.batch_size, grad_accum=t.grad_accum, world_size=world_size)
    out = {"steps_per_epoch": epoch}
    if t.max_steps and t.max_steps < epoch:  # a run shorter than an epoch: the run is the epoch (Axolotl's reading)
        epoch = out["steps_per_run"] = t.max_steps
    for key, times in (("eval_steps", t.evals_per_epoch), ("save_steps", t.saves_per_epoch)):
        steps = per_epoch_steps(epoch, times)
        if steps is not None:
            out[key] = steps
    return out


def apply_cadence(trainer: Any, spec: FineTuneSpec, *, world_size: int) -> dict[str, int] | None:
    """Set the resolved steps on the Trainer's arguments before it trains (it reads them when training starts)."""
    cadence = resolve_cadence(spec, len(trainer.train_dataset), world_size=world_size)
    if cadence is None:
        return None
    from transformers.trainer_utils import IntervalStrategy, SaveStrategy

    args = trainer.args
    if "eval_steps" in cadence and trainer.eval_dataset is not None:
        args.eval_strategy, args.eval_steps = IntervalStrategy.STEPS, cadence["eval_steps"]
    if "save_steps" in cadence:
        args.save_strategy, args.save_steps = SaveStrategy.STEPS, cadence["save_steps"]
    return cadence
