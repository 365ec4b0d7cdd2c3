"""All or nothing on a local disk: a folder is written beside its destination and renamed into place in one step,
so a reader (or a crash) never sees half of it. Used for fetched adapters and runs, merged models and the
model caches."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def staged_dir(dest: str | Path, *, keep_existing: bool = False) -> Iterator[Path]:
    """An empty folder beside `dest` to write into. On a clean exit it becomes `dest` in one rename: an existing
    `dest` is replaced, or, with `keep_existing` (a cache another process may fill at the same time), kept and
    the new copy dropped. On any error nothing is left behind and `dest` is untouched."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.partial-"))
    try:
        yield staging
        if dest.exists():
            if keep_existing:
                return
            shutil.rmtree(dest)
        try:
            os.replace(staging, dest)
        except OSError:
            if not (keep_existing and dest.exists()):  # a concurrent writer finished first: its copy is as good
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
