"""Committed directories: files first, MANIFEST.json (size and sha256 of each) last; fetched back verified, all
or nothing."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from sdk.core.errors import IntegrityError, StoreError
from sdk.store.atomic import staged_dir
from sdk.store.base import MANIFEST, Store, contained

# ---------------------------------------------------------------------------- committed directories


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def commit_dir(store: Store, local_dir: Path, key: str) -> dict[str, Any]:
    """Upload every file of local_dir under key/, then MANIFEST.json last. Returns the manifest."""
    local_dir = Path(local_dir)
    files = sorted(p for p in local_dir.rglob("*") if p.is_file() and p.name != MANIFEST)
    if not files:
        raise StoreError(f"{local_dir}: nothing to commit")
    manifest: dict[str, Any] = {"files": {}, "created": time.time()}
    for path in files:
        rel = path.relative_to(local_dir).as_posix()
        manifest["files"][rel] = {"sha256": sha256_file(path), "size": path.stat().st_size}
    # A re-commit (a retried upload) first hides the old manifest so no reader mixes old and new files.
    if store.exists(f"{key}/{MANIFEST}"):
        store.delete_prefix(key)
    for path in files:
        store.upload_file(path, f"{key}/{path.relative_to(local_dir).as_posix()}")
    store.put_bytes(f"{key}/{MANIFEST}", json.dumps(manifest, indent=1).encode())
    return manifest


def read_manifest(store: Store, key: str) -> dict[str, Any] | None:
    """The manifest of a committed directory, or None when it is absent (uncommitted or partial)."""
    if not store.exists(f"{key}/{MANIFEST}"):
        return None
    try:
        manifest = json.loads(store.get_bytes(f"{key}/{MANIFEST}"))
    except ValueError:
        raise IntegrityError(f"{store.url(key)}/{MANIFEST}: manifest is not valid JSON") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise IntegrityError(f"{store.url(key)}/{MANIFEST}: manifest has no 'files' table")
    return manifest


# Files that mark a folder as one this product wrote for the user: a fetch (adapter or run folder), a merged
# model or an export. Not MANIFEST.json or spec.json: live run folders and checkpoints in a local store hold those.
FETCHED = ".finetune-fetched"
REPLACEABLE_MARKERS = (FETCHED, "merge_report.json", "export_report.json")


def check_replaceable(dest: Path) -> None:
    """`--force` replaces a previous fetch or merge, nothing else: never the current directory, the home
    directory, / or a parent of any of them, and never a folder without one of this product's markers."""
    dest = Path(dest).expanduser().resolve()
    if not dest.exists() or not any(dest.iterdir()):
        return
    for guarded in (Path.cwd().resolve(), Path.home().resolve(), Path("/")):
        if dest == guarded or dest in guarded.parents:
            raise StoreError(f"{dest}: --force will not replace {'/' if dest == Path('/') else 'the current or home directory'}"
                             " or a folder above it; give a new destination")
    if not any((dest / marker).is_file() for marker in REPLACEABLE_MARKERS):
        raise StoreError(f"{dest}: not a previous fetch or merge (none of {', '.join(REPLACEABLE_MARKERS)} in it); "
                         "--force only replaces those: give a new or empty destination")


def fetch_dir(store: Store, key: str, dest: Path, *, overwrite: bool = False) -> Path:
    """Download a committed directory into dest, verifying sizes and sha256; all or nothing."""
    dest = Path(dest).expanduser().resolve()
    manifest = read_manifest(store, key)
    if manifest is None:
        raise StoreError(f"{store.url(key)}: not committed (no {MANIFEST}); the run may still be writing it")
    if dest.exists() and any(dest.iterdir()) and not overwrite:
        raise StoreError(f"{dest}: destination exists and is not empty (pass overwrite=True / --force)")
    with staged_dir(dest) as staging:
        for rel, meta in manifest["files"].items():
            try:
                target = contained(staging, rel)
            except StoreError as exc:
                raise StoreError(f"{store.url(key)}: manifest entry: {exc}") from None
            target.parent.mkdir(parents=True, exist_ok=True)
            store.download_file(f"{key}/{rel}", target)
            size, digest = target.stat().st_size, sha256_file(target)
            if size != meta.get("size") or digest != meta.get("sha256"):
                raise IntegrityError(
                    f"{store.url(key)}/{rel}: corrupted: size {size} sha256 {digest[:12]}… "
                    f"but the manifest says size {meta.get('size')} sha256 {str(meta.get('sha256'))[:12]}…"
                )
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1))
        (staging / FETCHED).write_text(f"{store.url(key)}\n")
    return dest
