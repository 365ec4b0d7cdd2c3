"""Data: read rows from a source, map fields, render them with a template into trainer examples.

Sources: a local file (jsonl, json, csv, parquet), an s3:// object, a Hub dataset id, or builtin:<name>.
Templates:
  instruction  '### Instruction:\\n…\\n\\n[### Input:\\n…\\n\\n]### Response:\\n' + response (loss on the response)
  chat         the tokenizer's chat template (rows with `messages`, or instruction rows as a user turn)
  text         raw text in one column
SFT examples are prompt/completion pairs (trl appends EOS and masks the prompt when
completion_only_loss); DPO examples are prompt/chosen/rejected.
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdk.errors import SpecError
from sdk.spec import DataSpec, FineTuneSpec


class DataError(SpecError):
    """The data does not match the spec (missing column, unreadable line, unknown label)."""


# ------------------------------------------------------------------------------------------ sources


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise DataError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{number}: each line must be a JSON object, not {type(row).__name__}")
            rows.append(row)
    return rows


def _read_json(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise DataError(f"{path}:{getattr(exc, 'lineno', '?')}: not valid JSON ({getattr(exc, 'msg', exc)})") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise DataError(f"{path}: expected a JSON list of objects")
    return data


def _read_csv(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8", newline="") as handle:
        return [dict(row) for row in csv.DictReader(handle)]


def _read_parquet(path: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise DataError(f"{path}: cannot read parquet: {exc}") from None


READERS = {"jsonl": _read_jsonl, "json": _read_json, "csv": _read_csv, "parquet": _read_parquet}
SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


def _format_of(path: Path, declared: str) -> str:
    if declared != "auto":
        return declared
    fmt = SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise DataError(f"{path}: cannot tell the format from the suffix; set data.format (jsonl, json, csv, parquet)")
    return fmt


def _fetch_s3(uri: str) -> Path:
    """An s3:// data file, downloaded once per node: the ranks of a node share one scratch folder (the
    launcher's FINETUNE_WORKDIR); the first rank downloads under a lock, the others read its copy."""
    import fcntl
    import hashlib
    import os
    import tempfile

    from sdk.store import open_store

    parent, _, name = uri.rstrip("/").rpartition("/")
    scratch = os.environ.get("FINETUNE_WORKDIR") or tempfile.mkdtemp(prefix="finetune-data-")
    folder = Path(scratch) / "data" / hashlib.sha256(uri.encode()).hexdigest()[:16]
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not target.is_file():
            partial = folder / f".{name}.part"
            open_store(parent).download_file(name, partial)
            partial.replace(target)
    return target


def read_rows(source: str, data: DataSpec, *, field: str = "data.source") -> list[dict[str, Any]]:
    """All rows of a source as dicts."""
    if source.startswith("builtin:"):
        from launch.builtin_data import load_builtin

        try:
            return load_builtin(source)
        except ValueError as exc:
            raise DataError(f"{field}: {exc}") from None
    if source.startswith("s3://"):
        suffix_path = Path(source)
        local = _fetch_s3(source)
        return READERS[_format_of(suffix_path, data.format)](local)
    path = Path(source).expanduser()
    if path.is_file():
        return READERS[_format_of(path, data.format)](path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in SUFFIXES)
        if not files:
            raise DataError(f"{field}: {path} holds no jsonl/json/csv/parquet files")
        return [row for f in files for row in READERS[_format_of(f, data.format)](f)]
    if source.startswith((".", "/", "~")) or Path(source).suffix.lower() in SUFFIXES:
        raise DataError(f"{field}: {source} does not exist")
    return _read_hub(source, data, field)


def _read_hub(source: str, data: DataSpec, field: str) -> list[dict[str, Any]]:
    import datasets

    name, _, config = source.partition(":")
    try:
        ds = datasets.load_dataset(name, config or None, split=data.split)
    except Exception as exc:  # datasets raises many types; all mean "cannot get it"
        raise DataError(f"{field}: cannot load Hub dataset {source!r} (split {data.split!r}): {exc}".splitlines()[0]) from None
    return ds.to_list()


# -------------------------------------------------------------------------------------- templates


def instruction_prompt(instruction: str, input_text: str | None) -> str:
    prompt = f"### Instruction:\n{instruction}\n\n"
    if input_text:
        prompt += f"### Input:\n{input_text}\n\n"
    return prompt + "### Response:\n"


@dataclass
class Example:
    """One row, rendered: prompt (text or chat messages), the gold response, and DPO's rejected one."""

    prompt: Any
    response: str
    rejected: str | None = None


class Renderer:
    """Maps a row's columns (data.fields) to an Example for the spec's template."""

    def __init__(self, spec: FineTuneSpec, source: str):
        self.spec = spec
        self.data = spec.data
        self.fields = spec.data.fields
        self.source = source
        self.labels = spec.eval.labels

    def _get(self, row: dict[str, Any], role: str, *, required: bool = True) -> Any:
        column = getattr(self.fields, role)
        if column in row and row[column] is not None:
            return row[column]
        if required:
            raise DataError(
                f"{self.source}: row has no column {column!r} for {role} (columns: {', '.join(map(str, row))}); "
                f"map it with data.fields.{role}"
            )
        return None

    def _label(self, value: Any) -> str:
        if isinstance(value, bool):
            return str(value)
        if isinstance(value, int) and self.labels:
            if not 0 <= value < len(self.labels):
                raise DataError(f"{self.source}: label index {value} is outside eval.labels ({len(self.labels)} labels)")
            return self.labels[value]
        return str(value)

    def _instruction(self, row: dict[str, Any]) -> str:
        value = self._get(row, "instruction", required=self.data.instruction is None)
        if value is None:
            return str(self.data.instruction)
        return str(value)

    def example(self, row: dict[str, Any]) -> Example:
        template = self.data.template
        dpo = self.spec.objective == "dpo"
        if template == "text":
            return Example(prompt="", response=str(self._get(row, "text")))
        if template == "chat" and self.fields.messages in row:
            messages = row[self.fields.messages]
            if not isinstance(messages, list) or not messages or messages[-1].get("role") != "assistant":
                raise DataError(f"{self.source}: {self.fields.messages!r} must be a list of turns ending with the assistant")
            return Example(prompt=messages[:-1], response=str(messages[-1].get("content", "")))
        if dpo and self.fields.prompt in row:
            prompt_text = str(row[self.fields.prompt])
        else:
            input_text = self._get(row, "input", required=False)
            prompt_text = None
            instruction = self._instruction(row)
            if template == "instruction":
                prompt_text = instruction_prompt(instruction, None if input_text in (None, "") else str(input_text))
            else:
                prompt_text = instruction if input_text in (None, "") else f"{instruction}\n\n{input_text}"
        if template == "chat":
            turns = ([{"role": "system", "content": self.data.system_prompt}] if self.data.system_prompt else [])
            prompt: Any = turns + [{"role": "user", "content": prompt_text}]
        else:
            prompt = prompt_text
        if dpo:
            return Example(prompt, self._label(self._get(row, "chosen")), self._label(self._get(row, "rejected")))
        return Example(prompt, self._label(self._get(row, "output")))

    def trainer_row(self, ex: Example) -> dict[str, Any]:
        if self.data.template == "text":
            return {"text": ex.response}
        chat = self.data.template == "chat"
        wrap = (lambda text: [{"role": "assistant", "content": text}]) if chat else (lambda text: text)
        if ex.rejected is not None:
            return {"prompt": ex.prompt, "chosen": wrap(ex.response), "rejected": wrap(ex.rejected)}
        return {"prompt": ex.prompt, "completion": wrap(ex.response)}


@dataclass
class PreparedData:
    train: list[dict[str, Any]]
    eval: list[dict[str, Any]]
    eval_examples: list[Example]  # the held-out rows, for label accuracy and generations


def prepare(spec: FineTuneSpec) -> PreparedData:
    data = spec.data
    rows = read_rows(data.source, data)
    if not rows:
        raise DataError(f"data.source: {data.source} has no rows")
    rng = random.Random(spec.train.seed)
    if data.eval_source:
        eval_rows = read_rows(data.eval_source, data, field="data.eval_source")
        train_rows = rows
    else:
        shuffled = rows[:]
        rng.shuffle(shuffled)
        n_eval = int(round(len(shuffled) * data.holdout_fraction))
        eval_rows, train_rows = shuffled[:n_eval], shuffled[n_eval:]
    if data.max_samples:
        train_rows = train_rows[: data.max_samples]
    if not train_rows:
        raise DataError(f"data.source: no training rows left after the eval split of {data.holdout_fraction}")
    train_renderer = Renderer(spec, data.source)
    eval_renderer = Renderer(spec, data.eval_source or data.source)
    train_examples = [train_renderer.example(r) for r in train_rows]
    eval_examples = [eval_renderer.example(r) for r in eval_rows]
    return PreparedData(
        train=[train_renderer.trainer_row(e) for e in train_examples],
        eval=[eval_renderer.trainer_row(e) for e in eval_examples[: max(spec.eval.num_samples, 1)]],
        eval_examples=eval_examples,
    )


def labelled_examples(spec: FineTuneSpec, path: str, *, text_field: str = "text", label_field: str = "label") -> list[Example]:
    """A user's labelled file for `finetune eval`: rows with text + label (or the recipe's field mapping)."""
    fields = spec.data.fields
    rows = read_rows(path, spec.data, field="--data")
    if not rows:
        raise DataError(f"--data: {path} has no rows")
    sample = rows[0]
    # The recipe's own columns win when the file has them; else the plain text/label layout.
    input_col = fields.input if fields.input in sample else text_field
    output_col = fields.output if fields.output in sample else label_field
    mapped = spec.model_copy(deep=True)
    mapped.data.fields = fields.model_copy(update={"input": input_col, "output": output_col})
    if fields.instruction not in sample and mapped.data.instruction is None:
        from launch.builtin_data import INSTRUCTION

        labels = spec.eval.labels or []
        mapped.data.instruction = (
            INSTRUCTION if spec.data.source.startswith("builtin:news") else f"Classify the text as one of: {', '.join(labels)}."
        )
    renderer = Renderer(mapped, path)
    return [renderer.example(r) for r in rows]
