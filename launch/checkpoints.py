"""Resumable checkpoints in the store: checkpoints/<step>/, visible only once sealed by MANIFEST.json.

Each node's local rank 0 uploads the files its ranks wrote (with DeepSpeed every rank writes its own
optimizer shard, and nodes do not share a disk) and records them in `.parts/node-<k>.json`; rank 0
then writes the manifest, last. On start, rank 0 fetches the newest sealed checkpoint that verifies,
every other node fetches the same step, and the Trainer resumes from it. Partial checkpoints (no
manifest) are never loaded.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from launch import ranks
from sdk.errors import FinetuneError, IntegrityError
from sdk.runfolder import CHECKPOINTS, RunFolder
from sdk.store import MANIFEST, fetch_dir, sha256_file

PARTS = ".parts"


def checkpoint_key(folder: RunFolder, step: int) -> str:
    return folder.key(f"{CHECKPOINTS}/{step}")


def _fault(point: str, step: int) -> None:
    """Test seam: FINETUNE_FAULT=<point>:<step> kills this process with SIGKILL at that point, the way
    a preempted VM or an OOM kill would (points: during-checkpoint, after-checkpoint)."""
    if os.environ.get("FINETUNE_FAULT") == f"{point}:{step}" and ranks.is_main():
        print(f"[finetune] FINETUNE_FAULT: killing myself at {point} {step}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)


def commit_checkpoint(folder: RunFolder, local_dir: Path, step: int, *, keep: int | None = None) -> None:
    """Called on every rank once the Trainer has written checkpoint-<step> (a collective)."""
    key = checkpoint_key(folder, step)
    ranks.barrier()  # every rank has written its files
    if ranks.is_main() and folder.store.list(key):
        folder.store.delete_prefix(key)  # leftovers of an attempt that died while writing this step
    ranks.barrier()
    if ranks.local_rank() == 0:
        files = sorted(p for p in Path(local_dir).rglob("*") if p.is_file())
        part: dict[str, Any] = {}
        for index, path in enumerate(files):
            rel = path.relative_to(local_dir).as_posix()
            part[rel] = {"sha256": sha256_file(path), "size": path.stat().st_size}
            folder.store.upload_file(path, f"{key}/{rel}")
            if index == len(files) // 2:
                _fault("during-checkpoint", step)
        folder.store.put_bytes(f"{key}/{PARTS}/node-{ranks.node_rank()}.json", json.dumps(part).encode())
    ranks.barrier()
    if ranks.is_main():
        _seal(folder, key, ranks.num_nodes())
        print(f"[finetune] checkpoint {step} committed to {folder.store.url(key)}", flush=True)
        if keep:
            for old in folder.committed_checkpoints()[:-keep]:
                folder.store.delete_prefix(checkpoint_key(folder, old))
        _fault("after-checkpoint", step)
    ranks.barrier()


def _seal(folder: RunFolder, key: str, num_nodes: int) -> None:
    files: dict[str, Any] = {}
    for node in range(num_nodes):
        part = json.loads(folder.store.get_bytes(f"{key}/{PARTS}/node-{node}.json"))
        for rel, meta in part.items():
            if rel in files and files[rel] != meta:
                raise FinetuneError(f"{folder.store.url(key)}/{rel}: written with different contents by two nodes")
            files[rel] = meta
    manifest = {"files": files, "created": time.time()}
    folder.store.put_bytes(f"{key}/{MANIFEST}", json.dumps(manifest, indent=1).encode())


def prepare_resume(folder: RunFolder, trainer_dir: Path) -> tuple[int, Path] | None:
    """Fetch the newest sealed checkpoint into trainer_dir/checkpoint-<step> on every node."""
    step = None
    if ranks.is_main():
        for candidate in reversed(folder.committed_checkpoints()):
            try:
                fetch_dir(folder.store, checkpoint_key(folder, candidate), trainer_dir / f"checkpoint-{candidate}", overwrite=True)
            except IntegrityError as exc:
                print(f"[finetune] warning: skipping checkpoint {candidate}: {exc}", flush=True)
                continue
            step = candidate
            break
    step = ranks.broadcast_object(step)
    if step is None:
        return None
    local = trainer_dir / f"checkpoint-{step}"
    if ranks.local_rank() == 0 and not ranks.is_main():
        fetch_dir(folder.store, checkpoint_key(folder, step), local, overwrite=True)
    ranks.barrier()
    return step, local
