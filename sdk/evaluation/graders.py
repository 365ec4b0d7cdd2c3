"""OpenAI's grader objects (sdk.objectives.rewards) scoring one answer, with OpenAI's semantics:

  templates        {{sample.output_text}}, {{sample.output_json.field}}, {{sample.output_tools[0].function.name}},
                   {{item.<field>}}: dotted paths (list indices as [i] or .i), spaces inside the braces allowed;
                   a path that leads nowhere renders as ''; a structure renders as JSON
  string_check     1/0: eq, ne (exact), like (the input contains the reference), ilike (the same, ignoring case)
  text_similarity  the metric's score in [0, 1]:
                     fuzzy_match  difflib's similarity ratio of the two texts, 2·matched characters / both lengths
                     bleu         sentence BLEU to 4-grams over words and punctuation marks, case kept: geometric mean
                                  of the n-gram precisions (an order with no match smoothed as sacrebleu's 'exp'; an
                                  order longer than the answer left out) times the brevity penalty
                     gleu         Google-BLEU: matched 1- to 4-grams over the answer's or the reference's, the smaller
                     rouge_1..5   F1 of the n-grams of lower-cased words;  rouge_l: sdk.evaluation.metrics.rouge_l
  python           `source` run in a fresh namespace as <grader NAME>; its grade(sample, item) is the score
  multi            its graders' scores combined by calculate_output, an arithmetic formula evaluated from its syntax
                   tree (never eval)
  score_model      POST {base_url}/chat/completions with the rendered messages (text parts; temperature 0 unless
                   told); the reply's {"result": x}, else the first number in it, clamped into `range`

`sample` = {output_text, output_json, output_tools} of the answer; `item` = the data row's fields. Standard library
and pydantic only: no torch (the client runs these too)."""

from __future__ import annotations

import ast
import copy
import difflib
import json
import math
import numbers
import re
from collections import Counter
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from types import CodeType, TracebackType
from typing import Any

from sdk.core.errors import FinetuneError
from sdk.data.tools import parse_hermes_calls
from sdk.evaluation.metrics import normalize, parse_json, rouge_l
from sdk.objectives.rewards import parse_formula


class UnreadableScore(Exception):
    """A grader model replied without a score: that answer gets no score from it (trl leaves a None out of the
    weighted sum), rather than failing the run or a score the answer did not earn."""


class GraderError(FinetuneError):
    """A grader could not score an answer: the message names the grader (and the URL, for score_model)."""


# -------------------------------------------------------------------------------------------- sample and templates


def sample_of(text: str, *, tool_calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """OpenAI's `sample` namespace for one answer: output_text (the text before any hermes <tool_call>),
    output_json (the text as JSON, or None) and output_tools (the calls, as chat completions writes them).
    `tool_calls`: the answer's calls when the generator parsed them already (a conversational completion)."""
    if tool_calls is None:
        content, parsed = parse_hermes_calls(text)
        text, tool_calls = content or "", [{"type": "function", "function": call} for call in parsed]
    try:
        output_json = parse_json(text)
    except ValueError:
        output_json = None
    return {"output_text": text, "output_json": output_json, "output_tools": tool_calls}


_TEMPLATE = re.compile(r"\{\{\s*(.*?)\s*\}\}")
_PATH_PART = re.compile(r"[^.\[\]\s]+")
_NOWHERE = object()


def lookup(root: dict[str, Any], path: str) -> Any:
    """The value at a dotted path (`item.a.b`, `sample.output_tools[0].function.name`); None where it leads nowhere."""
    value: Any = root
    for part in _PATH_PART.findall(path):
        value = _step(value, part.strip("'\""))
        if value is _NOWHERE:
            return None
    return value


def _step(value: Any, part: str) -> Any:
    if isinstance(value, dict):
        return value.get(part, _NOWHERE)
    if isinstance(value, list) and part.lstrip("-").isdigit() and -len(value) <= int(part) < len(value):
        return value[int(part)]
    return _NOWHERE


def as_text(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def render(template: str, *, sample: dict[str, Any], item: dict[str, Any]) -> str:
    namespaces = {"sample": sample, "item": item}
    return _TEMPLATE.sub(lambda match: as_text(lookup(namespaces, match.group(1))), template)


# -------------------------------------------------------------------------------------------- text similarity


def fuzzy_match(answer: str, reference: str) -> float:
    return difflib.SequenceMatcher(None, answer, reference, autojunk=False).ratio()


def _words_and_marks(text: str) -> list[str]:
    return re.findall(r"\w+|[^\w\s]", text)


def _ngrams(tokens: list[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def bleu(answer: str, reference: str, *, max_order: int = 4) -> float:
    got, want = _words_and_marks(answer), _words_and_marks(reference)
    if not got or not want:
        return float(got == want)
    log_precision, orders, smoothing = 0.0, 0, 1.0
    for n in range(1, max_order + 1):
        total = len(got) - n + 1
        if total <= 0:  # effective order: a short answer is scored on the orders it has
            break
        matched = sum((_ngrams(got, n) & _ngrams(want, n)).values())
        if n == 1 and matched == 0:
            return 0.0
        if matched == 0:  # sacrebleu's 'exp' smoothing: halve the stand-in count at each order without a match
            smoothing *= 2
        log_precision += math.log(matched / total if matched else 1 / (smoothing * total))
        orders += 1
    brevity = 1.0 if len(got) >= len(want) else math.exp(1 - len(want) / len(got))
    return brevity * math.exp(log_precision / orders)


def gleu(answer: str, reference: str, *, max_order: int = 4) -> float:
    got, want = _words_and_marks(answer), _words_and_marks(reference)
    got_grams = sum((_ngrams(got, n) for n in range(1, max_order + 1)), Counter())
    want_grams = sum((_ngrams(want, n) for n in range(1, max_order + 1)), Counter())
    if not got_grams or not want_grams:
        return float(got == want)
    matched = sum((got_grams & want_grams).values())
    return min(matched / sum(got_grams.values()), matched / sum(want_grams.values()))


def rouge_n(answer: str, reference: str, *, n: int) -> float:
    got_words, want_words = normalize(answer).split(), normalize(reference).split()
    got, want = _ngrams(got_words, n), _ngrams(want_words, n)
    if not got or not want:
        return float(got_words == want_words) if not got and not want else 0.0
    matched = sum((got & want).values())
    if matched == 0:
        return 0.0
    precision, recall = matched / sum(got.values()), matched / sum(want.values())
    return 2 * precision * recall / (precision + recall)


SIMILARITY: dict[str, Callable[[str, str], float]] = {
    "fuzzy_match": fuzzy_match, "bleu": bleu, "gleu": gleu, "rouge_l": rouge_l,
    **{f"rouge_{n}": (lambda a, r, n=n: rouge_n(a, r, n=n)) for n in range(1, 6)},
}


# -------------------------------------------------------------------------------------------- user code


def user_line(exc: BaseException, *, filename: str | Path) -> int | None:
    """The line of the innermost frame of `exc`'s traceback that runs in `filename` (the user's code), if any."""
    wanted = str(filename)
    resolved = Path(wanted).resolve() if not wanted.startswith("<") else None
    line = None
    tb: TracebackType | None = exc.__traceback__
    while tb is not None:
        name = tb.tb_frame.f_code.co_filename
        if name == wanted or (resolved is not None and not name.startswith("<") and Path(name).resolve() == resolved):
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def finite_number(value: Any) -> float | None:
    """`value` as a float when it is a finite real number (bools count as 0 and 1); None otherwise."""
    if not isinstance(value, numbers.Real):  # ints, floats, bools and numpy's scalars; never strings
        return None
    number = float(value)
    return number if math.isfinite(number) else None


@lru_cache(maxsize=64)
def _compiled(name: str, source: str) -> CodeType:
    return compile(source, f"<grader {name}>", "exec", dont_inherit=True)


def _python(grader: Any, *, sample: dict[str, Any], item: dict[str, Any]) -> float:
    filename = f"<grader {grader.name}>"
    namespace: dict[str, Any] = {"__name__": "__grader__"}
    try:
        exec(_compiled(grader.name, grader.source), namespace)  # noqa: S102 - the user's own grader, by design
        # copies: a grader that edits its arguments must not change what the next reward sees
        value = namespace["grade"](copy.deepcopy(sample), copy.deepcopy(item))
    except Exception as exc:
        line = user_line(exc, filename=filename)
        raise GraderError(f"{filename}{f':{line}' if line else ''}: {one_line(exc)}") from None
    number = finite_number(value)
    if number is None:
        raise GraderError(f"{filename}: grade() returned {value!r}, not a finite number")
    return number


# -------------------------------------------------------------------------------------------- multi


_BINARY: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b, ast.Pow: lambda a, b: a ** b,
}
_FUNCTIONS: dict[str, Callable[..., float]] = {
    "min": min, "max": max, "abs": abs, "floor": math.floor, "ceil": math.ceil, "exp": math.exp, "sqrt": math.sqrt,
    "log": math.log,
}


def _evaluate(node: ast.AST, values: dict[str, float]) -> float:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body, values)
    if isinstance(node, ast.Constant):
        return float(node.value)
    if isinstance(node, ast.Name):
        return values[node.id]
    if isinstance(node, ast.UnaryOp):
        operand = _evaluate(node.operand, values)
        return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.BinOp):
        return _BINARY[type(node.op)](_evaluate(node.left, values), _evaluate(node.right, values))
    assert isinstance(node, ast.Call) and isinstance(node.func, ast.Name)  # parse_formula allowed nothing else
    return float(_FUNCTIONS[node.func.id](*(_evaluate(arg, values) for arg in node.args)))


def calculate(formula: str, values: dict[str, float], *, names: frozenset[str]) -> float:
    """calculate_output over the graders' scores (`names`: all the multi's graders, `values`: those it reads);
    ArithmeticError or ValueError when it has no finite value (a division by zero, a square root of -1)."""
    result = _evaluate(parse_formula(formula, names), values)
    if isinstance(result, complex) or not math.isfinite(result):  # (-1) ** 0.5 is complex in Python
        raise ValueError(f"the result is {result}")
    return float(result)


def _multi(grader: Any, *, sample: dict[str, Any], item: dict[str, Any]) -> float:
    names = frozenset(grader.graders)
    used = {node.id for node in ast.walk(parse_formula(grader.calculate_output, names)) if isinstance(node, ast.Name)}
    # only the graders the formula reads: an unread score_model would cost a request for nothing
    values = {name: grade(sub, sample=sample, item=item) for name, sub in grader.graders.items() if name in used}
    try:
        return calculate(grader.calculate_output, values, names=names)
    except (ArithmeticError, ValueError, TypeError) as exc:
        raise GraderError(f"multi grader {grader.name!r}: calculate_output {grader.calculate_output!r}: "
                          f"{one_line(exc)}") from None


# -------------------------------------------------------------------------------------------- dispatch

_OPERATIONS: dict[str, Callable[[str, str], bool]] = {
    "eq": lambda a, b: a == b, "ne": lambda a, b: a != b, "like": lambda a, b: b in a,
    "ilike": lambda a, b: b.lower() in a.lower(),
}


def _scored_by_model(grader: Any, *, sample: dict[str, Any], item: dict[str, Any]) -> float:
    from sdk.evaluation.score_model import score_model  # it imports this module's helpers

    return score_model(grader, sample=sample, item=item)


def _string_check(grader: Any, *, sample: dict[str, Any], item: dict[str, Any]) -> float:
    text, reference = render(grader.input, sample=sample, item=item), render(grader.reference, sample=sample, item=item)
    return float(_OPERATIONS[grader.operation](text, reference))


def _text_similarity(grader: Any, *, sample: dict[str, Any], item: dict[str, Any]) -> float:
    text, reference = render(grader.input, sample=sample, item=item), render(grader.reference, sample=sample, item=item)
    return SIMILARITY[grader.evaluation_metric](text, reference)


_GRADE: dict[str, Callable[..., float]] = {
    "string_check": _string_check, "text_similarity": _text_similarity, "python": _python, "multi": _multi,
    "score_model": _scored_by_model,
}


def grade(grader: Any, *, sample: dict[str, Any], item: dict[str, Any]) -> float:
    """One grader's score of one answer (`sample`, see sample_of) to one row (`item`); GraderError when it has none."""
    return _GRADE[grader.type](grader, sample=sample, item=item)


def score_model_graders(grader: Any) -> list[Any]:
    """The score_model graders in `grader` (itself, or inside a multi): those that ask an endpoint."""
    if grader.type == "multi":
        return [found for sub in grader.graders.values() for found in score_model_graders(sub)]
    return [grader] if grader.type == "score_model" else []
