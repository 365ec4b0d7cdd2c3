"""Read access to the runs a serving node serves, and to nothing else.

A serving node needs a few files of each served run (spec, status, summary and the committed adapter). Instead
of the user's store credentials (write access to every run, every bucket those keys reach), the client signs
one GET URL per file, valid for `GRANT_SECONDS`, and hands the node that list as a secret. The node downloads
the files into a run folder of its own (a local store) and verifies the adapter against its manifest as any
fetch does. With no store credentials on the node, a compromised engine can read the served adapters, which it
already serves, and nothing else.
"""

from __future__ import annotations

import base64
import gzip
import json
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

GRANTS_ENV = "FINETUNE_SERVE_GRANTS"
GRANT_SECONDS = 7 * 24 * 3600  # SigV4's longest; a URL signed with a session token ends with that session
SERVED_FILES = ("spec.json", "status.json", "summary.json", "chat_template.jinja")  # the last: tool-calling runs
SERVED_FOLDERS = ("adapter/",)
MAX_ENCODED = 96 * 1024  # an environment string is limited to 128 KiB on Linux


def served_keys(keys: Sequence[str], run_id: str) -> list[str]:
    """The keys of one run folder a serving node needs (no checkpoints, logs or tracker files)."""
    out = []
    for key in keys:
        rel = key[len(run_id) + 1:] if key.startswith(f"{run_id}/") else None
        if rel and (rel in SERVED_FILES or rel.startswith(SERVED_FOLDERS)):
            out.append(rel)
    return out


def sign_runs(run_uris: Sequence[str], *, seconds: int = GRANT_SECONDS) -> str:
    """GET URLs for the served files of each s3:// run, compressed for the node's environment."""
    from sdk.core.errors import StoreError
    from sdk.store.runfolder import RunFolder

    runs = {}
    for uri in dict.fromkeys(run_uris):
        folder = RunFolder.from_uri(uri)
        store = folder.store
        if not hasattr(store, "presign_get"):
            raise StoreError(f"{uri}: only runs in an s3:// store can be granted to a serving node")
        files = {}
        for rel in served_keys(store.list(f"{folder.run_id}/"), folder.run_id):
            files[rel] = store.presign_get(f"{folder.run_id}/{rel}", seconds)  # SigV4, the bucket's own region
        runs[uri] = {"run_id": folder.run_id, "files": files}
    payload = {"expires": time.time() + seconds, "runs": runs}
    encoded = base64.b64encode(gzip.compress(json.dumps(payload).encode())).decode()
    if len(encoded) > MAX_ENCODED:
        raise StoreError(f"serve: the grants for {len(runs)} runs take {len(encoded) // 1024} KiB, over the "
                         f"{MAX_ENCODED // 1024} KiB an environment variable can carry; serve fewer runs per server")
    return encoded


def materialize(encoded: str, dest: Path, *, attempts: int = 4) -> dict[str, str]:
    """Download every granted file into dest/<run_id>/ (a local store); returns {granted run URI: local run URI}.
    Paths stay inside dest; a URL that fails is retried, then the error names the file."""
    from sdk.core.errors import StoreError
    from sdk.store import contained

    payload = json.loads(gzip.decompress(base64.b64decode(encoded)))
    if payload.get("expires", 0) < time.time():
        raise StoreError("serve: the grants to the served runs have expired; start the server again")
    local: dict[str, str] = {}
    for uri, grant in payload["runs"].items():
        run_dir = contained(dest, grant["run_id"])
        for rel, url in grant["files"].items():
            target = contained(run_dir, rel)
            target.parent.mkdir(parents=True, exist_ok=True)
            for attempt in range(attempts):
                try:
                    with urllib.request.urlopen(url, timeout=60) as response, open(target, "wb") as out:
                        while chunk := response.read(1 << 20):
                            out.write(chunk)
                    break
                except OSError as exc:  # urllib's errors are OSErrors: refused, reset, 5xx, 403 (expired)
                    if attempt == attempts - 1 or getattr(exc, "code", 500) in (403, 404):
                        raise StoreError(f"{uri}/{rel}: cannot download through its grant: {exc}") from None
                    time.sleep(2 ** attempt)
        local[uri] = str(run_dir)
    return local
