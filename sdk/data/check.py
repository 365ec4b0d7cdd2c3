"""Checking a spec's data before launch: every row read, its format detected, each bad row named.

`finetune validate RECIPE` prints the report; `launch` / `sdk.submit` refuse to start on any bad row.
The node loads its samples through the same `load_samples`, so what the client accepted is what trains.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sdk.core.spec import FineTuneSpec
from sdk.data.formats import (
    FORMATS,
    Context,
    Instruction,
    RowError,
    RowFormat,
    Sample,
    detect,
    learns_several_turns,
    normalize,
    skips_a_turn,
    undetected,
)
from sdk.data.prompts import REFERENCE, prompt_and_reference
from sdk.data.rows import BadRow, DataError, is_hub_id, iter_rows
from sdk.objectives import kind_refusal, objective_of

MAX_LISTED = 20
_GENERATION_MARK = re.compile(r"\{%-?\s*generation\s*-?%\}")


@dataclass
class SourceCheck:
    source: str
    field: str
    format: str | None = None
    detected_from: str | None = None  # where the format was read from; None when data.format named it
    rows: int = 0
    samples: list[Sample] = field(default_factory=list)
    bad: list[tuple[str, str]] = field(default_factory=list)
    feedback: dict[bool, int] = field(default_factory=dict)  # binary-feedback rows per label
    columns: set[str] = field(default_factory=set)  # every column a good row held, and `reference` if one had an answer

    def balance(self) -> str | None:
        """How many feedback rows are desirable and undesirable (what KTO weighs), or None for other rows."""
        if not self.feedback:
            return None
        good, bad = self.feedback.get(True, 0), self.feedback.get(False, 0)
        missing = "; no undesirable rows" if not bad else "; no desirable rows" if not good else ""
        return f"{good} desirable, {bad} undesirable{missing}"

    def error(self) -> str:
        shown = "\n".join(f"  {where}: {reason}" for where, reason in self.bad[:MAX_LISTED])
        rest = len(self.bad) - MAX_LISTED
        fmt = f", format {self.format}" + (f" detected from {self.detected_from}" if self.detected_from else "") if self.format else ""
        return (f"{self.field}: {len(self.bad)} bad row(s) of {self.rows} in {self.source}{fmt}:\n{shown}"
                + (f"\n  ... and {rest} more" if rest > 0 else ""))


def context(spec: FineTuneSpec) -> Context:
    return Context(fields=spec.data.fields, instruction=spec.data.instruction, labels=spec.eval.labels,
                   prompts=objective_of(spec).reads_prompts)


def template_for(template: str, sample: Sample, *, chat_template: bool | None = None) -> str:
    """The template a sample renders with ('auto' resolved), or RowError when it cannot render it.

    `auto` writes instruction rows in the model's own chat template when its tokenizer has one (a user turn of
    the instruction and input, the output as the assistant's turn: what a chat endpoint sends it), and in the
    '### Instruction' template when it has none. `chat_template` None: not known here (the client without the
    model's tokenizer); the node decides, and the summary says which."""
    if sample.kind == "text":
        if template not in ("auto", "plain"):
            raise RowError(f"text rows train as written; template {template} needs prompts (use template: plain or auto)")
        return "plain"
    chat = sample.chat
    if sample.tools and template not in ("auto", "chat"):
        raise RowError(f"rows with tools are written in the model's chat template (its tool format), not the {template} "
                       "template; use template: chat (or auto)")
    if template == "auto":
        if chat:
            return "chat"
        if isinstance(sample.prompt, Instruction):
            return "instruction" if chat_template is False else "chat"
        return "plain"
    if chat and template != "chat":
        turns = sample.turns or sample.prompt or []
        users = sum(1 for t in turns if t["role"] == "user")
        if users > 1 or any(t["role"] == "system" for t in turns):
            raise RowError(f"a conversation with {users} user turn(s)"
                           f"{' and a system turn' if any(t['role'] == 'system' for t in turns) else ''} "
                           f"cannot be written in the {template} template; use template: chat (or auto)")
    return template


def load_samples(spec: FineTuneSpec, source: str, field_name: str, *, keep: bool = True,
                 s3_local: Any = None, on_row: Callable[[Sample], None] | None = None,
                 any_objective: bool = False) -> SourceCheck:
    """Every row of a source normalized; bad rows collected with where they are (never raised one by one).
    `any_objective`: rows to evaluate on, not to train with, so any format goes whatever the spec's objective."""
    ctx = context(spec)
    data = spec.data
    check = SourceCheck(source=source, field=field_name)
    fmt: RowFormat | None = FORMATS[data.format] if data.format != "auto" else None
    if fmt is not None:
        check.format = fmt.name
    for row in iter_rows(source, declared=data.file_type, split=data.split, field=field_name, s3_local=s3_local):
        check.rows += 1
        if isinstance(row, BadRow):
            check.bad.append((row.where, row.reason))
            continue
        if fmt is None:
            fmt = detect(row.value, ctx)
            if fmt is None:
                raise DataError(f"{field_name}: {row.where}: {undetected(row.value, ctx)}")
            check.format, check.detected_from = fmt.name, row.where
        try:
            sample = normalize(fmt, row.value, ctx, row.where)
            template_for(data.template, sample)
        except RowError as exc:
            check.bad.append((row.where, str(exc)))
            continue
        if sample.kind == "feedback":
            check.feedback[bool(sample.label)] = check.feedback.get(bool(sample.label), 0) + 1
        check.columns.update(sample.fields)
        if REFERENCE not in check.columns and prompt_and_reference(sample)[1] is not None:
            check.columns.add(REFERENCE)
        if on_row is not None:
            on_row(sample)
        if keep:
            check.samples.append(sample)
    if check.rows == 0:
        raise DataError(f"{field_name}: {source} has no rows")
    objective = objective_of(spec)
    refusal = kind_refusal(objective.name, fmt.name) if fmt is not None and not any_objective else None
    if refusal:
        raise DataError(f"{field_name}: {source}: {refusal}")
    missing = [(where, column) for where, column in objective.reads_columns(spec.objective) if column not in check.columns]
    if missing and not any_objective and check.rows > len(check.bad):
        where, column = missing[0]
        what = "an answer (alpaca's output, a completion, a last assistant turn)" if column == REFERENCE \
            else f"a column {column!r}"
        raise DataError(f"{where}: no row of {source} holds {what} for it to read (columns: "
                        f"{', '.join(sorted(check.columns - {REFERENCE})) or 'none'})")
    return check


def tool_note(spec: FineTuneSpec, chat_template: str | None, *, known: bool) -> str:
    """How the model renders tool rows (sdk.data.tools.tool_template), or DataError when it cannot: decided here,
    before launch, wherever the model's tokenizer is readable."""
    if not known:
        return "the model's tokenizer is not on this machine: the node picks its chat template's tool format"
    from sdk.core.architectures import config_for
    from sdk.core.modelref import tiny_arch
    from sdk.data.tools import tool_template

    config = config_for(spec.model.id) or {}
    model_type = "llama" if tiny_arch(spec.model.id) else config.get("model_type")
    try:
        return tool_template(chat_template, model_type).how
    except RowError as exc:
        raise DataError(f"data.source: {exc}") from None


def auto_template_note(chat_template: bool | None) -> str:
    """What `template: auto` made of instruction rows, for the report and the node's log."""
    if chat_template is None:
        return ("auto: instruction rows are written in the model's chat template if its tokenizer has one, else in "
                "'### Instruction' (the model's tokenizer is not on this machine: the node decides; the summary says which)")
    if chat_template:
        return ("auto → chat: instruction rows become a user turn (instruction, input) and the assistant's answer in the "
                "model's chat template, as a chat endpoint sends them (data.template: instruction for '### Instruction')")
    return "auto → instruction: the model's tokenizer has no chat template, so rows are written in '### Instruction'"


def chat_loss_route(chat_template: str | None, *, weighted: bool) -> tuple[str, str]:
    """How multi-turn chat learns only the assistant's turns: 'assistant_masks' where the chat template marks
    them ({% generation %}), else 'per_turn': one example per assistant turn with the turns before it as the prompt."""
    if chat_template and _GENERATION_MARK.search(chat_template):
        if weighted:
            return "per_turn", ("some assistant turns have weight 0, which the template's assistant masks cannot skip: "
                                "one example per trained assistant turn, the turns before it as the prompt")
        return "assistant_masks", "the chat template marks assistant turns ({% generation %}): the loss is on them only"
    return "per_turn", ("the chat template does not mark assistant turns ({% generation %}), so each trained assistant "
                        "turn becomes its own example with the turns before it as the prompt (loss on that turn only)")


@dataclass
class DataReport:
    checks: list[SourceCheck]
    notes: list[str]

    @property
    def ok(self) -> bool:
        return not any(c.bad for c in self.checks)

    def error(self) -> str:
        return "\n".join(c.error() for c in self.checks if c.bad)

    def lines(self) -> list[str]:
        out = []
        for c in self.checks:
            how = f"detected from {c.detected_from}" if c.detected_from else "named in data.format"
            out.append(f"{c.field}: {c.source}: {c.rows} rows, format {c.format} ({how})"
                       + (f", {len(c.bad)} bad" if c.bad else "") + (f" ({c.balance()})" if c.balance() else ""))
        return out + self.notes


def check_data(spec: FineTuneSpec, *, tokenizer: Any = None) -> DataReport:
    """Read every row of data.source (and eval_source) the way the node will, without keeping them."""
    sources = [(spec.data.source, "data.source")]
    if spec.data.eval_source and spec.data.eval_source != spec.data.source:
        sources.append((spec.data.eval_source, "data.eval_source"))
    from sdk.data.rendering import Renderer
    from sdk.data.tokencount import ClientTokenizer

    checks, notes = [], []
    weighted = False
    conversations = 0
    tokens = tokenizer if tokenizer is not None else ClientTokenizer.for_spec(spec)
    chat_template = tokens.chat_template if tokens is not None else tiny_chat_template(spec)
    has_chat = bool(chat_template) if tokens is not None or chat_template else None
    lengths = LengthCount(spec.data.max_length, tokens, Renderer(spec, route="assistant_masks", chat_template=has_chat))
    instructions = tool_rows = 0

    def count(sample: Sample) -> None:
        nonlocal weighted, conversations, instructions, tool_rows
        instructions += isinstance(sample.prompt, Instruction)
        tool_rows += bool(sample.tools)
        conversations += learns_several_turns(sample)
        weighted = weighted or skips_a_turn(sample)  # as the node routes (launch.data._route)
        lengths.add(sample)

    for source, name in sources:
        if source.startswith(("builtin:",)) or not is_hub_id(source):
            checks.append(load_samples(spec, source, name, keep=False, on_row=count))
            notes.append(f"{name}: {lengths.report()}")
            lengths.reset()
        else:
            notes.append(f"{name}: {source} is a Hub dataset: its rows are checked on the node")
    if tool_rows:
        notes.append(f"tools: {tool_rows} row(s) offer tools; {tool_note(spec, chat_template, known=has_chat is not None)}")
    if instructions and spec.data.template == "auto":
        notes.append(f"template: {auto_template_note(has_chat)}")
    if conversations:
        template = chat_template
        if template is None:
            notes.append("chat: the model's chat template is not readable here; the node decides between assistant "
                         "masks and one example per assistant turn")
        else:
            route, why = chat_loss_route(template, weighted=weighted)
            notes.append(f"chat: {why}")
    return DataReport(checks, notes)


class LengthCount:
    """How many rows are longer than max_length tokens (they would be truncated), counted in batches with
    the model's tokenizer; the texts are rendered exactly as the node renders them."""

    BATCH = 512

    def __init__(self, max_length: int, tokenizer: Any, renderer: Any):
        self.max_length, self.tokenizer, self.renderer = max_length, tokenizer, renderer
        self.reset()

    def reset(self) -> None:
        self.pending: list[str] = []
        self.rows = self.long = self.longest = 0
        self.failed: str | None = None

    def add(self, sample: Sample) -> None:
        from sdk.data.rendering import row_text

        if self.tokenizer is None or self.failed:
            return
        try:
            self.pending += [row_text(r, self.tokenizer.render_chat, self.tokenizer.eos) for r in self.renderer.trainer_rows(sample)]
        except Exception as exc:  # a chat template that refuses the turns: the node will say so too
            if sample.tools:  # a tool row the template cannot write cannot train: refused before launch
                raise DataError(f"{sample.where}: the model's chat template cannot render this row: {exc}") from None
            self.failed = f"{sample.where}: the chat template cannot render this row ({exc})"
        if len(self.pending) >= self.BATCH:
            self._flush()

    def _flush(self) -> None:
        counts = self.tokenizer.count(self.pending) if self.pending else []
        self.rows += len(counts)
        self.long += sum(1 for c in counts if c > self.max_length)
        self.longest = max([self.longest, *counts])
        self.pending = []

    def report(self) -> str:
        if self.tokenizer is None:
            return "token lengths: the model's tokenizer is not on this machine; the node counts rows over max_length"
        if self.failed:
            return f"token lengths not counted: {self.failed}"
        self._flush()
        if self.long:
            return (f"{self.long} of {self.rows} rows are longer than max_length {self.max_length} tokens "
                    f"(longest {self.longest}) and will be truncated")
        return f"every row fits in max_length {self.max_length} tokens (longest {self.longest})"


def tiny_chat_template(spec: FineTuneSpec) -> str | None:
    """A tiny model's chat template is a constant: known before the model is first built."""
    from sdk.core.modelref import tiny_arch

    if tiny_arch(spec.model.id):
        from sdk.core.architectures import TINY_CHAT_TEMPLATE

        return TINY_CHAT_TEMPLATE
    return None
