"""The `data:` section of a spec: one source, or several mixed by weight (`sources`), each with its own layout.

A source's own settings (format, fields, template …) default to the section's, so a recipe names what differs only.
`DataSpec.parts()` gives each source as a one-source DataSpec: everything that reads rows reads one of those.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, model_validator

from sdk.core.parts import SpecPart
from sdk.objectives.base import ROW_FORMATS

RowFormatName = Literal[("auto", *ROW_FORMATS)]  # type: ignore[valid-type]  # the names sdk.objectives.base registers
FILE_TYPES = ("jsonl", "json", "csv", "parquet", "txt", "txt_blocks")
Template = Literal["auto", "instruction", "chat", "plain"]
# The settings of one source: written on a source, or on the section as the default of every source.
PER_SOURCE = ("format", "file_type", "split", "fields", "template", "instruction", "system_prompt")


class FieldMap(SpecPart):
    """Which column of the data holds each role. Unused roles are ignored by the template.

    An integer in the `output` column is read as an index into `eval.labels` (AG-News style).
    """

    instruction: str = "instruction"
    input: str = "input"
    output: str = "output"
    text: str = "text"
    messages: str = "messages"
    conversations: str = "conversations"
    prompt: str = "prompt"
    completion: str = "completion"
    chosen: str = "chosen"
    rejected: str = "rejected"
    label: str = "label"  # binary feedback: true when the row's answer is desirable (objective: kto)
    tools: str = "tools"  # chat rows: the functions the assistant may call (OpenAI's tools, or a JSON string of them)


def _shorthand(value: Any) -> Any:
    """`data: file.jsonl`; `format: jsonl` naming the file type, as it used to; the `text` template (plain text
    rows)."""
    if isinstance(value, str):
        return {"source": value}
    if isinstance(value, dict):
        value = dict(value)
        if value.get("format") in FILE_TYPES and value.get("file_type", "auto") in ("auto", None):
            value["file_type"] = value.pop("format")
        if value.get("template") == "text":
            value["template"] = "plain"
            value.setdefault("format", "text")
    return value


class DataSource(SpecPart):
    """One source of several: where its rows are, how they are laid out, and its share of the training rows.
    Settings left unset here are the `data:` section's."""

    source: str = Field(min_length=1,
                        description="local file or dir, s3://bucket/key, a Hub dataset id, or builtin:<name>")
    format: RowFormatName | None = None
    file_type: Literal[("auto", *FILE_TYPES)] | None = None  # type: ignore[valid-type]
    split: str | None = None
    fields: FieldMap | None = None
    template: Template | None = None
    instruction: str | None = None
    system_prompt: str | None = None
    weight: float | None = Field(None, gt=0, description="share of the training rows (weights are normalized); every "
                                                         "source has one, or none and the rows are concatenated")
    max_samples: int | None = Field(None, ge=1, description="use at most this many of this source's training rows")
    eval_split: float | None = Field(None, ge=0, lt=1, description="fraction of this source held out (default: "
                                                                   "data.eval_split, else 0.1 without eval_source)")

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        return _shorthand(value)


@dataclass(frozen=True)
class DataPart:
    """One source of a run as a one-source DataSpec, with the name its messages use and its weight."""

    field: str  # data.source, or data.sources[i]
    data: DataSpec
    weight: float | None = None


class DataSpec(SpecPart):
    source: str | None = Field(
        None, min_length=1, description="local file or dir, s3://bucket/key, a Hub dataset id, or builtin:<name>")
    sources: list[DataSource] = Field(
        default_factory=list, description="several sources in one run, each with its own format, fields, template, "
                                          "weight, max_samples and eval_split (instead of source)")
    stopping_strategy: Literal["first_exhausted", "all_exhausted"] = Field(
        "first_exhausted", description="weighted sources: stop when the first source runs out (no row repeats), or "
                                       "when every one has (the smaller ones repeat), as "
                                       "datasets.interleave_datasets does")
    format: RowFormatName = Field(
        "auto", description="the rows' layout; auto detects it from the rows (see sdk.data.formats)")
    file_type: Literal[("auto", *FILE_TYPES)] = Field(  # type: ignore[valid-type]
        "auto", description="auto: from the suffix (.txt is txt). txt: each file is one document (a folder of .txt "
                            "files is a corpus); txt_blocks: each block of lines between blank lines is one document")
    split: str = Field("train", description="split name for Hub datasets")
    fields: FieldMap = Field(default_factory=FieldMap)
    template: Template = Field(
        "auto", description="how a row becomes training text: instruction ('### Instruction/### Response'), chat (the "
                            "tokenizer's chat template), plain (prompt as written); auto: chat for conversations, "
                            "instruction for instruction rows, plain for prompt/completion and text")
    instruction: str | None = Field(
        None, description="fixed instruction for rows without one (classification data: text + label)"
    )
    system_prompt: str | None = None
    eval_source: str | None = Field(None, description="held-out data; else `eval_split` of the source")
    eval_split: float | None = Field(None, ge=0, lt=1,
                                     description="fraction held out (default 0.1 without eval_source)")
    max_samples: int | None = Field(None, ge=1, description="use at most this many training rows (after mixing)")
    max_length: int = Field(512, ge=8, le=1_048_576)
    packing: bool = False
    completion_only_loss: bool = Field(True, description="loss on the response only, not the prompt")

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        if isinstance(value, list):  # `data: [a.jsonl, {source: b.jsonl, weight: 0.2}]`
            return {"sources": value}
        return _shorthand(value)

    @model_validator(mode="after")
    def _one_way(self) -> DataSpec:
        if self.source and self.sources:
            raise ValueError("set data.source (one source) or data.sources (several), not both")
        if not self.source and not self.sources:
            raise ValueError("data.source is required (a file, folder, s3:// URI or Hub id), "
                             "or data.sources for several")
        weighted = [s.weight is not None for s in self.sources]
        if any(weighted) and not all(weighted):
            unweighted = ", ".join(f"data.sources[{i}]" for i, w in enumerate(weighted) if not w)
            raise ValueError(f"{unweighted} has no weight: give every source a weight, or none "
                             "(rows are then concatenated)")
        if self.eval_source and any(s.eval_split for s in self.sources):
            raise ValueError("data.eval_source holds out the evaluation rows: drop the sources' eval_split")
        return self

    @property
    def holdout_fraction(self) -> float:
        if self.eval_split is not None:
            return self.eval_split
        return 0.0 if self.eval_source else 0.1

    @property
    def weighted(self) -> bool:
        return bool(self.sources) and all(s.weight is not None for s in self.sources)

    def parts(self) -> list[DataPart]:
        """Each source as a one-source DataSpec (its own settings over the section's), in the order written."""
        if not self.sources:
            return [DataPart("data.source", self)]
        out = []
        for i, s in enumerate(self.sources):
            own = {k: getattr(s, k) for k in PER_SOURCE if getattr(s, k) is not None}
            held = s.eval_split if s.eval_split is not None else self.eval_split
            data = self.model_copy(update={**own, "source": s.source, "sources": [], "max_samples": s.max_samples,
                                           "eval_split": held})
            out.append(DataPart(f"data.sources[{i}]", data, s.weight))
        return out


def part_spec(spec: Any, part: DataPart) -> Any:
    """The spec as one of its sources sees it: that source's data settings."""
    return spec if part.field == "data.source" else spec.model_copy(update={"data": part.data})
