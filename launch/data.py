"""Data on the node: every source's samples (sdk.data.samples: read, held out, mixed) rendered into trainer examples.

Sources: a local file (jsonl, json, csv, parquet, txt), an s3:// object, a Hub dataset id, or builtin:<name>;
several in one run (data.sources), each rendered in its own template (sdk.data.rendering.Renderers):
  instruction  '### Instruction:\\n…\\n\\n[### Input:\\n…\\n\\n]### Response:\\n' + response (loss on the response)
  chat         the tokenizer's chat template (rows with `messages`, or instruction rows as a user turn)
  plain        the prompt as written; text rows (a corpus) as they are
SFT examples are prompt/completion pairs (trl appends EOS and masks the prompt when
completion_only_loss); DPO examples are prompt/chosen/rejected; KTO examples prompt/completion/label.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdk.core.spec import DataSpec, FineTuneSpec
from sdk.data.formats import Instruction, Sample, learns_several_turns, skips_a_turn
from sdk.data.prompts import encode_json_columns, json_columns
from sdk.data.rendering import (
    Example,
    Renderer,
    Renderers,
    auto_template_note,
    chat_loss_route,
    instruction_prompt,
    shape_refusal,
)
from sdk.data.rows import BadRow, DataError, iter_rows
from sdk.data.samples import Mixture, load_mixture, load_samples
from sdk.data.tokencount import LengthCount

__all__ = ["DataError", "Example", "PreparedData", "prepare", "read_rows", "labelled_examples", "instruction_prompt"]


# ------------------------------------------------------------------------------------------ sources


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
    """All rows of a source as dicts (no format applied); a bad line is an error naming it."""
    out = []
    local = _fetch_s3(source) if source.startswith("s3://") else None
    for row in iter_rows(source, declared=data.file_type, split=data.split, field=field, s3_local=local):
        if isinstance(row, BadRow):
            raise DataError(f"{row.where}: {row.reason}")
        out.append(row.value)
    return out


@dataclass
class PreparedData:
    train: list[dict[str, Any]]
    eval: list[dict[str, Any]]
    eval_examples: list[Example]  # the held-out rows, for label accuracy and generations
    assistant_only_loss: bool = False  # train rows are whole conversations masked by the chat template
    formats: dict[str, str] = field(default_factory=dict)  # data.source / data.sources[i] / data.eval_source -> format
    sources: list[dict[str, Any]] = field(default_factory=list)  # what each source gave (SourceCheck.record)
    notes: list[str] = field(default_factory=list)
    train_where: list[str] = field(default_factory=list)  # the source row (file:line) of each train row
    template: str = "instruction"  # the template the training rows were written in ('auto' resolved)
    tools: Any = None  # sdk.data.tools.ToolTemplate when rows offer tools (the tokenizer now renders with its source)
    instruction: str | None = None  # the instruction all training rows share, if they do (classification data)
    json_columns: set[str] = field(default_factory=set)  # prompt rows' columns written as JSON text (sdk.data.prompts)
    files: dict[str, Path] = field(default_factory=dict)  # files shipped with the run (sdk.runs.shipping), on this node


def shipped_files(folder: Any, workdir: Path) -> dict[str, Path]:
    """The run folder's shipped files (files.json) downloaded into scratch, each checked against its sha256."""
    import hashlib
    import os

    from sdk.store.runfolder import FILES_INDEX

    if folder is None or not folder.store.exists(folder.key(FILES_INDEX)):
        return {}
    out = {}
    for name, entry in folder.read_json(FILES_INDEX).items():
        body = folder.store.get_bytes(folder.key(entry["key"]))
        if hashlib.sha256(body).hexdigest() != entry["sha256"]:
            raise DataError(f"{folder.uri}/{entry['key']}: its bytes do not match the sha256 recorded in {FILES_INDEX}")
        target = workdir / entry["key"]
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{os.getpid()}")  # ranks of a node share this folder
        partial.write_bytes(body)
        partial.replace(target)
        out[name] = target
    return out


def _route(train: list[Sample], chat_template: str | None) -> tuple[str, str | None]:
    multi = [s for s in train if learns_several_turns(s)]
    if not multi:  # one trained turn per conversation: one prompt/completion row says it exactly
        return "per_turn", None
    if any(s.kind != "conversation" for s in train):  # sources mixed: one prompt/completion shape holds them all
        return "per_turn", chat_loss_route(None, weighted=False)[1]
    # any row with a weight-0 turn, not only those that learn several turns: under assistant masks every row is one
    # whole conversation, and the masks would train the weight-0 turn of a row that learns one turn only
    return chat_loss_route(chat_template, weighted=any(skips_a_turn(s) for s in train))


def _tool_template(tokenizer: Any, model_type: str | None, rows: list[Sample]) -> Any:
    """When rows offer tools: the template they render with (sdk.data.tools.tool_template), set on the tokenizer,
    so the trainer, the evaluation and the saved tokenizer all render with it."""
    if tokenizer is None or not any(s.tools for s in rows):
        return None
    from sdk.data.tools import tool_template

    try:
        tools = tool_template(getattr(tokenizer, "chat_template", None), model_type)
    except ValueError as exc:
        raise DataError(f"data.source: {exc}") from None
    tokenizer.chat_template = tools.source
    return tools


def _mixture(spec: FineTuneSpec) -> Mixture:
    """Every source's samples held out and mixed (sdk.data.samples), or DataError listing the bad rows."""
    mixture = load_mixture(spec, local=_fetch_s3)
    bad = [c for c in [*mixture.checks, mixture.eval_check] if c is not None and c.bad]
    if bad:
        raise DataError("\n".join(c.error() for c in bad))
    return mixture


def prepare(spec: FineTuneSpec, tokenizer: Any = None, *, model_type: str | None = None, folder: Any = None,
            workdir: Path | None = None) -> PreparedData:
    data = spec.data
    mixture = _mixture(spec)
    train_rows, eval_rows = mixture.train, mixture.eval
    chat_template = getattr(tokenizer, "chat_template", None)
    has_chat = bool(chat_template) if tokenizer is not None else None
    route, why = _route(train_rows, chat_template)
    renderer = Renderers(spec, route, chat_template=has_chat)
    shapes = renderer.shapes(train_rows)
    if len(shapes) > 1:
        raise DataError(f"data.sources: {shape_refusal(shapes)}")
    eval_examples = [renderer.example(s) for s in eval_rows]
    eval_samples = eval_rows[: max(spec.eval.num_samples, 1)]
    placed = [(s.where, row) for s in train_rows for row in renderer.trainer_rows(s)]  # one sample may be several rows
    notes = [f"chat: {why}"] if why else []
    tools = _tool_template(tokenizer, model_type, train_rows + eval_rows)
    if tools is not None:
        notes.append(f"tools: {tools.how}")
    if any(p.data.template == "auto" for p in data.parts()) and any(isinstance(s.prompt, Instruction) for s in train_rows):
        notes.append(f"template: {auto_template_note(has_chat)}")
    if tokenizer is not None:
        lengths = LengthCount(data.max_length, NodeTokens(tokenizer), renderer)
        for sample in train_rows:
            lengths.add(sample)
        notes.append(f"training rows: {lengths.report()}")
    train_rows_out = [row for _, row in placed]
    eval_rows_out = [r for s in eval_samples for r in renderer.trainer_rows(s)]
    if tools is not None:  # tokenized here, from plain dicts: an arrow table would retype each row's arguments
        train_rows_out = tokenized_chat_rows(train_rows_out, tokenizer, [w for w, _ in placed])
        eval_rows_out = tokenized_chat_rows(eval_rows_out, tokenizer, [s.where for s in eval_samples for _ in renderer.trainer_rows(s)])
    encoded = json_columns(train_rows_out + eval_rows_out)
    train_rows_out, eval_rows_out = encode_json_columns(train_rows_out, encoded), encode_json_columns(eval_rows_out, encoded)
    return PreparedData(
        train=train_rows_out,
        template=renderer.template(train_rows[0]),
        instruction=shared_instruction(train_rows),
        train_where=[where for where, _ in placed],
        eval=eval_rows_out,
        eval_examples=eval_examples,
        assistant_only_loss=route == "assistant_masks" and tools is None,  # tokenized tool rows carry their masks
        tools=tools,
        formats=mixture.formats,
        sources=mixture.records(),
        notes=notes,
        json_columns=encoded,
        files=shipped_files(folder, workdir) if workdir is not None else {},
    )


def data_summary(data: PreparedData, trainer: Any) -> dict[str, Any]:
    """The summary's account of the data: each source's counts and hash, the template, tools, per-epoch steps."""
    from sdk.core.summary import Cadence, DataSource, ToolCalling

    cadence = getattr(trainer, "finetune_cadence", None)
    return {"data_format": next(iter(data.formats.values()), None), "template": data.template,
            "instruction": data.instruction, "data_sources": [DataSource(**r) for r in data.sources],
            "cadence": Cadence(**cadence) if cadence else None,
            "tool_calling": ToolCalling(native=data.tools.native, parser=data.tools.parser) if data.tools else None}


def _with_argument_objects(turns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Turns as vLLM hands them to a chat template: each call's arguments an object, not JSON text (Qwen's and
    Llama's templates write `arguments | tojson`; the Hermes prologue writes either the same way)."""
    out = []
    for turn in turns:
        if turn.get("tool_calls"):
            calls = [{**c, "function": {**c["function"], "arguments": json.loads(c["function"]["arguments"])}} for c in turn["tool_calls"]]
            turn = {**turn, "tool_calls": calls}
        out.append(turn)
    return out


def tokenized_chat_rows(rows: list[dict[str, Any]], tokenizer: Any, where: list[str]) -> list[dict[str, Any]]:
    """Chat rows that offer tools, tokenized as trl would (the prompt's tokens out of the loss, or the template's
    assistant masks), but from the turns themselves, so each call's arguments reach the template as an object."""
    out = []
    for row, place in zip(rows, where, strict=True):
        tools = json.loads(row["tools"]) if row.get("tools") else None
        try:
            if "messages" in row:
                encoded = tokenizer.apply_chat_template(_with_argument_objects(row["messages"]), tools=tools, tokenize=True,
                                                        return_dict=True, return_assistant_tokens_mask=True)
                out.append({"input_ids": list(encoded["input_ids"]), "assistant_masks": list(encoded["assistant_masks"])})
                continue
            prompt = _with_argument_objects(row["prompt"])
            text = tokenizer.apply_chat_template(prompt, tools=tools, tokenize=False, add_generation_prompt=True)
            full = tokenizer.apply_chat_template(prompt + _with_argument_objects(row["completion"]), tools=tools, tokenize=False)
        except Exception as exc:  # the template's own refusal (e.g. one call per turn): the row, not a traceback
            raise DataError(f"{place}: the model's chat template cannot render this row: {exc}") from None
        ids = tokenizer(full, add_special_tokens=False)["input_ids"]
        prompt_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        shared = next((i for i, (a, b) in enumerate(zip(prompt_ids, ids, strict=False)) if a != b), min(len(prompt_ids), len(ids)))
        out.append({"input_ids": ids, "completion_mask": [0] * shared + [1] * (len(ids) - shared)})
    return out


def shared_instruction(rows: list[Sample]) -> str | None:
    """The instruction of every row when they all have the same one and an input (a classifier's rows)."""
    prompts = [s.prompt for s in rows]
    if prompts and all(isinstance(p, Instruction) and p.input for p in prompts):
        if len({p.instruction for p in prompts}) == 1:
            return prompts[0].instruction
    return None


class NodeTokens:
    """The model's tokenizer in the shape sdk.data.tokencount.LengthCount counts with (the client's is tokenizers +
    jinja2; here transformers itself)."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.eos = tokenizer.eos_token or ""

    def render_chat(self, turns: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> str:
        return self.tokenizer.apply_chat_template(turns, tools=tools, tokenize=False)

    def count(self, texts: list[str]) -> list[int]:
        return [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]


def preview(row: dict[str, Any], tokenizer: Any, *, where: str, completion_only: bool = True) -> dict[str, Any]:
    """The first training row as the trainer tokenized it, decoded: `text` is what the model reads and
    `trained` the tokens the loss is on (joined, in order). Written to the run folder as data_preview.json."""
    def decode(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=False)

    for suffix in ("ids", "input_ids"):  # DPO (trl 1.x names them prompt_ids; older trl prompt_input_ids)
        if f"chosen_{suffix}" in row:
            return {"where": where, **{part: decode(row[f"{part}_{suffix}"]) for part in ("prompt", "chosen", "rejected")}}
    if "label" in row and "completion_ids" in row:  # KTO: one answer, labelled desirable or not
        return {"where": where, "prompt": decode(row["prompt_ids"]), "completion": decode(row["completion_ids"]),
                "label": bool(row["label"])}
    if "input_ids" not in row and "prompt" in row:  # a prompt row (grpo): tokenized when its answers are sampled
        prompt = row["prompt"]
        text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True) \
            if isinstance(prompt, list) else prompt
        return {"where": where, "prompt": text, "reference": row.get("reference")}
    ids = list(row["input_ids"])
    if "labels" in row:  # trl folds its masks into labels: -100 is out of the loss
        mask = [label != -100 for label in row["labels"]]
    else:
        mask = row.get("assistant_masks") or (row.get("completion_mask") if completion_only else None) or [1] * len(ids)
    return {"where": where, "text": decode(ids), "trained": decode([i for i, m in zip(ids, mask, strict=True) if m])}


def labelled_examples(spec: FineTuneSpec, path: str, *, text_field: str = "text", label_field: str = "label",
                      template: str | None = None) -> list[Example]:
    """A user's labelled file for `finetune eval`: rows with text + label (or the recipe's field mapping), written in
    `template`, the one the run trained in (its summary's)."""
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
    mapped.data.format = "alpaca"
    if template in ("instruction", "chat"):
        mapped.data.template = template
    elif mapped.data.template == "plain":
        mapped.data.template = "auto"
    if fields.instruction not in sample and mapped.data.instruction is None:
        from sdk.data.builtin import INSTRUCTION

        labels = spec.eval.labels or []
        mapped.data.instruction = (
            INSTRUCTION if (spec.data.source or "").startswith("builtin:news") else f"Classify the text as one of: {', '.join(labels)}."
        )
    check = load_samples(mapped.model_copy(update={"objective": "sft"}), path, "--data")
    if check.bad:
        raise DataError(check.error())
    renderer = Renderer(mapped)
    return [renderer.example(s) for s in check.samples]


def rows_kept(kept: int, rows: int, max_length: int, *, say: bool) -> None:
    """trl drops a row whose answer starts after max_length tokens (nothing left to learn): all of them is an error
    naming the setting, some of them a line in the log."""
    from sdk.core.errors import SpecError

    if kept == 0:
        raise SpecError(f"data.max_length: every training row's answer starts after {max_length} tokens (its prompt is "
                        "longer), so truncation leaves nothing to learn; raise data.max_length (finetune validate reports "
                        "the longest row)")
    if kept < rows and say:
        print(f"[finetune] {rows - kept} of {rows} training rows dropped: their answer starts after data.max_length "
              f"{max_length} tokens", flush=True)
