"""The reward items of objective grpo (sdk.objectives.rewards) as trl's reward functions: one callable per item,
`f(prompts, completions, completion_ids=None, **kwargs) -> list[float | None]`, named for its metric key
(rewards/<name>/mean). trl applies the weights (`reward_weights`, from `weights`); None means "not applicable" (a row
without a reference). `score_rows` scores held-out answers with the same callables, without trl.

A completion is a string, or (conversational) a list of messages whose last is the assistant's. kwargs hold the
rows' other columns as lists, one value per completion; columns the node JSON-encoded to fit one arrow table
(`json_columns`) are decoded first, so user code and graders see the real structures. Anything that goes wrong in
user code (a function reward, a python grader) is a RewardError naming the item and the user's file:line, in one
line. No torch here."""

from __future__ import annotations

import asyncio
import inspect
import json
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

from sdk.data.tools import parse_hermes_calls
from sdk.evaluation import metrics
from sdk.evaluation.graders import (
    GraderError,
    UnreadableScore,
    as_text,
    grade,
    sample_of,
    score_model_graders,
)
from sdk.evaluation.score_model import api_key
from sdk.evaluation.user_code import RewardError, checked_values, load_function, user_failure
from sdk.objectives.rewards import GRADER_TYPES, reward_names, split_function

RewardFunction = Callable[..., list[float | None]]
# What trl passes to a reward function beside the dataset's columns: not columns, never decoded or read as rows.
TRL_EXTRAS = frozenset({"trainer_state", "log_extra", "log_metric", "environments"})
ENDPOINT_THREADS = 16  # score_model requests in flight per reward call: a group of answers waits on one round trip


# -------------------------------------------------------------------------------------------- rows and answers


def answer_of(completion: Any) -> tuple[str, list[dict[str, Any]] | None]:
    """(the answer's text, the tool calls the generator parsed or None) of a plain or conversational completion."""
    if isinstance(completion, str):
        return completion, None
    message = completion[-1] if isinstance(completion, list) and completion else completion
    if not isinstance(message, dict):
        return as_text(completion), None
    content = message.get("content")
    if isinstance(content, list):  # content parts: their text, in order
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    calls = message.get("tool_calls")
    return (content if isinstance(content, str) else as_text(content)), (list(calls) if calls else None)


def decoded_columns(kwargs: Mapping[str, Any], *, json_columns: Collection[str]) -> dict[str, Any]:
    """kwargs with the JSON-encoded columns decoded: each string value parsed as JSON."""
    out = dict(kwargs)
    for column in json_columns:
        if isinstance(out.get(column), list):
            out[column] = [_decoded(value) for value in out[column]]
    return out


def _decoded(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:  # a plain string the node left as it was (a row whose value was no list or object)
        return value


def _rows(prompts: Sequence[Any], columns: Mapping[str, Any], n: int) -> list[dict[str, Any]]:
    """One dict per completion: its prompt and the row's other columns (trl repeats a row per completion)."""
    lists = {key: value for key, value in columns.items() if key not in TRL_EXTRAS and isinstance(value, list)
             and len(value) == n}
    return [{"prompt": prompts[i] if i < len(prompts) else None, **{k: v[i] for k, v in lists.items()}}
            for i in range(n)]


def _column_names(columns: Mapping[str, Any]) -> list[str]:
    return sorted({"prompt", *(k for k, v in columns.items() if k not in TRL_EXTRAS and isinstance(v, list))})


# -------------------------------------------------------------------------------------------- built-in scorers
# Each: (item, answer text, the answer's parsed tool calls or None, row) -> score, or None when not applicable.


def _text_metric(item: Any, text: str, calls: Any, row: dict[str, Any]) -> float | None:
    reference = row.get(item.reference)
    return None if reference is None else TEXT_METRICS[item.type](text, as_text(reference))


def _json_valid(item: Any, text: str, calls: Any, row: dict[str, Any]) -> float:
    try:
        metrics.parse_json(text)
    except ValueError:
        return 0.0
    return 1.0


def _json_fields(item: Any, text: str, calls: Any, row: dict[str, Any]) -> float | None:
    reference = row.get(item.reference)
    if reference is None:
        return None
    wanted = _json_object(reference)
    if wanted is None:
        shown = as_text(reference)[:60]
        raise ValueError(f"the reference in column {item.reference!r} is not a JSON object: {shown!r}")
    if item.fields is not None:
        wanted = {key: wanted[key] for key in item.fields if key in wanted}
        if not wanted:
            return None  # the reference holds none of the fields asked for
    try:
        got = metrics.parse_json(text)
    except ValueError:
        got = None
    return metrics.field_accuracy(got, wanted)


def _json_object(value: Any) -> dict[str, Any] | None:
    if isinstance(value, str):
        try:
            value = metrics.parse_json(value)
        except ValueError:
            return None
    return value if isinstance(value, dict) else None


_MATCHES: dict[str, Callable[[str, str], Any]] = {"search": re.search,
                                                  "full": lambda pattern, text: re.fullmatch(pattern, text.strip())}


def _regex(item: Any, text: str, calls: Any, row: dict[str, Any]) -> float:
    return float(_MATCHES[item.match](item.pattern, text) is not None)


def reference_calls(value: Any) -> list[dict[str, Any]]:
    """The calls a reference holds: a list of calls, {tool_calls: [...]}, one call {name, arguments}, their JSON
    text, or text with hermes <tool_call> blocks; a plain text reference calls nothing."""
    if isinstance(value, str):
        if "<tool_call>" in value:
            return parse_hermes_calls(value)[1]
        try:
            value = json.loads(value)
        except ValueError:
            return []
    if isinstance(value, dict):
        value = value.get("tool_calls", [value] if "name" in value or "function" in value else [])
    return [call for call in value if isinstance(call, dict)] if isinstance(value, list) else []


def _tool_call(item: Any, text: str, calls: Any, row: dict[str, Any]) -> float | None:
    reference = row.get(item.reference)
    if reference is None:
        return None
    answer_calls = calls if calls is not None else parse_hermes_calls(text)[1]
    return metrics.tool_call_match(answer_calls, reference_calls(reference))


def _length(item: Any, text: str, calls: Any, row: dict[str, Any]) -> float:
    size = len(text.strip())
    return 1.0 if size <= item.max_chars else max(0.0, 2.0 - size / item.max_chars)


def _graded(item: Any, text: str, calls: Any, row: dict[str, Any]) -> float:
    return grade(item, sample=sample_of(text, tool_calls=calls), item=row)


TEXT_METRICS = {"exact_match": metrics.exact_match, "token_f1": metrics.token_f1, "rouge_l": metrics.rouge_l}
SCORERS: dict[str, Callable[..., float | None]] = {
    **{t: _text_metric for t in TEXT_METRICS}, "json_valid": _json_valid, "json_fields": _json_fields,
    "regex": _regex, "tool_call": _tool_call, "length": _length, **{t: _graded for t in GRADER_TYPES},
}
_NEEDS_REFERENCE = ("exact_match", "token_f1", "rouge_l", "json_fields", "tool_call")


# -------------------------------------------------------------------------------------------- the callables


class RowReward:
    """A built-in reward or an OpenAI grader, scoring each completion against its row."""

    def __init__(self, item: Any, *, name: str, label: str, json_columns: Collection[str]):
        self.item, self.__name__, self.label = item, name, label
        self.json_columns = frozenset(json_columns)
        self.concurrent = item.type in GRADER_TYPES and bool(score_model_graders(item))
        self.unreadable = 0  # answers a grader model replied to without a score

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], completion_ids: Any = None,
                 **kwargs: Any) -> list[float | None]:
        columns = decoded_columns(kwargs, json_columns=self.json_columns)
        if self.item.type in _NEEDS_REFERENCE and not isinstance(columns.get(self.item.reference), list):
            raise RewardError(f"{self.label}: no column {self.item.reference!r} in the rows (columns: "
                              f"{', '.join(_column_names(columns))})")
        rows = _rows(prompts, columns, len(completions))
        if self.concurrent and len(rows) > 1:
            with ThreadPoolExecutor(max_workers=min(ENDPOINT_THREADS, len(rows))) as pool:
                return list(pool.map(self._score, completions, rows))
        return [self._score(completion, row) for completion, row in zip(completions, rows, strict=True)]

    def _score(self, completion: Any, row: dict[str, Any]) -> float | None:
        text, calls = answer_of(completion)
        try:
            return SCORERS[self.item.type](self.item, text, calls, row)
        except UnreadableScore as exc:
            if not self.unreadable:  # once per reward: a grader model that ignores the format says so in the log
                print(f"[finetune] {self.label}: {exc}; such answers get no score from it", flush=True)
            self.unreadable += 1
            return None
        except (GraderError, ValueError, re.error) as exc:
            raise RewardError(f"{self.label}: {exc}") from None


async def _awaited(value: Any) -> Any:
    return await value


class UserFunctionReward:
    """A `file.py:function` reward: the user's function, called as trl calls it, its result checked."""

    def __init__(self, function: Callable[..., Any], *, path: Path, shown: str, name: str, label: str,
                 json_columns: Collection[str]):
        self.function, self.path, self.shown = function, path, shown
        self.__name__, self.label = name, label
        self.json_columns = frozenset(json_columns)

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], completion_ids: Any = None,
                 **kwargs: Any) -> list[float | None]:
        columns = decoded_columns(kwargs, json_columns=self.json_columns)
        try:
            values = self.function(prompts=prompts, completions=completions, completion_ids=completion_ids, **columns)
            if inspect.isawaitable(values):  # trl 1.16 takes async reward functions too
                values = asyncio.run(_awaited(values))
        except Exception as exc:
            raise RewardError(f"{self.label}: {user_failure(exc, path=self.path, shown=self.shown)}") from None
        try:
            return checked_values(values, len(completions))
        except ValueError as exc:
            function = getattr(self.function, "__name__", "function")
            raise RewardError(f"{self.label}: {self.shown}:{function} {exc}") from None


def _function_reward(item: Any, *, files: Mapping[str, Path], modules: dict[Path, ModuleType], name: str,
                     label: str, json_columns: Collection[str]) -> UserFunctionReward:
    shown, function_name = split_function(item.function)
    path = files.get(item.function, Path(shown))  # without the node's copy: relative to the working directory
    try:
        function = load_function(path, function_name, shown=shown, modules=modules)
    except RewardError as exc:
        raise RewardError(f"{label}: {exc}") from None
    return UserFunctionReward(function, path=path, shown=shown, name=name, label=label, json_columns=json_columns)


def _check_keys(item: Any, *, label: str) -> None:
    """A score_model's key must be there before training starts, not at its first request."""
    for grader in score_model_graders(item):
        try:
            api_key(grader)
        except GraderError as exc:
            raise RewardError(f"{label}: {exc}") from None


def build_rewards(items: Sequence[Any], *, files: Mapping[str, Path] | None = None,
                  json_columns: Collection[str] = ()) -> list[RewardFunction]:
    """One trl reward function per item, in order, each named reward_name(...). `files` maps a function reward's
    `file.py:function` as the spec writes it to its shipped copy; `json_columns` are decoded before scoring."""
    names = reward_names(list(items))
    modules: dict[Path, ModuleType] = {}
    rewards: list[RewardFunction] = []
    for index, (item, name) in enumerate(zip(items, names, strict=True)):
        label = f"objective.rewards[{index}] ({name})"
        if item.type == "function":
            rewards.append(_function_reward(item, files=files or {}, modules=modules, name=name, label=label,
                                            json_columns=json_columns))
            continue
        _check_keys(item, label=label)
        rewards.append(RowReward(item, name=name, label=label, json_columns=json_columns))
    return rewards


def weights(items: Sequence[Any]) -> list[float]:
    """trl's reward_weights, in the order of build_rewards."""
    return [float(item.weight) for item in items]


# -------------------------------------------------------------------------------------------- held-out scoring


def score_rows(items: Sequence[Any], *, answers: list[str], rows: list[dict[str, Any]],
               prompts: Sequence[Any] | None = None, files: Mapping[str, Path] | None = None,
               json_columns: Collection[str] = ()) -> dict[str, Any]:
    """Held-out answers scored by every reward, as trl would score them: {mean: the weighted total's mean over the
    answers (a None counts 0, as in trl), means: {name: mean over the answers it applies to}, counts: {name: answers
    it applies to}, n}. A reward that applies to none is in counts (0), not in means. `prompts`: one per row
    (default: each row's `prompt`)."""
    if len(answers) != len(rows) or (prompts is not None and len(prompts) != len(rows)):
        raise ValueError(f"{len(answers)} answers and {len(prompts or rows)} prompts for {len(rows)} rows")
    rewards = build_rewards(items, files=files, json_columns=json_columns)
    keys = sorted({key for row in rows for key in row if key != "prompt"})
    columns = {key: [row.get(key) for row in rows] for key in keys}
    prompts = list(prompts) if prompts is not None else [row.get("prompt") for row in rows]
    totals = [0.0] * len(answers)
    means: dict[str, float] = {}
    counts: dict[str, int] = {}
    for item, reward in zip(items, rewards, strict=True):
        values = reward(prompts, answers, None, **columns)
        scored = [v for v in values if v is not None]
        counts[reward.__name__] = len(scored)
        if scored:
            means[reward.__name__] = round(sum(scored) / len(scored), 6)
        totals = [t + item.weight * v if v is not None else t for t, v in zip(totals, values, strict=True)]
    mean = round(sum(totals) / len(totals), 6) if totals else None
    return {"mean": mean, "means": means, "counts": counts, "n": len(answers)}
