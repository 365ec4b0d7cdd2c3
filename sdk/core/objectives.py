"""Objectives: what a run optimizes, one registration each (name -> what rows it trains on -> the node's trainer,
launch.train.TRAINERS), like the method registry. The row formats are named here too, with the kind of sample
each yields, so the spec can check a format against an objective; sdk.data.formats implements each name."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

RowKind = Literal["examples", "preference"]  # examples: text, prompt/completion or conversations

# Every data.format name and the rows it holds (sdk.data.formats.FORMATS implements exactly these).
ROW_FORMATS: dict[str, RowKind] = {
    "alpaca": "examples", "sharegpt": "examples", "messages": "examples", "prompt_completion": "examples",
    "text": "examples", "preference": "preference", "openai_preference": "preference",
}


@dataclass(frozen=True)
class Objective:
    name: str
    description: str
    trains_on: RowKind
    packing: bool  # can several examples share one sequence?

    @property
    def formats(self) -> list[str]:
        return [name for name, kind in ROW_FORMATS.items() if kind == self.trains_on]


OBJECTIVES: dict[str, Objective] = {o.name: o for o in (
    Objective("sft", "supervised fine-tuning: next-token loss on the answers", trains_on="examples", packing=True),
    Objective("dpo", "direct preference optimization: chosen over rejected answers", trains_on="preference", packing=False),
)}


def objective_named(name: str) -> Objective:
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise ValueError(f"unknown objective {name!r}; use one of {', '.join(OBJECTIVES)}") from None


def objective_for_rows(kind: RowKind) -> list[str]:
    """The objectives that train on rows of this kind (for a message that names the right one)."""
    return [o.name for o in OBJECTIVES.values() if o.trains_on == kind]


def data_refusal(objective: str, data_format: str, *, packing: bool) -> tuple[str, str] | None:
    """(field, message) when the data settings cannot be trained with the objective; None when they can."""
    wanted = objective_named(objective)
    if packing and not wanted.packing:
        return "data.packing", f"packing is not available with objective {objective}"
    if data_format == "auto":
        return None
    kind = ROW_FORMATS[data_format]
    if kind != wanted.trains_on:
        if wanted.trains_on == "preference":
            return "data.format", (f"{objective} trains on preference pairs ({' or '.join(wanted.formats)}), "
                                   f"not {data_format} rows")
        return "data.format", f"{data_format} rows are preference pairs: set objective: {' or '.join(objective_for_rows(kind))}"
    return None
