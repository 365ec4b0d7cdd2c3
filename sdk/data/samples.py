"""Rows → samples: every source of a spec read, normalized, held out and mixed, the one way the node trains on and
the pre-launch check counts (sdk.data.check reports; launch.data renders what this returns).

Several sources (data.sources): each is read with its own settings and held out on its own (or data.eval_source
holds out for all); weighted sources are mixed in exact proportion (`mix_counts`), then the whole is shuffled with
the run's seed. One source keeps the single-source order it always had.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sdk.core.dataspec import part_spec
from sdk.core.spec import FineTuneSpec
from sdk.data.formats import FORMATS, Context, RowError, RowFormat, Sample, detect, normalize, undetected
from sdk.data.prompts import REFERENCE, prompt_and_reference
from sdk.data.rendering import template_for
from sdk.data.rows import BadRow, DataError, iter_rows
from sdk.objectives import kind_refusal, mixture_refusal, objective_of

MAX_LISTED = 20


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
    digest: Any = field(default_factory=hashlib.sha256)  # of the rows as read (any source: a file, a folder, the Hub)
    weight: float | None = None
    eval_rows: int | None = None  # held out of this source (None: not counted, a Hub source beside it)
    train_rows: int | None = None  # of this source in the training rows, after hold-out, max_samples and mixing

    @property
    def sha256(self) -> str:
        return self.digest.hexdigest()

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
        detected = f" detected from {self.detected_from}" if self.detected_from else ""
        fmt = f", format {self.format}{detected}" if self.format else ""
        return (f"{self.field}: {len(self.bad)} bad row(s) of {self.rows} in {self.source}{fmt}:\n{shown}"
                + (f"\n  ... and {rest} more" if rest > 0 else ""))

    def record(self) -> dict[str, Any]:
        """What the run folder keeps of this source (data.json, the summary's data_sources)."""
        return {"field": self.field, "source": self.source, "format": self.format, "rows": self.rows,
                "eval_rows": self.eval_rows, "train_rows": self.train_rows, "weight": self.weight,
                "sha256": self.sha256}


def context(spec: FineTuneSpec) -> Context:
    return Context(fields=spec.data.fields, instruction=spec.data.instruction, labels=spec.eval.labels,
                   prompts=objective_of(spec).reads_prompts)


def read_source(spec: FineTuneSpec, source: str, field_name: str, *, keep: bool = True, s3_local: Any = None,
                on_row: Callable[[Sample], None] | None = None, part: int = 0) -> SourceCheck:
    """Every row of one source normalized (spec.data its settings); bad rows collected with where they are."""
    ctx, data = context(spec), spec.data
    check = SourceCheck(source=source, field=field_name)
    fmt: RowFormat | None = FORMATS[data.format] if data.format != "auto" else None
    check.format = fmt.name if fmt is not None else None
    for row in iter_rows(source, declared=data.file_type, split=data.split, field=field_name, s3_local=s3_local):
        check.rows += 1
        if isinstance(row, BadRow):
            check.bad.append((row.where, row.reason))
            continue
        check.digest.update(json.dumps(row.value, sort_keys=True, ensure_ascii=False, default=str).encode() + b"\n")
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
        sample.part = part
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
    return check


def objective_checks(spec: FineTuneSpec, check: SourceCheck) -> None:
    """DataError when the objective cannot train this source's rows: their kind, or a column it reads is missing."""
    objective = objective_of(spec)
    refusal = kind_refusal(objective.name, check.format) if check.format is not None else None
    if refusal:
        raise DataError(f"{check.field}: {check.source}: {refusal}")
    missing = [(where, column) for where, column in objective.reads_columns(spec.objective)
               if column not in check.columns]
    if missing and check.rows > len(check.bad):
        where, column = missing[0]
        what = "an answer (alpaca's output, a completion, a last assistant turn)" if column == REFERENCE \
            else f"a column {column!r}"
        raise DataError(f"{where}: no row of {check.source} holds {what} for it to read (columns: "
                        f"{', '.join(sorted(check.columns - {REFERENCE})) or 'none'})")


def load_samples(spec: FineTuneSpec, source: str, field_name: str, *, keep: bool = True,
                 s3_local: Any = None, on_row: Callable[[Sample], None] | None = None,
                 any_objective: bool = False) -> SourceCheck:
    """One source read and checked against the objective. `any_objective`: rows to evaluate on, not to train
    with, so any format goes whatever the spec's objective."""
    check = read_source(spec, source, field_name, keep=keep, s3_local=s3_local, on_row=on_row)
    if not any_objective:
        objective_checks(spec, check)
    return check


def mix_counts(available: list[int], weights: list[float] | None, stopping: str = "first_exhausted") -> list[int]:
    """How many training rows each source gives: all of them without weights; with weights, shares in exact
    proportion until the first source runs out (first_exhausted: no row repeats) or until every source has given
    all its rows (all_exhausted: the others repeat theirs)."""
    if weights is None:
        return list(available)
    total = sum(weights)
    shares = [w / total for w in weights]
    reach = [a / s for a, s in zip(available, shares, strict=True)]
    length = min(reach) if stopping == "first_exhausted" else max(reach)
    counts = [int(length * s + 0.5) for s in shares]
    return [min(c, a) for c, a in zip(counts, available, strict=True)] if stopping == "first_exhausted" else counts


@dataclass
class Mixture:
    """The samples a run trains and evaluates on, and what each source gave."""

    checks: list[SourceCheck]  # one per source, in data.parts() order
    train: list[Sample] = field(default_factory=list)
    eval: list[Sample] = field(default_factory=list)
    eval_check: SourceCheck | None = None  # data.eval_source's

    @property
    def formats(self) -> dict[str, str]:
        out = {c.field: str(c.format) for c in self.checks}
        return {**out, **({"data.eval_source": str(self.eval_check.format)} if self.eval_check else {})}

    def records(self) -> list[dict[str, Any]]:
        return [c.record() for c in self.checks]


def plan_counts(spec: FineTuneSpec, sizes: list[int]) -> tuple[list[int], list[int]]:
    """(rows held out, training rows given) per source, from each source's count of good rows; with several
    sources data.max_samples caps the whole, each source keeping its share (largest remainders)."""
    parts = spec.data.parts()
    held = [int(round(n * p.data.holdout_fraction)) for n, p in zip(sizes, parts, strict=True)]
    available = [min(n - h, p.data.max_samples or n) for n, h, p in zip(sizes, held, parts, strict=True)]
    for n, h, a, p in zip(sizes, held, available, parts, strict=True):
        if a <= 0:
            raise DataError(f"{p.field}: {p.data.source} gives no training rows: {h} of its {n} row(s) held out "
                            f"(eval_split {p.data.holdout_fraction:g}); lower its eval_split or drop the source")
    weights = [p.weight for p in parts] if spec.data.weighted else None
    counts = mix_counts(available, weights, spec.data.stopping_strategy)
    cap = spec.data.max_samples if len(parts) > 1 else None
    return held, (_shares(counts, cap) if cap and sum(counts) > cap else counts)


def _shares(counts: list[int], total: int) -> list[int]:
    """`total` rows split as `counts` are (floors, then the largest remainders one each)."""
    whole = sum(counts)
    exact = [c * total / whole for c in counts]
    out = [int(e) for e in exact]
    for i in sorted(range(len(counts)), key=lambda i: exact[i] - out[i], reverse=True)[: total - sum(out)]:
        out[i] += 1
    return out


def settle_sources(spec: FineTuneSpec, checks: list[SourceCheck]) -> None:
    """Sources read: refused when they cannot train together or with the objective; then, when every source was
    read without a bad row, what each gives the run (held out, trained on), the one count the check and node share."""
    mixed = mixture_refusal([(c.field, c.format) for c in checks if c.format])
    if mixed:
        raise DataError(f"data.sources: {mixed}")
    parts = {p.field: p for p in spec.data.parts()}
    for check in checks:
        check.weight = parts[check.field].weight
        objective_checks(part_spec(spec, parts[check.field]), check)
    if len(checks) == len(parts) and not any(c.bad for c in checks):
        held, counts = plan_counts(spec, [c.rows for c in checks])
        for check, h, n in zip(checks, held, counts, strict=True):
            check.eval_rows, check.train_rows = h, n


def load_mixture(spec: FineTuneSpec, *, keep: bool = True, local: Callable[[str], Any] | None = None,
                 on_row: Callable[[Sample], None] | None = None) -> Mixture:
    """Every source read and checked; with `keep`, held out and mixed into the samples a run trains on.
    `local`: an s3:// URI → the local copy the node downloaded (None reads it from the store here)."""
    def where(uri: str) -> Any:
        return local(uri) if local and uri.startswith("s3://") else None

    checks = [read_source(part_spec(spec, p), p.data.source or "", p.field, keep=keep,
                          s3_local=where(p.data.source or ""), on_row=on_row, part=i)
              for i, p in enumerate(spec.data.parts())]
    settle_sources(spec, checks)
    out = Mixture(checks)
    if spec.data.eval_source:
        out.eval_check = load_samples(spec, spec.data.eval_source, "data.eval_source", keep=keep,
                                      s3_local=where(spec.data.eval_source), on_row=None)
    if keep and not any(c.bad for c in checks) and not (out.eval_check and out.eval_check.bad):
        _split(spec, out)
    return out


def _split(spec: FineTuneSpec, out: Mixture) -> None:
    """Hold out and mix, seeded: one source exactly as it always was (shuffle, hold out, max_samples in order)."""
    data, rng = spec.data, random.Random(spec.train.seed)
    in_order = objective_of(spec).reads_in_order  # its trainer does not shuffle: the node does, first
    several = len(out.checks) > 1
    for check in out.checks:
        rows, held = check.samples[:], check.eval_rows or 0
        if not data.eval_source or several:
            rng.shuffle(rows)
        out.eval += rows[:held]
        train = rows[held:]
        if data.eval_source and in_order and not several:  # before max_samples: a sorted file gives one class only
            rng.shuffle(train)
        out.train += [train[i % len(train)] for i in range(check.train_rows or 0)]  # all_exhausted repeats rows
    if out.eval_check is not None:
        out.eval = out.eval_check.samples
    if several:
        rng.shuffle(out.train)
        rng.shuffle(out.eval)
