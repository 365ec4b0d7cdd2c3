"""The run folder in a store: names of its objects and typed reads/writes of them.

    <output>/<run_id>/spec.json, status.json, metrics.jsonl, summary.json, logs/, checkpoints/<step>/, adapter/
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from sdk.core.errors import RunNotFound, StoreError
from sdk.core.metric_names import read_row
from sdk.store import Store, check_replaceable, fetch_dir, open_store, read_manifest, split_run_uri

if TYPE_CHECKING:
    from pydantic import BaseModel

    from sdk.core.spec import FineTuneSpec
    from sdk.core.summary import RunSummary

M = TypeVar("M", bound="BaseModel")

SPEC = "spec.json"
STATUS = "status.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
ADAPTER = "adapter"
CHECKPOINTS = "checkpoints"
LOG = "logs/node.log"
CANCEL = "cancel_requested.json"
CHAT_TEMPLATE = "chat_template.jinja"  # the chat template tool-calling rows trained with (sdk.data.tools)
LAUNCH = "launch.json"  # the backend and its Info: any client (a resumed sweep driver) can reach the run again
FILES_INDEX = "files.json"  # local files the run needs besides the data (sdk.runs.shipping), by content hash

# cancelling: a cancel was asked for and neither the node nor the backend has confirmed it yet; lost: the node's
# heartbeat stopped without a final word (it may have died while nobody watched): read, never written by a node.
RunState = Literal["pending", "provisioning", "running", "recovering", "cancelling", "lost", "succeeded", "failed", "cancelled"]
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})


def new_run_id(name: str | None) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{name or 'run'}-{stamp}-{secrets.token_hex(2)}"


class RunFolder:
    """One run's folder: `store` is the output store, keys below are relative to the run id."""

    def __init__(self, store: Store, run_id: str):
        self.store = store
        self.run_id = run_id

    @classmethod
    def from_uri(cls, run_uri: str) -> RunFolder:
        parent, run_id = split_run_uri(run_uri)
        return cls(open_store(parent), run_id)

    @classmethod
    def open(cls, run_uri: str) -> RunFolder:
        """An existing run folder (the node's tools get its URI or local path from the client), or RunNotFound."""
        folder = cls.from_uri(run_uri)
        if not folder.exists():
            raise RunNotFound(f"{folder.uri}: no run here (no {SPEC})")
        return folder

    @property
    def uri(self) -> str:
        return self.store.url(self.run_id)

    def key(self, name: str) -> str:
        return f"{self.run_id}/{name}"

    # -- json objects

    def write_json(self, name: str, data: Any) -> None:
        self.store.put_bytes(self.key(name), json.dumps(data, indent=2, default=str).encode())

    def write_text(self, name: str, text: str) -> None:
        self.store.put_bytes(self.key(name), text.encode())

    def read_text(self, name: str) -> str | None:
        return self.store.get_bytes(self.key(name)).decode() if self.store.exists(self.key(name)) else None

    def read_json(self, name: str) -> Any | None:
        if not self.store.exists(self.key(name)):
            return None
        raw = self.store.get_bytes(self.key(name))
        try:
            return json.loads(raw)
        except ValueError:
            raise StoreError(f"{self.store.url(self.key(name))}: not valid JSON") from None

    def read_model(self, name: str, model: type[M]) -> M | None:
        """A JSON file typed as `model`; None when absent or empty. A wrong field is one StoreError line naming the
        file's URI and the field, never pydantic's report."""
        from pydantic import ValidationError

        data = self.read_json(name)
        if not data:
            return None
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "(top level)"
            more = f"; {exc.error_count() - 1} more error(s)" if exc.error_count() > 1 else ""
            raise StoreError(f"{self.store.url(self.key(name))}: {where}: {first['msg']} "
                             f"(got {first.get('input')!r:.60}{more})") from None

    def exists(self) -> bool:
        return self.store.exists(self.key(SPEC))

    # -- typed reads: what the node's tools (merge, generate, eval, serve) and the client's Run share

    def spec(self) -> FineTuneSpec:
        from sdk.core.spec import FineTuneSpec

        data = self.read_json(SPEC)
        if data is None:
            raise RunNotFound(f"{self.uri}: no {SPEC}")
        return FineTuneSpec.model_validate(data)

    def summary(self) -> RunSummary | None:
        """summary.json, typed; None until the run has finished."""
        from sdk.core.summary import RunSummary

        data = self.read_json(SUMMARY)
        return None if data is None else RunSummary.model_validate(data)

    def fetch_adapter(self, dest: str | Path, *, overwrite: bool = False, state: Callable[[], str] | None = None) -> Path:
        """Download the committed adapter, verified against its manifest; all or nothing. `state` says what the run
        is when there is no adapter (the client's Run knows better than status.json: a dead node, a backend)."""
        if self.adapter_manifest() is None:
            state = state() if state else self.status().get("state")
            raise StoreError(f"{self.uri}/{ADAPTER}: no committed adapter (run is {state})")
        if overwrite:
            check_replaceable(Path(dest))
        return fetch_dir(self.store, self.key(ADAPTER), Path(dest), overwrite=overwrite)

    # -- status

    def write_status(self, state: RunState, **extra: Any) -> dict[str, Any]:
        status = {"state": state, "heartbeat": time.time(), **extra}
        self.write_json(STATUS, status)
        return status

    def status(self) -> dict[str, Any]:
        status = self.read_json(STATUS) or {"state": "pending", "heartbeat": None}
        if status.get("state") not in TERMINAL and self.cancel_requested():
            # The node stops at its next step or its backend kills it; until the node's own last word (or the
            # backend's confirmation) lands, the run is cancelling: it may still be running, and billing.
            status = {**status, "state": "cancelling"}
        return status

    # -- cancellation: a marker any client can write and every node polls, so a run started on
    # another machine, or one whose backend is unreachable, still stops

    def request_cancel(self, *, reason: str | None = None) -> None:
        """`reason` (e.g. resources.max_cost crossed) becomes the cancelled run's error, written by its node."""
        self.write_json(CANCEL, {"requested": time.time(), **({"reason": reason} if reason else {})})

    def cancel_reason(self) -> str | None:
        return (self.read_json(CANCEL) or {}).get("reason")

    def cancel_requested(self) -> bool:
        return self.store.exists(self.key(CANCEL))

    # -- metrics

    def write_metrics(self, rows: list[dict[str, Any]]) -> None:
        body = "".join(json.dumps(row, default=float) + "\n" for row in rows)
        self.store.put_bytes(self.key(METRICS), body.encode())

    def metrics(self) -> list[dict[str, Any]]:
        if not self.store.exists(self.key(METRICS)):
            return []
        rows = []
        for line in self.store.get_bytes(self.key(METRICS)).decode().splitlines():
            if line.strip():
                try:
                    rows.append(read_row(json.loads(line)))  # an older run's keys under today's names
                except ValueError:
                    continue  # a torn last line while the node rewrites the object
        return rows

    # -- committed artifacts

    def adapter_manifest(self) -> dict[str, Any] | None:
        return read_manifest(self.store, self.key(ADAPTER))

    def committed_checkpoints(self) -> list[int]:
        """Steps of checkpoints whose manifest exists (partial ones are ignored)."""
        steps = []
        prefix = self.key(CHECKPOINTS)
        for key in self.store.list(prefix):
            parts = key[len(prefix) + 1:].split("/")
            if len(parts) == 2 and parts[1] == "MANIFEST.json" and parts[0].isdigit():
                steps.append(int(parts[0]))
        return sorted(steps)
