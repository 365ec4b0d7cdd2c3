"""Prompt rows for objectives that sample their own answers (grpo): the prompt in the run's template, the row's
answer as `reference`, and every other column under its own name, for the rewards to read."""

from __future__ import annotations

import json
from typing import Any

from sdk.data.formats import Sample

REFERENCE = "reference"


def prompt_and_reference(sample: Sample) -> tuple[Any, str | None]:
    """The prompt, and the answer the row holds if any: alpaca's output, a completion, the last assistant turn."""
    if sample.kind == "conversation":
        last = max(i for i, t in enumerate(sample.turns) if t["role"] == "assistant")
        answer = sample.turns[last]
        if answer.get("tool_calls"):  # the calls, as the tool_call reward reads a reference
            return sample.turns[:last], json.dumps(answer["tool_calls"], ensure_ascii=False)
        return sample.turns[:last], answer["content"]
    return sample.prompt, sample.completion


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def reference_fields(sample: Sample, *, prompt_columns: tuple[str, ...]) -> dict[str, Any]:
    """The row's columns beside its prompt, as read (encode_json_columns makes them fit one arrow table)."""
    fields = {k: v for k, v in sample.fields.items() if k not in prompt_columns}
    _, reference = prompt_and_reference(sample)
    fields.setdefault(REFERENCE, reference)
    return fields


def json_columns(rows: list[dict[str, Any]]) -> set[str]:
    """The reference columns of prompt rows (prompt_row's, which carry `reference`) that one arrow table cannot type:
    a list or an object in some row, or values of different types (4 in one row, "6" in another). Other objectives'
    rows are left as they are."""
    kinds: dict[str, set[type]] = {}
    for row in rows:
        if REFERENCE in row:
            for k, v in row.items():
                if k != "prompt" and v is not None:
                    kinds.setdefault(k, set()).add(float if type(v) is int else type(v))  # ints and floats mix
    return {k for k, types_ in kinds.items() if len(types_) > 1 or not all(_scalar(t()) for t in types_)}


def encode_json_columns(rows: list[dict[str, Any]], columns: set[str]) -> list[dict[str, Any]]:
    """Every value of those columns as JSON text, strings too, so that decoding them (sdk.evaluation.rewards, before
    the rewards see a row) gives back exactly what the row held."""
    return [{k: json.dumps(v, ensure_ascii=False) if k in columns else v for k, v in row.items()} for row in rows]


def prompt_row(renderer: Any, sample: Sample) -> list[dict[str, Any]]:
    """The trainer rows of a sample (one): `prompt` (text, or chat turns ending with the user's) and the reference
    fields."""
    f = renderer.data.fields
    prompt, _ = prompt_and_reference(sample)
    fields = reference_fields(sample, prompt_columns=(f.prompt, f.messages, f.conversations, f.tools, "prompt",
                                                      "completion", "completion_ids"))
    return [{**fields, "prompt": renderer.prompt(prompt, renderer.template(sample))}]
