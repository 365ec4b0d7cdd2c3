"""Model references, shared by client and node: what a `model.id` names (`tiny:<arch>`, `pkg://package/file`, a
.gguf file, a model directory, a Hub id) and where this machine caches what is derived from one. Standard
library only: the client imports it without torch or transformers."""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sdk.core.errors import SpecError

if TYPE_CHECKING:
    from sdk.core.spec import ModelSpec

TINY = "tiny:"  # tiny:<arch>: a few-layer random model of that architecture, built by the node (launch/tiny.py)
PACKAGE = "pkg://"  # pkg://<package>/<file>: a file shipped inside an installed Python package

TINY_VERSION = "v2"  # bump when the tiny models change: a new cache folder, never a stale model


def cache_dir(*parts: str) -> Path:
    root = Path(os.environ.get("FINETUNE_CACHE", Path.home() / ".cache" / "finetune"))
    return root.joinpath(*parts)


@dataclass(frozen=True)
class ModelSource:
    """Where from_pretrained reads: a path or Hub id, with the GGUF file inside it if any."""

    path: str
    gguf_file: str | None = None
    revision: str | None = None

    @property
    def is_local(self) -> bool:
        return Path(self.path).exists()


def tiny_arch(model_id: str) -> str | None:
    """The architecture a `tiny:<arch>` id names (llama when left empty); None for every other reference."""
    return (model_id[len(TINY):] or "llama") if model_id.startswith(TINY) else None


def names_a_file(model: ModelSpec) -> bool:
    """Is the model a single checkpoint file (pkg://, .gguf, or a GGUF inside a folder or repo)?"""
    return model.id.startswith(PACKAGE) or model.id.endswith(".gguf") or model.gguf_file is not None


def tiny_dir(arch: str) -> Path:
    """Where `tiny:<arch>` is cached once built (launch/tiny.py builds it; the client only looks)."""
    return cache_dir("tiny", f"{arch or 'llama'}-{TINY_VERSION}")


def resolve_reference(model: ModelSpec) -> ModelSource:
    """A model id as a place to read from: `pkg://package/file`, a .gguf file, a local model directory, or a
    Hub id. Not `tiny:` (a tiny model is built by the node: launch.models.resolve)."""
    ident = model.id
    if tiny_arch(ident):
        raise SpecError(f"model.id: {ident} is built by the node (launch.models.resolve), not a reference")
    if ident.startswith(PACKAGE):
        package, _, rel = ident[len(PACKAGE):].partition("/")
        spec = importlib.util.find_spec(package)  # finds the folder without running the package's __init__
        if spec is None or not spec.submodule_search_locations:
            raise SpecError(f"model.id: package {package!r} is not installed (pip install {package.replace('_', '-')})")
        file = Path(list(spec.submodule_search_locations)[0]) / rel
        if not file.is_file():
            raise SpecError(f"model.id: {file} does not exist in package {package!r}")
        ident = str(file)
    path = Path(ident).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise SpecError(f"model.id: GGUF file {path} does not exist")
        return ModelSource(str(path.parent), path.name)
    if path.exists():
        if not path.is_dir():
            raise SpecError(f"model.id: {path} is a file; give a model directory or a .gguf file")
        if model.gguf_file is None and not (path / "config.json").is_file():
            raise SpecError(f"model.id: {path} has no config.json (not a transformers model directory)")
        return ModelSource(str(path), model.gguf_file)
    if ident.startswith((".", "/", "~")):
        raise SpecError(f"model.id: local path {ident} does not exist")
    return ModelSource(ident, model.gguf_file, model.revision)


def gguf_cache(source: ModelSource) -> Path:
    """Where a GGUF checkpoint's float32 conversion is cached, keyed by the file's identity."""
    gguf = Path(source.path) / str(source.gguf_file)
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_dir("gguf", f"{gguf.stem}-{key}")


