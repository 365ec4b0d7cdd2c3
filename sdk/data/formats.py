"""Row formats: detected from the rows (or named in `data.format`), each row normalized into one `Sample`.

One registration per format (name → the columns that identify it → a normalizer that raises `RowError`
naming what is wrong). The client runs these before launch and the node runs the same ones, so a
malformed row is reported as `file:line` before a GPU is paid for. No torch here.

  alpaca             instruction / input / output (also any column names mapped with data.fields); LLaMA-Factory's
                     `system` and `history` ([[instruction, response], ...]) make it a conversation
  sharegpt           conversations: [{from: human|gpt|system, value}]  (role/content turns accepted too); tool calling:
                     function_call turns (the call as JSON) and observation turns (its result), `tools` as JSON text
  messages           OpenAI chat: messages: [{role: system|user|assistant, content, weight?}]; content is text or a
                     list of parts ([{type: text, text}]): text parts are joined with newlines, as vLLM joins them
                     when it serves the model; image, audio and file parts are refused (text models only)
                     tool calling: `tools` beside `messages`, assistant turns with `tool_calls`, `tool` turns with
                     `tool_call_id` (sdk.data.tools); arguments must be JSON objects
  prompt_completion  prompt / completion (text, or conversational turns)
  text               text
  preference         prompt / chosen / rejected; or chosen / rejected conversations sharing the prompt turns; or
                     ShareGPT's conversations / chosen / rejected (one {from, value} message each)
  openai_preference  input.messages / preferred_output / non_preferred_output (hosted fine-tuning APIs' DPO rows)
  feedback           prompt / completion / label (true: a desirable answer, false: an undesirable one), or chat turns
                     (messages or conversations) ending with the labelled assistant answer; trl's KTO rows
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Union

from sdk.core.spec import FieldMap
from sdk.data.tools import check_calls, read_tools
from sdk.data.turns import RowError, check_turns, read_response, read_turns
from sdk.objectives.base import ROW_FORMATS, RowKind


@dataclass(frozen=True)
class Instruction:
    """An instruction prompt, rendered by the template (instruction, chat or plain)."""

    instruction: str
    input: str | None = None


Prompt = Union[Instruction, str, list]  # an instruction, text used as written, or chat turns ending with the user


@dataclass
class Sample:
    """One row, normalized. kind: text (a document), pair (prompt → completion), conversation (several
    assistant turns to learn), preference (prompt → chosen over rejected), feedback (prompt → a completion
    labelled desirable or not)."""

    kind: Literal["text", "pair", "conversation", "preference", "feedback"]
    where: str = ""
    text: str | None = None
    prompt: Prompt | None = None
    completion: str | None = None
    turns: list[dict[str, Any]] = field(default_factory=list)
    chosen: str | None = None
    rejected: str | None = None
    label: bool | None = None  # feedback: is the completion desirable?
    tools: list[dict[str, Any]] | None = None  # conversation: the functions offered (sdk.data.tools.read_tools)
    fields: dict[str, Any] = field(default_factory=dict)  # the row as read: the references rewards look up by name
    part: int = 0  # which source of data.parts() the row came from (its template, its count in the summary)

    @property
    def chat(self) -> bool:
        return self.kind == "conversation" or isinstance(self.prompt, list)


@dataclass(frozen=True)
class Context:
    """What normalizing needs from the spec."""

    fields: FieldMap
    instruction: str | None = None  # data.instruction: the fixed instruction of classification rows
    labels: list[str] | None = None  # eval.labels: an integer output is an index into them
    prompts: bool = False  # the objective samples its own answers (grpo): a row may stop at the prompt


@dataclass(frozen=True)
class RowFormat:
    name: str
    layout: str  # what the rows look like, for messages
    columns: Callable[[FieldMap], tuple[str, ...]]  # present in a row of this format
    normalize: Callable[[dict[str, Any], Context], Sample]
    also: Callable[[dict[str, Any], Context], bool] | None = None  # what detection needs beyond the columns

    @property
    def kind(self) -> RowKind:
        return ROW_FORMATS[self.name]


# ------------------------------------------------------------------------------------------ helpers


def _text(row: dict[str, Any], column: str, *, optional: bool = False, what: str | None = None) -> str | None:
    value = row.get(column)
    if value is None:
        if optional:
            return None
        raise RowError(f"missing field {column!r}" + (f" ({what})" if what else ""))
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise RowError(f"{column!r} must be text, not {type(value).__name__}")
    text = str(value)
    if not text.strip() and not optional:
        raise RowError(f"empty {column!r}")
    return text


def _label(row: dict[str, Any], column: str, ctx: Context) -> str:
    value = row.get(column)
    if isinstance(value, int) and not isinstance(value, bool) and ctx.labels:
        if not 0 <= value < len(ctx.labels):
            raise RowError(f"{column!r}: label index {value} is outside eval.labels ({len(ctx.labels)} labels)")
        return ctx.labels[value]
    return _text(row, column)  # type: ignore[return-value]


def _conversation(row: dict[str, Any], turns: list[dict[str, Any]], name: str, ctx: Context) -> Sample:
    if ctx.prompts and row.get(ctx.fields.tools) not in (None, [], "", "[]", "null"):
        raise RowError(f"a {ctx.fields.tools!r} column: rows offering tools cannot train under grpo (trl renders one "
                       "set of tools for every prompt); describe the functions in the system turn, score calls with "
                       "the tool_call reward")
    if ctx.prompts and turns and turns[-1]["role"] == "user":  # an OpenAI reinforcement row: the prompt alone
        check_turns(turns, name, ends_with="user")
        return Sample("pair", prompt=turns)
    check_turns(turns, name, ends_with="assistant")
    if all(t.get("weight", 1) == 0 for t in turns if t["role"] == "assistant"):
        raise RowError(f"{name}: every assistant turn has weight 0: nothing to learn")
    offered = row.get(ctx.fields.tools)
    empty = offered in (None, [], "") or (isinstance(offered, str) and offered.strip() in ("", "[]", "null"))
    tools = None if empty else read_tools(offered, ctx.fields.tools)
    check_calls(turns, tools, name)
    return Sample("conversation", turns=turns, tools=tools)


def _distinct(chosen: str, rejected: str) -> None:
    if chosen.strip() == rejected.strip():
        raise RowError("chosen equals rejected: nothing to prefer")


# ------------------------------------------------------------------------------------------ formats


def _alpaca(row: dict[str, Any], ctx: Context) -> Sample:
    f = ctx.fields
    instruction = _text(row, f.instruction, optional=ctx.instruction is not None) or ctx.instruction
    if instruction is None or not instruction.strip():
        raise RowError(f"empty {f.instruction!r}")
    input_text = _text(row, f.input, optional=True)
    completion = _label(row, f.output, ctx)
    history, system = row.get("history"), row.get("system")
    if history or (isinstance(system, str) and system.strip()):  # LLaMA-Factory's alpaca: earlier turns, a system prompt
        return _alpaca_conversation(history or [], system, _joined_instruction(instruction, input_text), completion)
    return Sample("pair", prompt=Instruction(instruction, input_text or None), completion=completion)


def _joined_instruction(instruction: str, input_text: str | None) -> str:
    return instruction if not input_text else f"{instruction}\n\n{input_text}"


def _alpaca_conversation(history: Any, system: Any, user: str, answer: str) -> Sample:
    """An alpaca row with `history` ([[instruction, response], ...], the turns before it) and/or `system`: a
    conversation whose every answer is learned, as LLaMA-Factory trains it."""
    if not isinstance(history, list) or not all(isinstance(h, list) and len(h) == 2 and all(isinstance(x, str) for x in h)
                                                for h in history):
        raise RowError("'history' must be a list of [instruction, response] pairs of text (the turns before this row)")
    if system is not None and not isinstance(system, str):
        raise RowError(f"'system' must be text, not {type(system).__name__}")
    turns = [{"role": "system", "content": system}] if system and system.strip() else []
    for question, reply in history:
        turns += [{"role": "user", "content": question}, {"role": "assistant", "content": reply}]
    turns += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    check_turns(turns, "history", ends_with="assistant")
    return Sample("conversation", turns=turns)


def _with_system(row: dict[str, Any], turns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """ShareGPT's separate `system` column (LLaMA-Factory writes one) as the first turn."""
    system = row.get("system")
    if isinstance(system, str) and system.strip() and turns[0]["role"] != "system":
        return [{"role": "system", "content": system}, *turns]
    return turns


def _sharegpt(row: dict[str, Any], ctx: Context) -> Sample:
    column = ctx.fields.conversations
    if column not in row:
        raise RowError(f"missing field {column!r}")
    return _conversation(row, _with_system(row, read_turns(row[column], column, tools=True)), column, ctx)


def _messages(row: dict[str, Any], ctx: Context) -> Sample:
    column = ctx.fields.messages
    if column not in row:
        raise RowError(f"missing field {column!r}")
    return _conversation(row, read_turns(row[column], column, weights=True, tools=True), column, ctx)


def _prompt(value: Any, name: str) -> Prompt:
    if isinstance(value, list):
        turns = read_turns(value, name)
        check_turns(turns, name, ends_with="user")
        return turns
    if not isinstance(value, str):
        raise RowError(f"{name!r} must be text or a list of turns, not {type(value).__name__}")
    if not value.strip():
        raise RowError(f"empty {name!r}")
    return value


def _prompt_completion(row: dict[str, Any], ctx: Context) -> Sample:
    f = ctx.fields
    for column in (f.prompt,) if ctx.prompts else (f.prompt, f.completion):
        if row.get(column) is None:
            raise RowError(f"missing field {column!r}")
    completion = row.get(f.completion)
    return Sample("pair", prompt=_prompt(row[f.prompt], f.prompt),
                  completion=None if completion is None else read_response(completion, f.completion))


def _plain_text(row: dict[str, Any], ctx: Context) -> Sample:
    return Sample("text", text=_text(row, ctx.fields.text))


def _preference(row: dict[str, Any], ctx: Context) -> Sample:
    f = ctx.fields
    for column in (f.chosen, f.rejected):
        if row.get(column) is None:
            raise RowError(f"missing field {column!r}")
    chosen, rejected = row[f.chosen], row[f.rejected]
    if row.get(f.prompt) is not None:
        prompt = _prompt(row[f.prompt], f.prompt)
        if isinstance(prompt, str) and isinstance(chosen, str) and isinstance(rejected, str) \
                and chosen.startswith(prompt) and rejected.startswith(prompt):
            raise RowError(f"{f.chosen!r} and {f.rejected!r} repeat the prompt: give only the responses, "
                           f"or drop {f.prompt!r} for the implicit-prompt form")
        if isinstance(prompt, list) and isinstance(chosen, list) and len(chosen) > 1 and chosen[: len(prompt)] == row[f.prompt]:
            raise RowError(f"{f.chosen!r} repeats the prompt turns: give only the assistant's response")
    elif row.get(f.conversations) is not None:  # ShareGPT's form: the prompt turns, then one message per response
        prompt = _with_system(row, read_turns(row[f.conversations], f.conversations))
        check_turns(prompt, f.conversations, ends_with="user")
    elif row.get(f.instruction) is not None or ctx.instruction is not None:  # instruction rows with two answers
        instruction = _text(row, f.instruction, optional=ctx.instruction is not None) or ctx.instruction
        prompt = Instruction(instruction or "", _text(row, f.input, optional=True) or None)
    else:  # implicit prompt: two conversations that share every turn but the last
        if not (isinstance(chosen, list) and isinstance(rejected, list)):
            raise RowError(f"missing field {f.prompt!r}: without it, {f.chosen!r} and {f.rejected!r} must be conversations "
                           "that share the prompt turns (the implicit-prompt form)")
        chosen_turns, rejected_turns = read_turns(chosen, f.chosen), read_turns(rejected, f.rejected)
        shared = 0
        while shared < min(len(chosen_turns), len(rejected_turns)) and chosen_turns[shared] == rejected_turns[shared]:
            shared += 1
        if shared == 0:
            raise RowError(f"{f.chosen!r} and {f.rejected!r} share no prompt turns (implicit-prompt form)")
        prompt = chosen_turns[:shared]
        check_turns(prompt, f"{f.chosen}[:{shared}]", ends_with="user")
        chosen, rejected = chosen_turns[shared:], rejected_turns[shared:]
    sample = Sample("preference", prompt=prompt, chosen=read_response(chosen, f.chosen), rejected=read_response(rejected, f.rejected))
    _distinct(sample.chosen or "", sample.rejected or "")
    return sample


def _openai_preference(row: dict[str, Any], ctx: Context) -> Sample:
    source = row.get("input")
    if not isinstance(source, dict) or "messages" not in source:
        raise RowError("missing field 'input.messages' (the prompt turns)")
    prompt = read_turns(source["messages"], "input.messages")
    check_turns(prompt, "input.messages", ends_with="user")
    for column in ("preferred_output", "non_preferred_output"):
        if row.get(column) is None:
            raise RowError(f"missing field {column!r}")
    sample = Sample("preference", prompt=prompt, chosen=read_response(row["preferred_output"], "preferred_output"),
                    rejected=read_response(row["non_preferred_output"], "non_preferred_output"))
    _distinct(sample.chosen or "", sample.rejected or "")
    return sample


FEEDBACK_WORDS = {"true": True, "false": False}  # how CSV cells (always text) write a boolean


def _true_or_false(value: Any) -> bool | None:
    """A boolean, or CSV's text true/false; None for anything else."""
    if isinstance(value, bool):
        return value
    return FEEDBACK_WORDS.get(value.strip().lower()) if isinstance(value, str) else None


def _feedback_label(row: dict[str, Any], column: str) -> bool:
    """A boolean label; the text true/false (CSV) and 1/0 are read too, as KTO exports write them."""
    if column not in row or row[column] is None:
        raise RowError(f"missing field {column!r} (binary feedback: true when the answer is desirable)")
    value = row[column]
    label = _true_or_false(value)
    if label is not None:
        return label
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise RowError(f"{column!r} must be true or false (binary feedback: is the answer desirable?), not "
                   f"{type(value).__name__} {value!r}")


def _feedback(row: dict[str, Any], ctx: Context) -> Sample:
    f = ctx.fields
    label = _feedback_label(row, f.label)
    if f.prompt in row and f.completion in row:
        pair = _prompt_completion(row, ctx)
        return Sample("feedback", prompt=pair.prompt, completion=pair.completion, label=label)
    column = f.messages if f.messages in row else f.conversations
    turns = _with_system(row, read_turns(row.get(column), column))
    check_turns(turns, column, ends_with="assistant")
    if len(turns) < 2:
        raise RowError(f"{column}: the labelled answer needs the user turn it answers")
    return Sample("feedback", prompt=turns[:-1], completion=turns[-1]["content"], label=label)


def _looks_like_feedback(row: dict[str, Any], ctx: Context) -> bool:
    """Detected only from a boolean label (or CSV's true/false) beside a prompt/completion or a conversation: a
    `label` column holding anything else is the row's metadata, and the row keeps its own format."""
    f = ctx.fields
    return _true_or_false(row.get(f.label)) is not None and ((f.prompt in row and f.completion in row) or f.messages in row or f.conversations in row)


def _has_instruction(row: dict[str, Any], ctx: Context) -> bool:
    return ctx.fields.instruction in row or ctx.instruction is not None


# In detection order: the most specific layout first.
FORMATS: dict[str, RowFormat] = {f.name: f for f in (
    RowFormat("openai_preference", "input.messages / preferred_output / non_preferred_output",
              lambda f: ("preferred_output", "non_preferred_output"), _openai_preference),
    RowFormat("preference", "prompt / chosen / rejected (or chosen / rejected conversations, or ShareGPT's "
              "conversations / chosen / rejected)",
              lambda f: (f.chosen, f.rejected), _preference),
    RowFormat("feedback", "prompt / completion / label: true|false (or messages / label: true|false)", lambda f: (f.label,),
              _feedback, also=_looks_like_feedback),
    RowFormat("messages", "messages: [{role, content}]", lambda f: (f.messages,), _messages),
    RowFormat("sharegpt", "conversations: [{from, value}]", lambda f: (f.conversations,), _sharegpt),
    RowFormat("prompt_completion", "prompt / completion (or a prompt alone, under objective grpo)", lambda f: (f.prompt,),
              _prompt_completion, also=lambda row, ctx: ctx.fields.completion in row or ctx.prompts),
    RowFormat("alpaca", "instruction / input / output", lambda f: (f.output,), _alpaca, also=_has_instruction),
    RowFormat("text", "text", lambda f: (f.text,), _plain_text),
)}


if sorted(FORMATS) != sorted(ROW_FORMATS):
    raise ImportError("sdk.data.formats.FORMATS and sdk.objectives.base.ROW_FORMATS must name the same formats")


def trained_turn(turn: dict[str, Any]) -> bool:
    """An assistant turn the loss is on (OpenAI chat's `weight: 0` keeps one out)."""
    return turn["role"] == "assistant" and turn.get("weight", 1) != 0


def skips_a_turn(sample: Sample) -> bool:
    """A conversation with an assistant turn of weight 0: the template's assistant masks would train it (they mark
    every assistant turn), so any such row in the data sends multi-turn chat to one example per trained turn."""
    return sample.kind == "conversation" and any(t["role"] == "assistant" and not trained_turn(t) for t in sample.turns)


def learns_several_turns(sample: Sample) -> bool:
    """A conversation with more than one trained assistant turn: how its loss is masked depends on the
    chat template (sdk.data.rendering.chat_loss_route); one trained turn is one prompt/completion row either way."""
    return sample.kind == "conversation" and sum(trained_turn(t) for t in sample.turns) > 1


def detect(row: dict[str, Any], ctx: Context) -> RowFormat | None:
    """The first format whose identifying columns the row has (and what its `also` asks: alpaca its instruction
    or data.instruction, feedback a prompt/completion or conversation beside its label)."""
    for fmt in FORMATS.values():
        if all(column in row for column in fmt.columns(ctx.fields)) and (fmt.also is None or fmt.also(row, ctx)):
            return fmt
    return None


def undetected(row: dict[str, Any], ctx: Context) -> str:
    columns = ", ".join(map(str, row)) or "none"
    layouts = "; ".join(f"{f.name}: {f.layout}" for f in FORMATS.values())
    return (f"cannot tell the format from the columns ({columns}). Known formats: {layouts}. "
            "Name it with data.format, map other column names with data.fields")


def normalize(fmt: RowFormat, row: dict[str, Any], ctx: Context, where: str) -> Sample:
    offered = row.get(ctx.fields.tools)
    if fmt.name not in ("messages", "sharegpt") and offered not in (None, "", [], "[]"):
        raise RowError(f"a {ctx.fields.tools!r} column in {fmt.name} rows: tool calling trains from chat rows (messages or "
                       "conversations) under objective sft; these rows would train without the functions")
    sample = fmt.normalize(row, ctx)
    sample.where = where
    sample.fields = row
    return sample
