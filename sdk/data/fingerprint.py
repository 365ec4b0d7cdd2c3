"""The bytes a run's data is made of: sha256 of every data file, and an S3 object's ETag and VersionId — for the run
record (sdk.core.record), written by the client at submit and by the node as it reads, and checked again by
`finetune rerun` before it launches.

A local file: sha256 and size. A folder source: each of its data files (sdk.data.rows.folder_files). An s3://
object: head_object's ETag, VersionId and size, and the sha256 of its bytes where they are read (the node hashes
the copy it trains on; a rerun downloads one only when the ETag alone cannot tell). builtin: data ships with the
product (its version is recorded). A Hub dataset is not a file here: the summary keeps the hash of its rows.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdk.core.record import DataFile
from sdk.data.rows import folder_files, is_hub_id
from sdk.store.manifest import sha256_file


def _hashed(path: Path) -> dict[str, Any]:
    return {"sha256": sha256_file(path), "size": path.stat().st_size}


def spec_sources(spec: Any) -> list[tuple[str, str, str]]:
    """(field, source, declared file type) of every source a spec reads: each of data.parts(), then eval_source."""
    out = [(p.field, p.data.source or "", p.data.file_type) for p in spec.data.parts()]
    if spec.data.eval_source:
        out.append(("data.eval_source", spec.data.eval_source, spec.data.file_type))
    return out


def s3_head(uri: str) -> dict[str, Any]:
    """{etag, version_id, size} of an s3:// object (StoreError naming it when it cannot be read)."""
    from sdk.store import open_store

    parent, _, name = uri.rstrip("/").rpartition("/")
    meta = open_store(parent).head(name)  # type: ignore[attr-defined]  (an s3:// store)
    return {"etag": str(meta.get("ETag") or "").strip('"') or None, "version_id": meta.get("VersionId"),
            "size": meta.get("ContentLength")}


def s3_sha256(uri: str) -> str:
    """The sha256 of an s3:// object's bytes, downloaded into a temporary folder that is removed after."""
    from sdk.store import open_store

    parent, _, name = uri.rstrip("/").rpartition("/")
    with tempfile.TemporaryDirectory(prefix="finetune-rehash-") as tmp:
        local = Path(tmp) / "object"
        open_store(parent).download_file(name, local)
        return sha256_file(local)


def fingerprint(field: str, source: str, *, declared: str = "auto",
                s3_copy: Callable[[str], Path] | None = None) -> list[DataFile]:
    """The files of one source, hashed. `s3_copy`: an s3:// URI -> the local copy to hash (the node's download);
    without it an S3 object is headed only."""
    base = {"field": field, "source": source}
    if source.startswith("builtin:"):
        return [DataFile(**base, kind="builtin")]
    if source.startswith("s3://"):
        head = s3_head(source)
        digest = size = None
        if s3_copy is not None:
            copy = s3_copy(source)
            digest, size = sha256_file(copy), copy.stat().st_size
            again = s3_head(source)
            if again["etag"] != head["etag"]:  # replaced while it was read: the hash and the ETag would not match
                head = {**again, "etag": None, "version_id": None}
        return [DataFile(**base, kind="s3", sha256=digest, **{**head, "size": size or head["size"]})]
    path = Path(source).expanduser()
    if path.is_file() or path.is_dir():
        files = [path] if path.is_file() else folder_files(path, declared)
        return [DataFile(**base, kind="file", path=str(f.resolve()), **_hashed(f)) for f in files]
    return [DataFile(**base, kind="hf_dataset" if is_hub_id(source) else "missing")]


def folder_listing(source: str, declared: str = "auto") -> list[str] | None:
    """A folder source's data files, as sorted relative names; None when the source is not a folder here."""
    if source.startswith(("s3://", "builtin:")):
        return None
    path = Path(source).expanduser()
    return sorted(f.relative_to(path).as_posix() for f in folder_files(path, declared)) if path.is_dir() else None


def fingerprints(spec: Any, *, s3_copy: Callable[[str], Path] | None = None) -> list[DataFile]:
    return [f for field, source, declared in spec_sources(spec)
            for f in fingerprint(field, source, declared=declared, s3_copy=s3_copy)]


@dataclass
class Recheck:
    """One recorded file against its bytes now: same, changed (with both hashes), or why it cannot be told."""

    file: DataFile
    state: str  # same | changed | missing (a local file gone) | unchecked
    was: str | None = None
    now: str | None = None
    why: str | None = None

    def line(self, run_id: str) -> str:
        name = self.file.path or self.file.source
        if self.state == "changed":
            return f"{self.file.field}: {name} changed since run {run_id}: {self.was} then, {self.now} now"
        if self.state == "missing":
            return f"{self.file.field}: {name}: no such file now (run {run_id} read {self.was})"
        return f"{self.file.field}: {name}: {self.why}"


def recheck(item: DataFile) -> Recheck:
    """The file a record names, hashed again now (an S3 object: headed, and downloaded only when that cannot tell)."""
    if item.kind == "builtin":
        return Recheck(item, "unchecked", why="built-in data ships with the product (its version is recorded)")
    if item.kind in ("hf_dataset", "missing"):
        return Recheck(item, "unchecked", why="not a file here (the summary keeps the hash of its rows; "
                                              "finetune diff compares it after the rerun)")
    if item.kind == "s3":
        return _recheck_s3(item)
    path = Path(item.path or item.source).expanduser()
    if not path.is_file():
        return Recheck(item, "missing", was=f"sha256 {item.sha256}", now="no such file")
    digest = sha256_file(path)
    return Recheck(item, "same" if digest == item.sha256 else "changed", was=f"sha256 {item.sha256}",
                   now=f"sha256 {digest}")


def _recheck_s3(item: DataFile) -> Recheck:
    from sdk.core.errors import StoreError

    if not (item.sha256 or item.etag or item.version_id):
        return Recheck(item, "unchecked", why="the record holds no hash of it (the client could not head it and no "
                                              "node read it)")
    try:
        head = s3_head(item.source)
    except StoreError as exc:
        return Recheck(item, "changed", was=f"ETag {item.etag}", now=f"cannot be read ({exc})")
    if item.version_id and head["version_id"] == item.version_id:
        return Recheck(item, "same")
    if item.etag and head["etag"] == item.etag and "-" not in item.etag:  # one part: the ETag is the MD5 of the bytes
        return Recheck(item, "same")
    if item.sha256 is None:  # the node never hashed it: the ETag is all there is
        same = bool(item.etag) and head["etag"] == item.etag
        return Recheck(item, "same" if same else "changed", was=f"ETag {item.etag}", now=f"ETag {head['etag']}")
    digest = s3_sha256(item.source)
    return Recheck(item, "same" if digest == item.sha256 else "changed", was=f"sha256 {item.sha256}",
                   now=f"sha256 {digest}")
