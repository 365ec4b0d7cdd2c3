"""`target_modules` as a regular expression: checked against the model's module names before a run starts.

peft reads a `target_modules` string other than its keywords as a pattern that must `re.fullmatch` a module's
full name (`model.layers.0.self_attn.q_proj`); a pattern matching nothing would attach an empty adapter, or
fail deep inside peft. `pattern_error` is the one rule, used twice: on the client, with the names of the
model's 2-D weights read from its files' headers (safetensors, a sharded index, or a Llama-family GGUF)
without torch; and on the node (launch.methods), with `model.named_modules()`, for models the client cannot
read (tiny models, Hub models not in the local cache). Standard library only.
"""

from __future__ import annotations

import json
import os
import re
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

if TYPE_CHECKING:
    from sdk.core.spec import FineTuneSpec, ModelSpec

KEYWORDS = ("all-linear", "attention")
FIELD = "method.target_modules"


def is_pattern(target: Any) -> bool:
    """Is this target_modules value a regular expression (a string other than the keywords)?"""
    return isinstance(target, str) and target not in KEYWORDS


def compile_error(pattern: str) -> str | None:
    """Why the pattern is not a regular expression, or None."""
    try:
        re.compile(pattern)
    except re.error as exc:
        return f"'{pattern}' is neither 'all-linear' / 'attention' nor a valid regular expression: {exc}"
    return None


def pattern_error(pattern: str, names: list[str], model: str) -> str | None:
    """One line when the pattern fullmatches none of the module names (as peft matches it), else None."""
    regex = re.compile(pattern)
    if any(regex.fullmatch(name) for name in names):
        return None
    first = [n for n in names if ".0." in n] or names  # the first block shows how every block is named
    examples = list(dict.fromkeys([*first[:2], first[-1]])) if first else []
    like = f"; modules are named like {', '.join(examples)}" if examples else ""
    return f"{FIELD}: the pattern '{pattern}' matches no layer an adapter can wrap (Linear, Embedding) in {model}{like}"


def check_target_modules(spec: FineTuneSpec) -> None:
    """SpecError when a regex target_modules matches no module of a model whose files this machine can read."""
    from sdk.core.errors import SpecError

    target = getattr(spec.method, "target_modules", None)
    if not is_pattern(target):
        return
    names = client_module_names(spec.model)
    if names is not None:
        error = pattern_error(target, names, spec.model.id)
        if error:
            raise SpecError(error)


# ------------------------------------------------------------------------------- names from files


def client_module_names(model: ModelSpec) -> list[str] | None:
    """Names of the modules peft could target (2-D weights less `.weight`), or None where no file is readable."""
    from sdk.core.errors import SpecError
    from sdk.core.modelref import gguf_cache, tiny_arch, tiny_dir

    if tiny_arch(model.id):
        folder: Path | None = tiny_dir(tiny_arch(model.id) or "llama")
    else:
        from sdk.core.modelref import resolve_reference

        try:
            source = resolve_reference(model)
        except SpecError:
            return None  # the spec's own check reports a bad reference
        if source.gguf_file:
            cached = gguf_cache(source)
            if (cached / "model.safetensors").is_file():  # the node's conversion, names as transformers gives them
                return _with_head(safetensors_names(cached))
            return _with_head(gguf_names(Path(source.path) / source.gguf_file))
        folder = Path(source.path) if source.is_local else hub_snapshot(source.path, source.revision)
    if folder is None or not folder.is_dir():
        return None
    return _with_head(safetensors_names(folder))


def _with_head(names: list[str] | None) -> list[str] | None:
    # A tied output head has no weight of its own in the files, yet transformers builds an lm_head module.
    if names and "model.embed_tokens" in names and "lm_head" not in names:
        return [*names, "lm_head"]
    return names


def hub_snapshot(repo: str, revision: str | None) -> Path | None:
    """The Hugging Face cache's snapshot folder of a Hub model, if downloaded."""
    root = Path(os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub")
    repo_dir = root / f"models--{repo.replace('/', '--')}"
    ref = repo_dir / "refs" / (revision or "main")
    commit = ref.read_text().strip() if ref.is_file() else revision
    snapshot = repo_dir / "snapshots" / str(commit)
    return snapshot if commit and snapshot.is_dir() else None


def safetensors_names(folder: Path) -> list[str] | None:
    """2-D `.weight` tensors of a model folder (one file or a sharded index), read from the headers only."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (folder / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        return None
    names: list[str] = []
    for file in files:
        with open(folder / file, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))  # the format: an 8-byte length, then a JSON header
            header = json.loads(f.read(length))
        names += [k[: -len(".weight")] for k, v in header.items()
                  if k != "__metadata__" and k.endswith(".weight") and len(v["shape"]) == 2]
    return names


# GGUF names of the Llama family (llama, mistral, qwen2, smollm …) and the modules transformers loads them into.
GGUF_BLOCK = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
              "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
              "ffn_down": "mlp.down_proj"}
GGUF_TOP = {"token_embd": "model.embed_tokens", "output": "lm_head"}
_SCALAR = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # GGUF value type -> bytes


def gguf_names(path: Path) -> list[str] | None:
    """Module names of a Llama-family GGUF file's 2-D weights, or None for an architecture not mapped here."""
    names = []
    for name, dims in _gguf_tensors(path):
        stem = name[: -len(".weight")] if name.endswith(".weight") else None
        if stem is None or dims != 2:
            continue
        parts = stem.split(".")
        if len(parts) == 3 and parts[0] == "blk" and parts[2] in GGUF_BLOCK:
            names.append(f"model.layers.{parts[1]}.{GGUF_BLOCK[parts[2]]}")
        elif stem in GGUF_TOP:
            names.append(GGUF_TOP[stem])
        else:
            return None  # a weight this table does not know: leave the check to the node
    return names


def _gguf_tensors(path: Path) -> list[tuple[str, int]]:
    """(name, number of dimensions) of every tensor, from a GGUF (v2/v3) header."""
    with open(path, "rb") as f:
        magic, _version, tensors, kvs = struct.unpack("<4sIQQ", f.read(24))
        if magic != b"GGUF":
            return []
        for _ in range(kvs):
            _string(f)
            _skip_value(f, struct.unpack("<I", f.read(4))[0])
        out = []
        for _ in range(tensors):
            name = _string(f)
            (dims,) = struct.unpack("<I", f.read(4))
            f.seek(8 * dims + 4 + 8, os.SEEK_CUR)  # the shape, the type, the data offset
            out.append((name, dims))
        return out


def _string(f: BinaryIO) -> str:
    (length,) = struct.unpack("<Q", f.read(8))
    return f.read(length).decode("utf-8", "replace")


def _skip_value(f: BinaryIO, kind: int) -> None:
    if kind == 8:  # string
        f.seek(struct.unpack("<Q", f.read(8))[0], os.SEEK_CUR)
    elif kind == 9:  # array: item type, count, items
        item, count = struct.unpack("<IQ", f.read(12))
        if item in _SCALAR:
            f.seek(_SCALAR[item] * count, os.SEEK_CUR)
        else:
            for _ in range(count):
                _skip_value(f, item)
    else:
        f.seek(_SCALAR[kind], os.SEEK_CUR)
