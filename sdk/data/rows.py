"""Rows of a data source, each with where it came from (`file:line`), read without torch.

Used by the client's check before launch and by the node alike. A row that cannot be parsed comes back
as a `BadRow` in its place, so a check can list every bad line instead of stopping at the first.
Sources: a local file or directory (jsonl, json, csv, parquet, txt), an s3:// object (jsonl streamed line by
line; the other types downloaded to a temporary file), builtin:<name>, or a Hub dataset id.
"""

from __future__ import annotations

import csv
import json
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdk.core.errors import SpecError


class DataError(SpecError):
    """The data does not match the spec (unreadable file, missing column, malformed row). The message is the
    error itself (it names the field and file:line), without the "invalid spec" heading."""

    def __init__(self, message: str):
        super().__init__(message)
        self.args = (message,)

    def __str__(self) -> str:
        return str(self.args[0])


class DataUnreachable(DataError):
    """The data could not be read from here at all (no credentials, no network, no such object): nothing is
    known about its rows. A launch refuses; a dry run says so in one line and shows the plan anyway."""


class RowError(ValueError):
    """What is wrong with one row; the caller adds where the row is (raised by sdk.data.turns, tools, formats)."""


@dataclass(frozen=True)
class Row:
    where: str  # "train.jsonl:12", "data.parquet:row 7", "builtin:news-topics:row 3"
    value: dict[str, Any]


@dataclass(frozen=True)
class BadRow:
    where: str
    reason: str


SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet",
            ".txt": "txt"}


def file_type(name: str, declared: str = "auto", *, field: str = "data.source") -> str:
    if declared != "auto":
        return declared
    kind = SUFFIXES.get(Path(name).suffix.lower())
    if kind is None:
        raise DataError(f"{field}: {name}: cannot tell the file type from the suffix; set data.file_type (jsonl, json, csv, parquet, txt, txt_blocks)")
    return kind


# ------------------------------------------------------------------------------------------ readers


def _decoded(raw: bytes, where: str) -> str | BadRow:
    """A line as text, or the bad row that says where it is not UTF-8 (never replaced silently: a replaced
    byte would train as U+FFFD)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return BadRow(where, f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}); save the file as UTF-8")


def _jsonl_lines(lines: Iterator[bytes], name: str) -> Iterator[Row | BadRow]:
    for number, raw in enumerate(lines, 1):
        if number == 1:
            raw = raw.removeprefix(b"\xef\xbb\xbf")  # a byte-order mark
        if not raw.strip():
            continue
        where = f"{name}:{number}"
        line = _decoded(raw, where)
        if isinstance(line, BadRow):
            yield line
            continue
        try:
            value = json.loads(line)
        except ValueError as exc:
            yield BadRow(where, f"not valid JSON ({getattr(exc, 'msg', exc)})")
            continue
        except RecursionError:
            yield BadRow(where, "JSON nested too deeply to be a training row")
            continue
        if isinstance(value, dict):
            yield Row(where, value)
        else:
            yield BadRow(where, f"each line must be a JSON object, not {type(value).__name__}")


def _read_jsonl(path: Path, name: str) -> Iterator[Row | BadRow]:
    with open(path, "rb") as handle:
        yield from _jsonl_lines(handle, name)


def _not_utf8(path: Path, name: str) -> BadRow | None:
    """The first line that is not UTF-8, read line by line (a large file is never held whole), or None."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            bad = _decoded(raw.removeprefix(b"\xef\xbb\xbf") if number == 1 else raw, f"{name}:{number}")
            if isinstance(bad, BadRow):
                return bad
    return None


def _read_text(path: Path, name: str) -> str | BadRow:
    """A whole file as text (a JSON document is parsed whole anyway), or the bad row where it is not UTF-8."""
    return _not_utf8(path, name) or path.read_text(encoding="utf-8-sig")


def _read_json(path: Path, name: str) -> Iterator[Row | BadRow]:
    """A JSON list of objects (or {"data": [...]}); each object is located by the line it starts on."""
    text = _read_text(path, name)
    if isinstance(text, BadRow):
        yield text
        return
    decoder = json.JSONDecoder()
    try:
        whole = json.loads(text)
    except ValueError as exc:
        yield BadRow(f"{name}:{getattr(exc, 'lineno', 1)}", f"not valid JSON ({getattr(exc, 'msg', exc)})")
        return
    except RecursionError:
        yield BadRow(f"{name}:1", "JSON nested too deeply to be training rows")
        return
    if isinstance(whole, dict) and isinstance(whole.get("data"), list):
        start = text.index("[", text.index('"data"'))
    elif isinstance(whole, list):
        start = text.index("[")
    else:
        yield BadRow(f"{name}:1", "expected a JSON list of objects (or {\"data\": [...]})")
        return
    position = start + 1
    for item in whole if isinstance(whole, list) else whole["data"]:
        while text[position] in " \t\r\n,":
            position += 1
        _, end = decoder.raw_decode(text, position)
        where = f"{name}:{text.count(chr(10), 0, position) + 1}"
        position = end
        if isinstance(item, dict):
            yield Row(where, item)
        else:
            yield BadRow(where, f"each item must be a JSON object, not {type(item).__name__}")


def _read_csv(path: Path, name: str) -> Iterator[Row | BadRow]:
    bad = _not_utf8(path, name)
    if bad is not None:
        yield bad
        return
    with open(path, encoding="utf-8-sig", newline="") as handle:  # streamed
        reader = csv.DictReader(handle)
        _ = reader.fieldnames  # reads the header, so the first row is numbered after it
        line = reader.line_num
        for record in reader:
            where = f"{name}:{line + 1}"
            line = reader.line_num
            if None in record:  # more cells than the header has columns
                yield BadRow(where, f"{len(record) - 1 + len(record[None])} cells for {len(reader.fieldnames or [])} header columns")
            else:
                yield Row(where, dict(record))


def _read_parquet(path: Path, name: str) -> Iterator[Row | BadRow]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{name}: reading parquet needs pyarrow: pip install pyarrow") from None
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise DataError(f"{name}: cannot read parquet: {exc}") from None
    for index, value in enumerate(table.to_pylist(), 1):
        yield Row(f"{name}:row {index}", value)


def _read_txt(path: Path, name: str) -> Iterator[Row | BadRow]:
    """Plain text for continued pre-training: the whole file is one document (a `text` row)."""
    text = _read_text(path, name)
    if isinstance(text, BadRow):
        yield text
    elif not text.strip():
        yield BadRow(f"{name}:1", "an empty text file: nothing to train on")
    else:
        yield Row(f"{name}:1", {"text": text})


def _read_txt_blocks(path: Path, name: str) -> Iterator[Row | BadRow]:
    """Plain text where each block of lines between blank lines is one document, located by its first line."""
    text = _read_text(path, name)
    if isinstance(text, BadRow):
        yield text
        return
    block: list[str] = []
    start = 0
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")  # only real line breaks (not \f, \u2028)
    for number, line in enumerate([*lines, ""], 1):
        if line.strip():
            if not block:
                start = number
            block.append(line)
        elif block:
            yield Row(f"{name}:{start}", {"text": "\n".join(block)})
            block = []


READERS = {"jsonl": _read_jsonl, "json": _read_json, "csv": _read_csv, "parquet": _read_parquet, "txt": _read_txt,
           "txt_blocks": _read_txt_blocks}


# ------------------------------------------------------------------------------------------ sources


def _s3_rows(uri: str, declared: str, field: str) -> Iterator[Row | BadRow]:
    from sdk.core.errors import StoreError
    from sdk.store import open_store

    parent, _, key = uri.rstrip("/").rpartition("/")
    kind = file_type(uri, declared, field=field)
    store = open_store(parent)
    try:
        if kind == "jsonl":  # streamed: a large file is checked without being held in memory or on disk
            yield from _jsonl_lines(store.iter_lines(key), uri)
            return
        with tempfile.TemporaryDirectory(prefix="finetune-check-") as tmp:
            local = Path(tmp) / key
            store.download_file(key, local)
            yield from READERS[kind](local, uri)
    except StoreError as exc:
        raise DataUnreachable(f"{field}: {exc}") from None


def iter_rows(source: str, *, declared: str = "auto", split: str = "train", field: str = "data.source",
              s3_local: Path | None = None) -> Iterator[Row | BadRow]:
    """Every row of a source, in order. `s3_local`: a copy of an s3:// source already downloaded (the node)."""
    if source.startswith("builtin:"):
        from sdk.data.builtin import load_builtin

        try:
            values = load_builtin(source)
        except ValueError as exc:
            raise DataError(f"{field}: {exc}") from None
        for index, value in enumerate(values, 1):
            yield Row(f"{source}:row {index}", value)
        return
    if source.startswith("s3://"):
        if s3_local is not None:
            yield from READERS[file_type(source, declared, field=field)](s3_local, source)
        else:
            yield from _s3_rows(source, declared, field)
        return
    path = Path(source).expanduser()
    if path.is_file():
        yield from READERS[file_type(str(path), declared, field=field)](path, source)
        return
    if path.is_dir():
        files = folder_files(path, declared)
        if not files:
            raise DataError(f"{field}: {path} holds no {'jsonl/json/csv/parquet/txt' if declared == 'auto' else declared} files")
        for file in files:
            yield from READERS[file_type(str(file), declared, field=field)](file, str(file))
        return
    if not is_hub_id(source):
        raise DataError(f"{field}: {source} does not exist")
    yield from _hub_rows(source, split, field)


def folder_files(path: Path, declared: str) -> list[Path]:
    """The data files of a folder: those of the declared type (txt and txt_blocks read .txt files); for `auto`,
    every data file, except that .txt files count only in a folder of nothing else (a corpus) — beside jsonl
    or csv files, a README.txt is a note, not training text."""
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES)
    if declared != "auto":
        wanted = "txt" if declared == "txt_blocks" else declared  # txt_blocks reads .txt files another way
        return [p for p in files if SUFFIXES[p.suffix.lower()] == wanted]
    structured = [p for p in files if p.suffix.lower() != ".txt"]
    return structured or files


def is_hub_id(source: str) -> bool:
    """A Hub dataset id rather than a missing local path."""
    return not (source.startswith((".", "/", "~", "builtin:", "s3://")) or Path(source).suffix.lower() in SUFFIXES)


def _hub_rows(source: str, split: str, field: str) -> Iterator[Row | BadRow]:
    import datasets

    name, _, config = source.partition(":")
    try:
        ds = datasets.load_dataset(name, config or None, split=split)
    except Exception as exc:  # datasets raises many types; all mean "cannot get it"
        raise DataError(f"{field}: cannot load Hub dataset {source!r} (split {split!r}): {exc}".splitlines()[0]) from None
    for index, value in enumerate(ds.to_list(), 1):
        yield Row(f"{source}[{split}]:row {index}", value)
