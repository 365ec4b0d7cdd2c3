"""Local SQLite cache of run handles (id → run URI, backend, pid, cluster). The store stays the truth:
a run missing here is still found through its URI or by listing its store."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Any


def home() -> Path:
    return Path(os.environ.get("FINETUNE_HOME", Path.home() / ".finetune")).expanduser()


def _connect() -> sqlite3.Connection:
    path = home() / "registry.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=10)
    conn.execute(
        "CREATE TABLE IF NOT EXISTS runs (id TEXT PRIMARY KEY, uri TEXT NOT NULL, backend TEXT NOT NULL, "
        "created REAL NOT NULL, info TEXT NOT NULL DEFAULT '{}')"
    )
    conn.execute("CREATE TABLE IF NOT EXISTS sweeps (id TEXT PRIMARY KEY, uri TEXT NOT NULL, created REAL NOT NULL)")
    return conn


def record(run_id: str, uri: str, backend: str, info: dict[str, Any]) -> None:
    with closing(_connect()) as conn, conn:
        conn.execute(
            "INSERT OR REPLACE INTO runs (id, uri, backend, created, info) VALUES (?, ?, ?, ?, ?)",
            (run_id, uri, backend, time.time(), json.dumps(info)),
        )


def lookup(run_id: str) -> dict[str, Any] | None:
    with closing(_connect()) as conn:
        row = conn.execute("SELECT id, uri, backend, created, info FROM runs WHERE id = ?", (run_id,)).fetchone()
    return _row(row) if row else None


def entries(limit: int = 100) -> list[dict[str, Any]]:
    with closing(_connect()) as conn:
        rows = conn.execute("SELECT id, uri, backend, created, info FROM runs ORDER BY created DESC LIMIT ?", (limit,)).fetchall()
    return [_row(r) for r in rows]


def _row(row: tuple) -> dict[str, Any]:
    return {"id": row[0], "uri": row[1], "backend": row[2], "created": row[3], "info": json.loads(row[4] or "{}")}


def record_sweep(sweep_id: str, uri: str) -> None:
    with closing(_connect()) as conn, conn:
        conn.execute("INSERT OR REPLACE INTO sweeps (id, uri, created) VALUES (?, ?, ?)", (sweep_id, uri, time.time()))


def lookup_sweep(sweep_id: str) -> str | None:
    with closing(_connect()) as conn:
        row = conn.execute("SELECT uri FROM sweeps WHERE id = ?", (sweep_id,)).fetchone()
    return row[0] if row else None


def sweeps(limit: int = 50) -> list[str]:
    with closing(_connect()) as conn:
        return [r[0] for r in conn.execute("SELECT uri FROM sweeps ORDER BY created DESC LIMIT ?", (limit,)).fetchall()]
