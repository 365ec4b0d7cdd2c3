"""Resumable checkpoints in the store: checkpoints/<step>/, visible only once sealed by MANIFEST.json.

Each node's local rank 0 uploads the files its ranks wrote (with DeepSpeed every rank writes its own
optimizer shard, and nodes do not share a disk) in a background thread while training goes on, and
records them in `.parts/node-<k>.json`; rank 0 then writes the manifest, last. On start, rank 0 fetches the newest sealed checkpoint that verifies,
every other node fetches the same step, and the Trainer resumes from it. Partial checkpoints (no
manifest) are never loaded.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

from launch import ranks
from sdk.core.errors import FinetuneError, StoreError
from sdk.store import MANIFEST, fetch_dir, sha256_file
from sdk.store.runfolder import CHECKPOINTS, RunFolder

PARTS = ".parts"


def checkpoint_key(folder: RunFolder, step: int) -> str:
    return folder.key(f"{CHECKPOINTS}/{step}")


def _fault(point: str, step: int) -> None:
    """Test seam: FINETUNE_FAULT=<point>:<step> kills this process with SIGKILL at that point, the way
    a preempted VM or an OOM kill would (points: during-checkpoint, after-checkpoint)."""
    if os.environ.get("FINETUNE_FAULT") == f"{point}:{step}" and ranks.is_main():
        print(f"[finetune] FINETUNE_FAULT: killing myself at {point} {step}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)


class CheckpointUploader:
    """Commits checkpoints to the store in the background, so training ranks never wait on an upload.

    `submit` is called on every rank once the Trainer has written checkpoint-<step>: after one barrier
    (every rank's files are on disk), each node's local rank 0 hard-links the folder aside (the Trainer
    may rotate it away meanwhile) and a worker thread uploads it and writes the node's part; rank 0's
    worker then waits for every node's part and writes the manifest, last. Checkpoints are committed in
    order, one at a time. `finish` waits for the last one (every rank calls it at the end of training).
    """

    def __init__(self, folder: RunFolder, scratch: Path, *, keep: int | None, timeout_s: float):
        self.folder = folder
        self.scratch = Path(scratch) / "uploads"
        self.keep = keep
        self.timeout_s = timeout_s
        self._worker: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, local_dir: Path, step: int) -> None:
        ranks.barrier()  # every rank has written its files (DeepSpeed writes one shard per rank)
        if ranks.local_rank() != 0:
            return
        snapshot = self.scratch / str(step)
        shutil.rmtree(snapshot, ignore_errors=True)
        shutil.copytree(local_dir, snapshot, copy_function=os.link)  # hard links: instant, immune to rotation
        previous = self._worker
        self._worker = threading.Thread(target=self._commit, args=(previous, snapshot, step), name=f"checkpoint-{step}",
                                        daemon=True)
        self._worker.start()

    def finish(self) -> None:
        if self._worker is not None:
            self._worker.join()
        if self._error is not None:
            raise FinetuneError(f"{self.folder.uri}: checkpoint upload failed: {self._error}")

    def _commit(self, previous: threading.Thread | None, snapshot: Path, step: int) -> None:
        if previous is not None:
            previous.join()  # in order: a newer checkpoint never lands before an older one
        try:
            self._upload(snapshot, step)
        except BaseException as exc:  # reported by finish(); training goes on
            self._error = exc
            print(f"[finetune] warning: checkpoint {step} not committed: {exc}", flush=True)
        finally:
            shutil.rmtree(snapshot, ignore_errors=True)

    def _upload(self, snapshot: Path, step: int) -> None:
        key = checkpoint_key(self.folder, step)
        store = self.folder.store
        files = sorted(p for p in snapshot.rglob("*") if p.is_file())
        part: dict[str, Any] = {}
        for index, path in enumerate(files):
            rel = path.relative_to(snapshot).as_posix()
            part[rel] = {"sha256": sha256_file(path), "size": path.stat().st_size}
            store.upload_file(path, f"{key}/{rel}")
            if index == len(files) // 2:
                _fault("during-checkpoint", step)
        store.put_bytes(f"{key}/{PARTS}/node-{ranks.node_rank()}.json", json.dumps(part).encode())
        if not ranks.is_main():
            return
        deadline = time.time() + self.timeout_s
        parts = [f"{key}/{PARTS}/node-{n}.json" for n in range(ranks.num_nodes())]
        while not all(store.exists(p) for p in parts):
            if time.time() > deadline:
                raise FinetuneError(f"{store.url(key)}: the other nodes' parts did not arrive in {self.timeout_s:.0f} s")
            time.sleep(1.0)
        _seal(self.folder, key, ranks.num_nodes())
        print(f"[finetune] checkpoint {step} committed to {store.url(key)}", flush=True)
        if self.keep:
            for old in self.folder.committed_checkpoints()[:-self.keep]:
                store.delete_prefix(checkpoint_key(self.folder, old))
        _fault("after-checkpoint", step)


def drop_unsealed(folder: RunFolder) -> None:
    """Remove checkpoint folders without a manifest: leftovers of an attempt that died while writing."""
    sealed = set(folder.committed_checkpoints())
    prefix = folder.key(CHECKPOINTS)
    steps = {key[len(prefix) + 1:].split("/")[0] for key in folder.store.list(prefix)}
    for step in sorted(s for s in steps if s.isdigit() and int(s) not in sealed):
        folder.store.delete_prefix(checkpoint_key(folder, int(step)))


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
    """Fetch the newest sealed checkpoint into trainer_dir/checkpoint-<step> on every node (after
    removing unsealed leftovers, which a new upload of the same step will replace)."""
    step = None
    if ranks.is_main():
        drop_unsealed(folder)
        for candidate in reversed(folder.committed_checkpoints()):
            try:
                fetch_dir(folder.store, checkpoint_key(folder, candidate), trainer_dir / f"checkpoint-{candidate}", overwrite=True)
            except (StoreError, ValueError) as exc:  # corrupted (IntegrityError), a file missing, an unreadable manifest
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
