"""The rewards of objective grpo (`objective.rewards`), what scores a sampled answer: built-in verifiable rewards
(exact_match, token_f1, rouge_l, json_valid, json_fields, tool_call: the scorers of sdk.evaluation.metrics; regex,
length), a Python function with trl's reward signature (`file.py:function`), or an OpenAI grader object as a
reinforcement fine-tuning job takes it (string_check, text_similarity, score_model, python, multi; score_model also
names the OpenAI-compatible endpoint serving its model, `base_url`, our extension). A string is shorthand
(`exact_match`, `rewards.py:score`); every top-level item has a `weight` (trl sums the weighted rewards). Pure
pydantic: checked on the client before launch; sdk.evaluation.rewards runs the items on the node."""

from __future__ import annotations

import ast
import difflib
import keyword
import re
from functools import lru_cache
from typing import Annotated, Any, Literal, Union

from pydantic import BeforeValidator, Field, create_model, field_validator, model_validator

from sdk.core.parts import EndpointUrl, SpecPart

GRADER_TYPES = ("string_check", "text_similarity", "score_model", "python", "multi")
REWARD_TYPES = ("exact_match", "token_f1", "rouge_l", "json_valid", "json_fields", "regex", "tool_call", "length",
                "function", *GRADER_TYPES)

# OpenAI types a pasted grader may carry that cannot run here, and what to write instead.
UNSUPPORTED_TYPES = {"label_model": "label_model graders are not supported: use a score_model grader whose prompt "
                                    "asks for 1 when the label passes and 0 otherwise"}
# calculate_output's functions: name -> (fewest, most) arguments; None: any number.
FORMULA_FUNCTIONS: dict[str, tuple[int, int | None]] = {"min": (1, None), "max": (1, None), "abs": (1, 1),
                                                        "floor": (1, 1), "ceil": (1, 1), "exp": (1, 1),
                                                        "sqrt": (1, 1), "log": (1, 2)}
_FORMULA_WORDS = "numbers, grader names, + - * / ^ (or **), parentheses and " + " ".join(FORMULA_FUNCTIONS)


# ------------------------------------------------------------------------------------------ checks


def check_type(tag: Any, known: tuple[str, ...], *, what: str) -> None:
    """One line for a missing or unknown `type`, listing the known ones (pydantic's own says far less)."""
    if tag in known:
        return
    if tag in UNSUPPORTED_TYPES:
        raise ValueError(UNSUPPORTED_TYPES[tag])
    close = difflib.get_close_matches(str(tag), known, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    problem = f"a {what} needs a 'type'" if tag is None else f"unknown {what} type {tag!r}{hint}"
    raise ValueError(f"{problem} (one of: {', '.join(known)})")


def split_function(value: str) -> tuple[str, str]:
    """('rewards.py', 'score') from 'rewards.py:score'; ValueError unless it has that shape. The file itself is
    checked where the spec is submitted (it may not exist on the machine that validates)."""
    file, _, name = value.strip().rpartition(":")
    if not file.endswith(".py") or file == ".py" or not name.isidentifier() or keyword.iskeyword(name):
        raise ValueError(f"{value!r} is not file.py:function (e.g. rewards.py:score)")
    return file, name


@lru_cache(maxsize=256)
def parse_formula(text: str, names: frozenset[str]) -> ast.Expression:
    """calculate_output as a checked syntax tree: only `names`, numbers, + - * / ** (`^` is a power, as in OpenAI's
    formulas), parentheses and FORMULA_FUNCTIONS. ValueError names what is not allowed."""
    try:  # ^ becomes ** before parsing: Python reads ^ as xor, with a precedence below + and -
        tree = ast.parse(text.replace("^", "**"), mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"calculate_output {text!r} is not an arithmetic expression ({exc.msg})") from None
    problem = _formula_problem(tree.body, names)
    if problem:
        raise ValueError(f"calculate_output {text!r}: {problem}")
    return tree


def _formula_problem(node: ast.expr, names: frozenset[str]) -> str | None:
    """What in `node` a formula may not hold, or None."""
    if isinstance(node, ast.Constant):
        number = isinstance(node.value, (int, float)) and not isinstance(node.value, bool)
        return None if number else f"{node.value!r} is not a number"
    if isinstance(node, ast.Name):
        close = difflib.get_close_matches(node.id, sorted(names), n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return None if node.id in names else f"unknown name {node.id!r} ({hint}graders: {', '.join(sorted(names))})"
    if isinstance(node, ast.Call):
        children, problem = node.args, _call_problem(node)
    elif isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow)):
        children, problem = [node.left, node.right], None
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
        children, problem = [node.operand], None
    else:
        return f"{ast.unparse(node)} is not allowed (use {_FORMULA_WORDS})"
    return problem or next(filter(None, (_formula_problem(child, names) for child in children)), None)


def _call_problem(node: ast.Call) -> str | None:
    function = node.func.id if isinstance(node.func, ast.Name) else None
    if function not in FORMULA_FUNCTIONS:
        return f"unknown function {ast.unparse(node.func)!r} (functions: {', '.join(FORMULA_FUNCTIONS)})"
    fewest, most = FORMULA_FUNCTIONS[function]
    if node.keywords or len(node.args) < fewest or (most is not None and len(node.args) > most):
        wanted = f"{fewest} or more" if most is None else str(fewest) if fewest == most else f"{fewest} to {most}"
        return f"{function}() takes {wanted} argument(s), not {ast.unparse(node)}"
    return None


def _top_level_names(tree: ast.Module) -> set[str]:
    names = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    names |= {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
    imports = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    return names | {alias.asname or alias.name for n in imports for alias in n.names}


# ------------------------------------------------------------------------------------------ OpenAI graders


class _Grader(SpecPart):
    name: str = Field(min_length=1, description="the grader's name (the metric key rewards/<name>/mean)")


class _TextGrader(_Grader):
    input: str = Field(description="the text graded, a template such as {{sample.output_text}}")
    reference: str = Field(description="what it is graded against, a template such as {{item.answer}}")


class StringCheckGrader(_TextGrader):
    """1 when the check holds, else 0: eq and ne compare exactly; like: the input contains the reference;
    ilike: the same, ignoring case."""

    type: Literal["string_check"] = "string_check"
    operation: Literal["eq", "ne", "like", "ilike"] = Field(description="eq, ne, like (contains) or ilike "
                                                                        "(contains, ignoring case)")


SimilarityMetric = Literal["fuzzy_match", "bleu", "gleu", "meteor", "cosine", "rouge_1", "rouge_2", "rouge_3",
                           "rouge_4", "rouge_5", "rouge_l"]
# Metrics OpenAI offers that need what a reward here does not have, and what to use instead.
UNAVAILABLE_METRICS = {
    "cosine": "cosine compares embeddings, which needs an embeddings endpoint: use fuzzy_match, rouge_l or bleu, "
              "or a score_model grader",
    "meteor": "meteor needs the WordNet data (nltk), which is not shipped: use rouge_l or bleu",
}


class TextSimilarityGrader(_TextGrader):
    """The metric's score in [0, 1] of the input against the reference (sdk.evaluation.graders defines each)."""

    type: Literal["text_similarity"] = "text_similarity"
    evaluation_metric: SimilarityMetric = Field(description="fuzzy_match, bleu, gleu, rouge_1 … rouge_5 or rouge_l")
    pass_threshold: float | None = Field(None, description="OpenAI's pass mark for evals; accepted so a pasted "
                                                           "grader validates: the reward is the score itself")

    @field_validator("evaluation_metric")
    @classmethod
    def _computable(cls, value: str) -> str:
        if value in UNAVAILABLE_METRICS:
            raise ValueError(UNAVAILABLE_METRICS[value])
        return value


class TextPart(SpecPart):
    type: Literal["input_text", "output_text"]
    text: str


def _text_only(value: Any) -> Any:
    media = [p["type"] for p in (value if isinstance(value, list) else [value]) if isinstance(p, dict)
             and p.get("type") in ("input_image", "input_audio")]
    if media:
        raise ValueError(f"{media[0]} parts are not supported: the grader model here reads text (input_text parts)")
    return value


class GraderMessage(SpecPart):
    role: Literal["user", "assistant", "system", "developer"]
    content: Annotated[Union[str, TextPart, list[TextPart]], BeforeValidator(_text_only)] = Field(
        description="the message's text (templates allowed), or a list of input_text parts")
    type: Literal["message"] | None = None


class SamplingParams(SpecPart):
    """OpenAI's sampling_params of a score_model grader; the grader is greedy (temperature 0) unless told."""

    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = None
    max_completions_tokens: int | None = Field(None, ge=1, description="tokens it may write (sent as max_tokens)")
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None


class ScoreModelGrader(_Grader):
    """A model behind an OpenAI-compatible endpoint reads the rendered messages and replies with a score (OpenAI's
    {"result": number} or any text whose first number is the score), clamped into `range`."""

    type: Literal["score_model"] = "score_model"
    model: str = Field(min_length=1, description="the grader model's name at base_url")
    input: list[GraderMessage] = Field(min_length=1, description="the messages sent to the grader model, with "
                                                                 "templates such as {{sample.output_text}}")
    range: list[float] = Field([0.0, 1.0], description="[lowest, highest] score; the reply is clamped into it")
    sampling_params: SamplingParams | None = None
    pass_threshold: float | None = Field(None, description="OpenAI's pass mark for evals; accepted so a pasted "
                                                           "grader validates: the reward is the score itself")
    base_url: EndpointUrl = Field(description="the OpenAI-compatible endpoint serving `model` (our extension to OpenAI's "
                                      "grader), e.g. https://api.openai.com/v1 or http://127.0.0.1:8000/v1")
    api_key_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="the environment "
                                    "variable holding the endpoint's key where the run executes (never the key)")
    timeout_s: float = Field(60, gt=0, le=600, description="seconds to wait for one reply")

    @field_validator("range")
    @classmethod
    def _range(cls, value: list[float]) -> list[float]:
        if len(value) != 2 or not value[0] < value[1]:
            raise ValueError(f"must be [lowest, highest] with lowest below highest, not {value}")
        return value


class PythonGrader(_Grader):
    """`source` defines grade(sample, item) -> float; it runs in the trainer's Python, not in OpenAI's sandbox."""

    type: Literal["python"] = "python"
    source: str = Field(description="Python code defining grade(sample, item) -> float")
    image_tag: str | None = Field(None, description="OpenAI's sandbox image; accepted and ignored")

    @model_validator(mode="after")
    def _compiles(self) -> PythonGrader:
        try:
            tree = compile(self.source, f"<grader {self.name}>", "exec", flags=ast.PyCF_ONLY_AST, dont_inherit=True)
        except SyntaxError as exc:
            raise ValueError(f"python grader {self.name!r}: line {exc.lineno}: {exc.msg}") from None
        if "grade" not in _top_level_names(tree):
            raise ValueError(f"python grader {self.name!r}: the source defines no grade(sample, item) function")
        return self


class MultiGrader(_Grader):
    """Its graders' scores combined by `calculate_output`, an arithmetic expression over their names."""

    type: Literal["multi"] = "multi"
    graders: dict[str, Grader] = Field(min_length=1, description="name -> grader (string_check, text_similarity, "
                                                                 "score_model, python or multi)")
    calculate_output: str = Field(description=f"an expression of {_FORMULA_WORDS}, e.g. 0.7 * exact + 0.3 * style")

    @model_validator(mode="after")
    def _formula(self) -> MultiGrader:
        parse_formula(self.calculate_output, frozenset(self.graders))
        return self


def _grader_shorthand(value: Any) -> Any:
    if isinstance(value, dict):
        check_type(value.get("type"), GRADER_TYPES, what="grader")
    return value


Grader = Annotated[Union[StringCheckGrader, TextSimilarityGrader, ScoreModelGrader, PythonGrader, MultiGrader],
                   Field(discriminator="type"), BeforeValidator(_grader_shorthand)]
MultiGrader.model_rebuild()


# ------------------------------------------------------------------------------------------ reward items


class _Weighted(SpecPart):
    weight: float = Field(1.0, allow_inf_nan=False, description="its share of the summed reward (0: logged, not "
                                                                "trained on; negative: penalized)")


class _BuiltIn(_Weighted):
    name: str | None = Field(None, min_length=1, description="the metric name (rewards/<name>/mean); default: "
                                                             "the type, or the function's name")


class _Compares(_BuiltIn):
    reference: str = Field("reference", min_length=1, description="the row field holding the reference answer")


class CompareReward(_Compares):
    """The answer against the row's reference, as sdk.evaluation.metrics scores it: exact_match, token_f1, rouge_l,
    or tool_call (the answer's calls, hermes <tool_call> blocks or its message's tool_calls, equal the reference's)."""

    type: Literal["exact_match", "token_f1", "rouge_l", "tool_call"]


class JsonValidReward(_BuiltIn):
    """1 when the answer parses as JSON (a ```json fence around it allowed)."""

    type: Literal["json_valid"] = "json_valid"


class JsonFieldsReward(_Compares):
    """The share of the reference object's fields that the answer's object has with equal values."""

    type: Literal["json_fields"] = "json_fields"
    fields: list[str] | None = Field(None, min_length=1, description="only these fields of the reference count")


class RegexReward(_BuiltIn):
    """1 when the answer matches `pattern`, else 0."""

    type: Literal["regex"] = "regex"
    pattern: str = Field(description="a Python regular expression, e.g. '^<think>.*</think>'")
    match: Literal["search", "full"] = Field("search", description="search: anywhere in the answer; full: the "
                                                                   "whole answer (surrounding whitespace aside)")

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            return re.compile(value).pattern
        except re.error as exc:
            raise ValueError(f"pattern {value!r} is not a regular expression: {exc}") from None


class LengthReward(_BuiltIn):
    """1.0 for an answer of at most max_chars characters, falling linearly to 0 at twice as many."""

    type: Literal["length"] = "length"
    max_chars: int = Field(ge=1, description="characters an answer may have at full reward; the reward falls "
                                             "linearly to 0 at twice as many")


class FunctionReward(_BuiltIn):
    """A Python function with trl's reward signature: f(prompts, completions, **kwargs) -> list[float | None],
    one reward per completion (None: not applicable); kwargs hold the row's other fields as lists."""

    type: Literal["function"] = "function"
    function: str = Field(description="file.py:function, the file relative to the spec (shipped with the run)")

    @field_validator("function")
    @classmethod
    def _shape(cls, value: str) -> str:
        split_function(value)
        return value.strip()


def _weighted(grader: type[_Grader]) -> Any:
    """A grader as a top-level reward item: its fields and a weight (inside a multi, the formula weighs it)."""
    return create_model(grader.__name__.replace("Grader", "Reward"), __base__=(grader, _Weighted),
                        __module__=__name__)


StringCheckReward, TextSimilarityReward, ScoreModelReward, PythonReward, MultiReward = map(
    _weighted, (StringCheckGrader, TextSimilarityGrader, ScoreModelGrader, PythonGrader, MultiGrader))


def reward_shorthand(value: Any) -> Any:
    """A reward item as its model reads it: `exact_match` -> {type: exact_match}, `file.py:function` -> a function;
    a mapping passes (a `function` key without a type: a function). Never raises: _reward_item names a bad type."""
    if isinstance(value, str):
        text = value.strip()
        value = {"type": "function", "function": text} if ".py" in text else {"type": text}
    if isinstance(value, dict) and "type" not in value and "function" in value:
        value = {"type": "function", **value}
    return value


def _reward_item(value: Any) -> Any:
    value = reward_shorthand(value)
    if isinstance(value, dict):  # one line listing the known types, where pydantic's discriminator says far less
        check_type(value.get("type"), REWARD_TYPES, what="reward")
    return value


RewardSpec = Annotated[
    Union[CompareReward, JsonValidReward, JsonFieldsReward, RegexReward, LengthReward, FunctionReward,
          StringCheckReward, TextSimilarityReward, ScoreModelReward, PythonReward, MultiReward],
    Field(discriminator="type"), BeforeValidator(_reward_item)]


# ------------------------------------------------------------------------------------------ names


def _base_name(item: Any) -> str:
    name = item.name or (split_function(item.function)[1] if item.type == "function" else item.type)
    return " ".join(name.split()).replace("/", "_")  # trl logs rewards/<name>/mean: a slash would split the key


def reward_names(items: list[Any]) -> list[str]:
    """Each item's display name, unique: a repeated name gets its index (`regex`, `regex_1`)."""
    names: list[str] = []
    for index, item in enumerate(items):
        name = _base_name(item)
        names.append(f"{name}_{index}" if name in names else name)
    return names


def reward_name(item: Any, index: int, *, items: list[Any] | None = None) -> str:
    """The item's display name (the metric key rewards/<name>/mean): its `name`, the function's name or the type;
    given all `items`, made unique by index where repeated."""
    return reward_names(items)[index] if items is not None else _base_name(item)
