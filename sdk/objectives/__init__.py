"""Objectives: what a run optimizes, one module and one registration each (name -> settings -> rows -> the node's
trainer), like methods. The built-in ones are the modules below; others are plugins: a module named in the
FINETUNE_OBJECTIVES environment variable (comma-separated) or under the `finetune.objectives` entry-point group,
imported before the spec is built on every side (client and node), that calls `register`."""

from __future__ import annotations

import importlib
import os
from typing import Any

from sdk.objectives.base import (  # noqa: F401  (the names callers import from here)
    KIND_WORDS,
    ROW_FORMATS,
    LoggedMetric,
    Objective,
    ObjectiveSettings,
    PlanFacts,
    RowKind,
)

OBJECTIVES: dict[str, Objective] = {}
BUILT_IN = ("sft", "dpo", "kto", "orpo", "simpo", "grpo")
PLUGIN_ENV = "FINETUNE_OBJECTIVES"


def register(objective: Objective) -> Objective:
    """Add an objective. Call it at import time of a plugin module: the spec's `objective` field is built from the
    registry when sdk.core.spec is first imported."""
    if objective.name in OBJECTIVES and OBJECTIVES[objective.name] is not objective:
        raise ValueError(f"objective {objective.name!r} is registered twice")
    if objective.settings.model_fields["name"].default != objective.name:
        raise ValueError(f"objective {objective.name!r}: its settings' name must default to {objective.name!r}")
    OBJECTIVES[objective.name] = objective
    return objective


def _load() -> None:
    for name in BUILT_IN:
        register(importlib.import_module(f"sdk.objectives.{name}").OBJECTIVE)
    plugins = [m.strip() for m in os.environ.get(PLUGIN_ENV, "").split(",") if m.strip()]
    for module in plugins:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ImportError(f"{PLUGIN_ENV}: objective plugin {module!r} cannot be imported: {exc}") from exc
    from importlib.metadata import entry_points

    for entry in entry_points(group="finetune.objectives"):
        entry.load()


def objective_named(name: str) -> Objective:
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise ValueError(f"unknown objective {name!r}; use one of {', '.join(OBJECTIVES)}") from None


def objective_of(spec: Any) -> Objective:
    """The registration of a spec's objective."""
    return objective_named(spec.objective.name)


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
    if data_format in wanted.formats:
        return None
    if kind != wanted.trains_on:
        if kind != "examples":
            return f"{data_format} rows are {KIND_WORDS[kind]}: set objective: {' or '.join(objective_for_rows(kind))}"
    return (f"objective {objective} trains on {KIND_WORDS[wanted.trains_on]} ({' or '.join(wanted.formats)}), "
            f"not {data_format} rows")


def mixture_refusal(formats: list[tuple[str, str]]) -> str | None:
    """Why sources of these formats ((field, format) each) cannot train in one run: rows of different kinds (examples
    and preference pairs …) train with different objectives, each named; None when they are one kind."""
    kinds = {ROW_FORMATS[f] for _, f in formats if f in ROW_FORMATS}
    if len(kinds) < 2:
        return None
    held = "; ".join(f"{field} holds {KIND_WORDS[ROW_FORMATS[f]]} ({f}: objective "
                     f"{' or '.join(objective_for_rows(ROW_FORMATS[f]))})" for field, f in formats if f in ROW_FORMATS)
    return f"one run trains one kind of row: {held}; train them in separate runs"


_load()
