"""Checking a spec's data before launch: every row of every source read, its format detected, each bad row named,
and what each source gives the run counted. It only reports: reading rows into samples is sdk.data.samples (what the
node trains on), writing them is sdk.data.rendering.

`finetune validate RECIPE` prints the report; `launch` / `sdk.submit` refuse to start on any bad row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sdk.core.dataspec import part_spec
from sdk.core.spec import FineTuneSpec
from sdk.data.formats import Instruction, RowError, Sample, learns_several_turns, skips_a_turn
from sdk.data.rendering import Renderer, auto_template_note, chat_loss_route, row_shape, shape_refusal, template_for
from sdk.data.rows import DataError, is_hub_id
from sdk.data.samples import SourceCheck, load_samples, read_source, settle_sources


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
            gives = f"; {c.eval_rows} held out, {c.train_rows} train" if c.train_rows is not None else ""
            share = f" (weight {c.weight:g})" if c.weight is not None else ""
            out.append(f"{c.field}: {c.source}: {c.rows} rows, format {c.format} ({how})"
                       + (f", {len(c.bad)} bad" if c.bad else "") + (f" ({c.balance()})" if c.balance() else "")
                       + ("" if c.bad else gives + share))
        return out + self.notes


@dataclass
class _Tally:
    """What the rows hold, counted as they are read (for the report's notes)."""

    weighted: bool = False
    conversations: int = 0
    instructions: int = 0
    tool_rows: int = 0

    def add(self, sample: Sample) -> None:
        self.instructions += isinstance(sample.prompt, Instruction)
        self.tool_rows += bool(sample.tools)
        self.conversations += learns_several_turns(sample)
        self.weighted = self.weighted or skips_a_turn(sample)  # as the node routes (launch.data._route)


def check_data(spec: FineTuneSpec, *, tokenizer: Any = None) -> DataReport:
    """Read every row of every source (and eval_source) the way the node will, without keeping them."""
    from sdk.data.tokencount import ClientTokenizer, LengthCount

    tokens = tokenizer if tokenizer is not None else ClientTokenizer.for_spec(spec)
    chat_template = tokens.chat_template if tokens is not None else tiny_chat_template(spec)
    has_chat = bool(chat_template) if tokens is not None or chat_template else None
    tally, checks, notes = _Tally(), [], []
    # the shape of each source's rows, for each chat template the model may have (both, when it is not known here)
    assumed = [has_chat] if has_chat is not None else [True, False]
    shapes: dict[bool, dict[str, str]] = {known: {} for known in assumed}
    for i, part in enumerate(spec.data.parts()):
        source, one = part.data.source or "", part_spec(spec, part)
        if not (source.startswith("builtin:") or not is_hub_id(source)):
            notes.append(f"{part.field}: {source} is a Hub dataset: its rows are checked on the node")
            continue
        renderer = Renderer(one, route="assistant_masks", chat_template=has_chat)
        lengths = LengthCount(spec.data.max_length, tokens, renderer)

        def count(sample: Sample, lengths: Any = lengths, data: Any = part.data, field: str = part.field) -> None:
            tally.add(sample)
            lengths.add(sample)
            for known, seen in shapes.items():
                seen.setdefault(row_shape(template_for(data.template, sample, chat_template=known), sample), field)

        check = read_source(one, source, part.field, keep=False, on_row=count, part=i)
        checks.append(check)
        notes.append(f"{part.field}: {lengths.report()}")
    notes += _refusals(spec, checks, shapes)
    trained = {p.data.source: p.field for p in spec.data.parts()}
    if spec.data.eval_source in trained:
        notes.append(f"data.eval_source is {trained[spec.data.eval_source]}: the same rows train and evaluate")
    elif spec.data.eval_source:
        checks.append(load_samples(spec, spec.data.eval_source, "data.eval_source", keep=False, on_row=tally.add))
    return DataReport(checks, notes + _notes(spec, tally, chat_template, has_chat))


def _refusals(spec: FineTuneSpec, checks: list[SourceCheck], shapes: dict[bool, dict[str, str]]) -> list[str]:
    """Sources that cannot train together or with the objective (sdk.data.samples.settle_sources, which also counts
    what each gives the run), or whose rows are written in different shapes. Returns a note when the shapes differ
    only with one kind of model (its chat template not known here)."""
    settle_sources(spec, checks)
    differ = {known: seen for known, seen in shapes.items() if len(seen) > 1}
    if differ and len(differ) == len(shapes):
        raise DataError(f"data.sources: {shape_refusal(next(iter(differ.values())))}")
    notes = [f"data.sources: the model's tokenizer is not on this machine; if it has {'a' if known else 'no'} chat "
             f"template the node refuses them: {shape_refusal(seen)}" for known, seen in differ.items()]
    return notes


def _notes(spec: FineTuneSpec, tally: _Tally, chat_template: str | None, has_chat: bool | None) -> list[str]:
    notes = []
    if tally.tool_rows:
        notes.append(f"tools: {tally.tool_rows} row(s) offer tools; "
                     f"{tool_note(spec, chat_template, known=has_chat is not None)}")
    if tally.instructions and any(p.data.template == "auto" for p in spec.data.parts()):
        notes.append(f"template: {auto_template_note(has_chat)}")
    if tally.conversations:
        if chat_template is None:
            notes.append("chat: the model's chat template is not readable here; the node decides between assistant "
                         "masks and one example per assistant turn")
        else:
            notes.append(f"chat: {chat_loss_route(chat_template, weighted=tally.weighted)[1]}")
    return notes


def tiny_chat_template(spec: FineTuneSpec) -> str | None:
    """A tiny model's chat template is a constant: known before the model is first built."""
    from sdk.core.modelref import tiny_arch

    if tiny_arch(spec.model.id):
        from sdk.core.architectures import TINY_CHAT_TEMPLATE

        return TINY_CHAT_TEMPLATE
    return None
