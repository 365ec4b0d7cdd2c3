"""Bearer keys of `finetune api`: ~/.finetune/api/keys.json, readable by its owner alone, holding each key's
sha256 (never the key: a key is shown once, when it is made). The first start makes one."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import threading
import time
from pathlib import Path
from typing import Any

from sdk.core.errors import FinetuneError

_LOCK = threading.Lock()


def keys_file() -> Path:
    from sdk.machine.registry import home

    return home() / "api" / "keys.json"


def _read() -> list[dict[str, Any]]:
    path = keys_file()
    if not path.is_file():
        return []
    try:
        return json.loads(path.read_text())["keys"]
    except (ValueError, KeyError, TypeError) as exc:
        raise FinetuneError(f"{path}: not a keys file ({exc}); move it away to start with a new key") from None


def _write(keys: list[dict[str, Any]]) -> None:
    from sdk.serving.record import write_private

    path = keys_file()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    write_private(partial, json.dumps({"keys": keys}, indent=1))
    partial.replace(path)


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def list_keys() -> list[dict[str, Any]]:
    """id, created_at and the key's last four characters, for each key."""
    return [{k: entry[k] for k in ("id", "created_at", "last4")} for entry in _read()]


def create_key() -> tuple[str, str]:
    """A new key: (its id, the key itself, shown this once)."""
    key = f"ft-{secrets.token_urlsafe(32)}"
    ident = f"key_{secrets.token_hex(6)}"
    with _LOCK:
        _write([*_read(), {"id": ident, "sha256": _digest(key), "created_at": int(time.time()), "last4": key[-4:]}])
    return ident, key


def revoke_key(ident: str) -> None:
    with _LOCK:
        keys = _read()
        if not any(entry["id"] == ident for entry in keys):
            raise FinetuneError(f"{ident}: no such key (finetune api keys lists them)")
        _write([entry for entry in keys if entry["id"] != ident])


def first_key() -> str | None:
    """A key made now when there is none (the first start), else None."""
    with _LOCK:
        if _read():
            return None
    return create_key()[1]


class KeyCheck:
    """Checks a bearer key against the keys file, read again when the file changes (a key revoked from another
    shell stops working at once)."""

    def __init__(self) -> None:
        self._stamp: float | None = None
        self._digests: list[str] = []

    def valid(self, key: str | None) -> bool:
        if not key:
            return False
        path = keys_file()
        stamp = path.stat().st_mtime_ns if path.is_file() else None
        if stamp != self._stamp:
            try:
                self._digests, self._stamp = [entry["sha256"] for entry in _read()], stamp
            except (FinetuneError, KeyError, TypeError) as exc:  # a broken keys file lets nobody in
                print(f"[finetune api] no key is valid: {exc}", flush=True)
                self._digests, self._stamp = [], None
                return False
        digest = _digest(key)
        return any(hmac.compare_digest(digest, known) for known in self._digests)
