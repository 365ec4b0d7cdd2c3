"""The store interface every backend of the run folder uses, and the key rules (no key escapes its root)."""

from __future__ import annotations

import posixpath
from pathlib import Path
from typing import Protocol, TypeVar

from sdk.core.errors import StoreError

MANIFEST = "MANIFEST.json"
T = TypeVar("T")


class Store(Protocol):
    """Keys are '/'-separated paths relative to the store's root URI."""

    uri: str

    def url(self, key: str) -> str: ...
    def put_bytes(self, key: str, data: bytes) -> None: ...
    def get_bytes(self, key: str) -> bytes: ...
    def exists(self, key: str) -> bool: ...
    def list(self, prefix: str) -> list[str]: ...
    def upload_file(self, path: Path, key: str) -> None: ...
    def download_file(self, key: str, path: Path) -> None: ...
    def delete_prefix(self, prefix: str) -> None: ...


def open_store(uri: str) -> Store:
    """A store for `s3://bucket/prefix` or a local directory (created on first write)."""
    if uri.startswith("s3://"):
        from sdk.store.s3 import S3Store

        return S3Store(uri)
    if "://" in uri:
        raise StoreError(f"{uri}: unsupported store; use s3://bucket/prefix or a local directory")
    from sdk.store.local import LocalStore

    return LocalStore(uri)


def split_run_uri(run_uri: str) -> tuple[str, str]:
    """'s3://b/p/run-1' -> ('s3://b/p', 'run-1')."""
    run_uri = run_uri.rstrip("/")
    if "://" not in run_uri:
        run_uri = str(Path(run_uri).expanduser().resolve())
    parent, _, run_id = run_uri.rpartition("/")
    if not run_id or not parent:
        raise StoreError(f"{run_uri}: not a run folder URI (<store>/<run_id>)")
    return parent, run_id


def _safe_key(key: str) -> str:
    """Reject keys that could escape a root: absolute, '..', backslashes, empty segments ('a//b' is an
    absolute path once joined after the prefix it was listed under)."""
    norm = posixpath.normpath(key)
    if (key.startswith("/") or norm.startswith("..") or "\\" in key or norm in ("", ".") or "/../" in f"/{key}/"
            or "" in key.split("/")[:-1]):
        raise StoreError(f"refusing unsafe key {key!r}: it would escape its folder")
    return norm


def contained(root: Path, key: str) -> Path:
    """Where a store key lands under a local folder, or StoreError when it would land anywhere else: the one
    check every path that comes from a store goes through (fetch, fetch --all, checkpoints, a local store's
    own files): absolute keys, '..', empty segments, backslashes, and symlinks under root that lead out."""
    root = Path(root).resolve()
    target = (root / _safe_key(key)).resolve()
    if target != root and root not in target.parents:
        raise StoreError(f"refusing key {key!r}: it resolves to {target}, outside {root}")
    return target
