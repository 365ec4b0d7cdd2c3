"""Generation metrics of an answer against its reference, each defined here in a line and unit-tested by hand:

  exact_match          1 when the two are equal after lower-casing and collapsing whitespace
  token_f1             SQuAD's F1 of the whitespace tokens (normalized as above): overlap counted with multiplicity
  rouge_l              F1 of the longest common subsequence of those tokens (ROUGE-L, β = 1)
  json_valid           the answer parses as JSON (only where the reference does: extraction tasks)
  json_field_accuracy  share of the reference object's top-level fields the answer's object has with equal values
  tool_call_match      1 when the answer's tool calls equal the reference's: same functions in the same order, the
                       same arguments as JSON values (only where the reference calls tools)

`score_all` averages each metric over the examples it applies to and says on how many. No torch here."""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

GENERATION_METRICS = ("exact_match", "token_f1", "rouge_l", "json_valid", "json_field_accuracy", "tool_call_match")


def normalize(text: str) -> str:
    return " ".join(text.lower().split())


def exact_match(answer: str, reference: str) -> float:
    return float(normalize(answer) == normalize(reference))


def token_f1(answer: str, reference: str) -> float:
    got, want = normalize(answer).split(), normalize(reference).split()
    if not got or not want:
        return float(got == want)
    common = sum((Counter(got) & Counter(want)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(got), common / len(want)
    return 2 * precision * recall / (precision + recall)


def _lcs(a: list[str], b: list[str]) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(answer: str, reference: str) -> float:
    got, want = normalize(answer).split(), normalize(reference).split()
    if not got or not want:
        return float(got == want)
    lcs = _lcs(got, want)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(got), lcs / len(want)
    return 2 * precision * recall / (precision + recall)


_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


def parse_json(text: str) -> Any:
    """The text as JSON (a ```json fence around it is allowed); raises ValueError when it is not."""
    text = text.strip()
    fenced = _FENCE.match(text)
    return json.loads(fenced.group(1) if fenced else text)


def _json_or_none(text: str) -> Any:
    try:
        return parse_json(text)
    except ValueError:
        return None


def field_accuracy(answer: Any, reference: dict[str, Any]) -> float:
    if not reference:
        return float(answer == reference)
    if not isinstance(answer, dict):
        return 0.0
    return sum(1 for key, value in reference.items() if key in answer and answer[key] == value) / len(reference)


def _calls(calls: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    out = []
    for call in calls:
        function = call.get("function", call)
        arguments = function.get("arguments")
        out.append((function.get("name"), _json_or_none(arguments) if isinstance(arguments, str) else arguments))
    return out


def tool_call_match(answer_calls: list[dict[str, Any]], reference_calls: list[dict[str, Any]]) -> float:
    return float(_calls(answer_calls) == _calls(reference_calls))


def score(answer: str, reference: str, *, answer_calls: list[dict[str, Any]] | None = None,
          reference_calls: list[dict[str, Any]] | None = None) -> dict[str, float]:
    """The metrics that apply to one answer: the text metrics always; the JSON ones when the reference is JSON;
    tool_call_match when the reference calls tools (its text metrics then compare the content beside the calls)."""
    out = {"exact_match": exact_match(answer, reference), "token_f1": token_f1(answer, reference),
           "rouge_l": rouge_l(answer, reference)}
    wanted = _json_or_none(reference) if reference.strip()[:1] in ("{", "[", "`") else None
    if wanted is not None:
        got = _json_or_none(answer)
        out["json_valid"] = float(got is not None)
        if isinstance(wanted, dict):
            out["json_field_accuracy"] = field_accuracy(got, wanted)
    if reference_calls:
        out["tool_call_match"] = tool_call_match(answer_calls or [], reference_calls)
    return out


@dataclass
class Scores:
    """Each metric's mean over the examples it applies to, and how many those were."""

    means: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {**{k: round(v, 6) for k, v in self.means.items()}, "counts": dict(self.counts)}


def score_all(rows: list[dict[str, float]]) -> Scores:
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for row in rows:
        for name, value in row.items():
            sums[name] = sums.get(name, 0.0) + value
            counts[name] = counts.get(name, 0) + 1
    ordered = [n for n in GENERATION_METRICS if n in sums]
    return Scores({n: sums[n] / counts[n] for n in ordered}, {n: counts[n] for n in ordered})
