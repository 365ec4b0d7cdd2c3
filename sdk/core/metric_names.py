"""One naming rule for what a trainer logs, shared by metrics.jsonl, `finetune metrics`, the trackers, sweep ranking
and docs/objectives.md: every numeric key reaches metrics.jsonl under the name the trainer logged it (trl's
`rewards/margins`, `completions/mean_length`, `rewards/<reward>/mean`), except the few the product renames for
brevity (RENAMED).
Runs written before this rule stored `rewards_margins` for `rewards/margins`: `read_row` gives them the new names."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

RENAMED = {"learning_rate": "lr"}
# Keys of the trainer's end-of-training report: they describe the whole run and live in summary.json instead.
RUN_TOTALS = ("train_runtime", "train_samples_per_second", "train_steps_per_second", "total_flos", "train_loss")
# Prefixes older runs flattened with "_" (trl logs them with "/").
_FLATTENED = ("rewards_", "logps_", "logits_", "eval_rewards_", "eval_logps_", "eval_logits_")


def logged_name(key: str) -> str:
    return RENAMED.get(key, key)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def logged_row(logs: Mapping[str, Any]) -> dict[str, float]:
    """A trainer's log dict as metrics.jsonl keys: every number under its logged name, run totals left out."""
    return {logged_name(k): float(v) for k, v in logs.items() if is_number(v) and k not in RUN_TOTALS}


def read_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A metrics.jsonl row under today's names (an older run's flattened keys unflattened)."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        prefix = next((p for p in _FLATTENED if key.startswith(p)), None)
        out[f"{prefix[:-1]}/{key[len(prefix):]}" if prefix and "/" not in key else key] = value
    return out
