"""Object stores: `s3://bucket/prefix` (boto3) or a local directory, behind one small interface.

The store is the source of truth for runs. A directory artifact (adapter, checkpoint) is committed
file by file and becomes visible only when its MANIFEST.json (sha256 + size of every file) is
written, last. Fetch verifies every checksum, refuses keys that would escape the destination and
builds the destination in a temporary sibling that is renamed into place only when complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar

from sdk.core.errors import IntegrityError, StoreError

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
        return S3Store(uri)
    if "://" in uri:
        raise StoreError(f"{uri}: unsupported store; use s3://bucket/prefix or a local directory")
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


# ------------------------------------------------------------------------------------------- local


class LocalStore:
    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        self.uri = str(self.root)

    def _path(self, key: str) -> Path:
        return contained(self.root, key) if key else self.root

    def url(self, key: str) -> str:
        return str(self._path(key))

    def put_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)  # readers see the old or the new object, never half of one
        except OSError as exc:
            raise StoreError(f"{path}: cannot write: {exc.strerror or exc}") from None

    def get_bytes(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise StoreError(f"{path}: no such object") from None
        except OSError as exc:
            raise StoreError(f"{path}: cannot read: {exc.strerror or exc}") from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix) if prefix else self.root
        if not base.is_dir():
            return []
        return sorted(
            p.relative_to(self.root).as_posix()
            for p in base.rglob("*")
            if p.is_file() and not p.name.endswith(".tmp")
        )

    def upload_file(self, path: Path, key: str) -> None:
        target = self._path(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
            os.close(fd)
            shutil.copyfile(path, tmp)
            os.replace(tmp, target)
        except OSError as exc:
            raise StoreError(f"{target}: cannot write: {exc.strerror or exc}") from None

    def download_file(self, key: str, path: Path) -> None:
        source = self._path(key)
        try:
            shutil.copyfile(source, path)
        except FileNotFoundError:
            raise StoreError(f"{source}: no such object") from None

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(self._path(prefix), ignore_errors=True)


# ---------------------------------------------------------------------------------------------- s3


def _retry(uri: str, action: str, fn: Callable[[], T], *, attempts: int | None = None, base_delay: float = 0.5) -> T:
    """Run fn, retrying connection-level failures with exponential backoff; name the URI on failure."""
    attempts = attempts or int(os.environ.get("FINETUNE_STORE_ATTEMPTS", "5"))
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import (
        ClientError,
        ConnectionClosedError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
        ReadTimeoutError,
    )

    transient = (EndpointConnectionError, ConnectionClosedError, ReadTimeoutError, ConnectionError)
    delay = base_delay
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except (NoCredentialsError, PartialCredentialsError):
            raise StoreError(f"{uri}: cannot {action}: no AWS credentials found (env, profile or instance role)") from None
        except ClientError as exc:
            err = exc.response.get("Error", {})
            code, message = err.get("Code", "?"), err.get("Message", "")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if status >= 500 and attempt < attempts:
                time.sleep(delay)
                delay *= 2
                continue
            hint = ""
            if code in ("SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied", "403"):
                hint = " (check the AWS credentials or profile for this endpoint)"
            raise StoreError(f"{uri}: cannot {action}: {code} {message}".rstrip() + hint) from None
        except (S3UploadFailedError, *transient) as exc:
            if attempt < attempts:
                time.sleep(delay)
                delay *= 2
                continue
            raise StoreError(f"{uri}: cannot {action} after {attempts} attempts: {exc}") from None
    raise AssertionError("unreachable")


class S3Store:
    """s3://bucket/prefix through boto3; honours AWS_ENDPOINT_URL, profiles, region and the credential chain."""

    def __init__(self, uri: str, *, client: Any = None):
        rest = uri[len("s3://"):].strip("/")
        self.bucket, _, self.prefix = rest.partition("/")
        if not self.bucket:
            raise StoreError(f"{uri}: needs a bucket: s3://bucket/prefix")
        self.uri = f"s3://{rest}"
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config

            config = Config(
                retries={"max_attempts": 3, "mode": "standard"},
                connect_timeout=5,
                read_timeout=60,
                # Path-style works with every S3-compatible server (moto, Swift, MinIO) and with AWS.
                s3={"addressing_style": "path"} if os.environ.get("AWS_ENDPOINT_URL") else {},
            )
            self._client = boto3.session.Session().client("s3", config=config)
        return self._client

    def _key(self, key: str) -> str:
        key = _safe_key(key) if key else ""
        return f"{self.prefix}/{key}".strip("/") if self.prefix else key

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    @staticmethod
    def _transfer_config() -> Any:
        from boto3.s3.transfer import TransferConfig

        return TransferConfig(multipart_threshold=16 * 1024 * 1024, multipart_chunksize=16 * 1024 * 1024, max_concurrency=8)

    def _where(self, key: str) -> str:
        endpoint = os.environ.get("AWS_ENDPOINT_URL") or (self._client.meta.endpoint_url if self._client else None)
        return f"{self.url(key)} (endpoint {endpoint})" if endpoint else self.url(key)

    def put_bytes(self, key: str, data: bytes) -> None:
        _retry(self._where(key), "write", lambda: self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data))

    def get_bytes(self, key: str) -> bytes:
        def get() -> bytes:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()

        try:
            return _retry(self._where(key), "read", get)
        except StoreError as exc:
            if "NoSuchKey" in str(exc):
                raise StoreError(f"{self.url(key)}: no such object") from None
            raise

    def iter_lines(self, key: str) -> Iterator[bytes]:
        """The object's lines as bytes, streamed: a large file is read without holding it whole (the reader
        decodes them, so that a line that is not UTF-8 is reported where it is)."""
        def get() -> Any:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]

        try:
            body = _retry(self._where(key), "read", get)
        except StoreError as exc:
            if "NoSuchKey" in str(exc):
                raise StoreError(f"{self.url(key)}: no such object") from None
            raise
        yield from body.iter_lines(chunk_size=1 << 20)

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        def head() -> bool:
            try:
                self.client.head_object(Bucket=self.bucket, Key=self._key(key))
                return True
            except ClientError as exc:
                if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                    return False
                raise

        return _retry(self._where(key), "check", head)

    def list(self, prefix: str) -> list[str]:
        full = self._key(prefix)
        full = f"{full}/" if full else ""
        root = f"{self.prefix}/" if self.prefix else ""

        def collect() -> list[str]:
            keys = []
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
                keys.extend(obj["Key"][len(root):] for obj in page.get("Contents", []))
            return sorted(keys)

        return _retry(self._where(prefix), "list", collect)

    def upload_file(self, path: Path, key: str) -> None:
        _retry(
            self._where(key),
            "upload",
            lambda: self.client.upload_file(str(path), self.bucket, self._key(key), Config=self._transfer_config()),
        )

    def download_file(self, key: str, path: Path) -> None:
        _retry(
            self._where(key),
            "download",
            lambda: self.client.download_file(self.bucket, self._key(key), str(path), Config=self._transfer_config()),
        )

    def delete_prefix(self, prefix: str) -> None:
        keys = self.list(prefix)
        for start in range(0, len(keys), 1000):
            batch = [{"Key": self._key(k)} for k in keys[start:start + 1000]]
            _retry(self._where(prefix), "delete", lambda b=batch: self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": b}))


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


# Files that mark a folder as one this product wrote for the user: a fetch (adapter or run folder) or a merged
# model. Not MANIFEST.json or spec.json: live run folders and checkpoints in a local store hold those.
FETCHED = ".finetune-fetched"
REPLACEABLE_MARKERS = (FETCHED, "merge_report.json")


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
    from sdk.store.atomic import staged_dir

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

