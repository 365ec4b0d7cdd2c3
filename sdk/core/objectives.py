"""Objectives: what a run optimizes, one registration each (name -> what rows it trains on -> the node's trainer,
launch.train.TRAINERS), like the method registry. The row formats are named here too, with the kind of sample
each yields, so the spec can check a format against an objective; sdk.data.formats implements each name."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

RowKind = Literal["examples", "preference", "feedback"]  # examples: text, prompt/completion or conversations

# What each kind of row is, in messages that say which objective trains on it.
KIND_WORDS: dict[str, str] = {
    "examples": "examples", "preference": "preference pairs",
    "feedback": "binary-feedback rows (one answer with a true/false label)",
}

# Every data.format name and the rows it holds (sdk.data.formats.FORMATS implements exactly these).
ROW_FORMATS: dict[str, RowKind] = {
    "alpaca": "examples", "sharegpt": "examples", "messages": "examples", "prompt_completion": "examples",
    "text": "examples", "preference": "preference", "openai_preference": "preference", "feedback": "feedback",
}


@dataclass(frozen=True)
class Objective:
    name: str
    description: str
    trains_on: RowKind
    packing: bool  # can several examples share one sequence?
    reads_in_order: bool = False  # its trainer reads rows in order (the node shuffles them first, seeded)

    @property
    def formats(self) -> list[str]:
        return [name for name, kind in ROW_FORMATS.items() if kind == self.trains_on]


OBJECTIVES: dict[str, Objective] = {o.name: o for o in (
    Objective("sft", "supervised fine-tuning: next-token loss on the answers", trains_on="examples", packing=True),
    Objective("dpo", "direct preference optimization: chosen over rejected answers", trains_on="preference", packing=False),
    Objective("kto", "Kahneman-Tversky optimization: desirable answers up, undesirable ones down (binary feedback)",
              trains_on="feedback", packing=False, reads_in_order=True),  # KL pairs each row with its neighbours
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
    refusal = kind_refusal(objective, data_format)
    return ("data.format", refusal) if refusal else None


def kind_refusal(objective: str, data_format: str) -> str | None:
    """Why rows of this format cannot train this objective (naming the objective that can), or None."""
    wanted, kind = objective_named(objective), ROW_FORMATS[data_format]
    if kind == wanted.trains_on:
        return None
    if kind != "examples":
        return f"{data_format} rows are {KIND_WORDS[kind]}: set objective: {' or '.join(objective_for_rows(kind))}"
    return f"objective {objective} trains on {KIND_WORDS[wanted.trains_on]} ({' or '.join(wanted.formats)}), not {data_format} rows"
