"""Restore a node environment that an earlier node built and kept in the store, before any venv exists here.

Shipped into the setup script as text (like torch_index.py) and run with the node's base Python: standard
library only. The archive comes through a presigned GET URL the client signed at launch (FINETUNE_ENV_URL), is
hashed while it streams into `tar`, extracted beside $VENV and renamed into place only when complete and
verified. A venv is not relocatable as is: it is restored only where this interpreter is the one the archive's
venv was made with (version and pyvenv.cfg home); the scripts in bin/ name their venv, and are rewritten.
Exit 0 restored; 1 not restored (one `[finetune] setup:` line says why: setup installs from the lock instead).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

DECOMPRESS = {"tar": [], "tar.gz": ["-z"], "tar.zst": ["--use-compress-program=zstd"]}
CHUNK = 1 << 20


def say(text: str) -> None:
    print(f"[finetune] setup: {text}", flush=True)


def interpreter_mismatch(python: str, home: str) -> str | None:
    """Why this interpreter cannot run the archived venv (None when it can): another version, or another
    installation than the pyvenv.cfg `home` the venv's bin/python points into."""
    here = sys.version.split()[0]
    if here != python:
        return f"this node's Python is {here}, the stored environment's {python}"
    base = getattr(sys, "_base_executable", sys.executable)
    candidates = {os.path.dirname(base), os.path.dirname(os.path.realpath(base))}
    if not os.path.isdir(home) or not any(os.path.isdir(c) and os.path.samefile(c, home) for c in candidates):
        return f"this node's Python lives in {os.path.dirname(base)}, the stored environment's in {home}"
    return None


def fetch_into(url: str, fmt: str, dest: Path) -> tuple[str, int]:
    """Stream the archive into `tar -x` under dest; returns (sha256, bytes). Raises OSError on a failed
    download and RuntimeError when tar rejects the stream."""
    dest.mkdir(parents=True)
    tar = subprocess.Popen(["tar", "-x", *DECOMPRESS[fmt], "-C", str(dest)], stdin=subprocess.PIPE,
                           stderr=subprocess.PIPE)
    digest, size = hashlib.sha256(), 0
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            while chunk := response.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
                tar.stdin.write(chunk)
    except BrokenPipeError:
        pass  # tar stopped reading: its exit status says why
    finally:
        try:
            tar.stdin.close()
        except BrokenPipeError:
            pass
        err = tar.stderr.read().decode(errors="replace").strip()
        tar.wait()
    if tar.returncode != 0:
        raise RuntimeError(f"tar could not extract it ({err.splitlines()[-1] if err else tar.returncode})")
    return digest.hexdigest(), size


def relink(venv: Path, old: str, new: str) -> int:
    """Point the venv's own files at its new path: the shebangs and activate scripts in bin/ and pyvenv.cfg."""
    changed = 0
    for path in [*sorted((venv / "bin").iterdir()), venv / "pyvenv.cfg"]:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > CHUNK:
            continue
        data = path.read_bytes()
        if old.encode() in data and (data.startswith(b"#!") or path.name.startswith("activate")
                                     or path.name == "pyvenv.cfg"):
            path.write_bytes(data.replace(old.encode(), new.encode()))
            changed += 1
    return changed


def place(built: Path, venv: Path) -> None:
    """Swap the complete venv in: whatever was at $VENV (a build that stopped halfway) goes aside first."""
    aside = venv.with_name(f"{venv.name}.old-{os.getpid()}")
    if venv.exists() or venv.is_symlink():
        os.rename(venv, aside)
    os.rename(built, venv)
    shutil.rmtree(aside, ignore_errors=True)


def restore(args: argparse.Namespace) -> int:
    why = interpreter_mismatch(args.python, args.home)
    if why is None and args.format == "tar.zst" and not shutil.which("zstd"):
        why = "it is zstd-compressed and this node has no zstd"
    if why is None and not shutil.which("tar"):
        why = "this node has no tar"
    if why:
        say(f"not restoring the stored environment {args.hash}: {why}; installing from its lock instead")
        return 1
    venv = Path(args.venv)
    partial = venv.with_name(f"{venv.name}.restore-{os.getpid()}")
    start = time.time()
    try:
        sha, size = fetch_into(args.url, args.format, partial)
        if sha != args.sha256:
            raise RuntimeError(f"its sha256 is {sha[:16]}…, the store's record says {args.sha256[:16]}… "
                               f"({size} of {args.size} bytes): corrupt or partial")
        relink(partial, args.built_in, str(venv))
        place(partial, venv)
    except (OSError, RuntimeError, ValueError) as exc:
        shutil.rmtree(partial, ignore_errors=True)
        say(f"not restoring the stored environment {args.hash}: {exc}; installing from its lock instead")
        return 1
    say(f"restored the environment {args.hash} ({size / 2**20:.0f} MiB {args.format}) from the store "
        f"in {time.time() - start:.1f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("venv", "hash", "sha256", "python", "home", "built-in"):
        parser.add_argument(f"--{name}", required=True)
    parser.add_argument("--size", type=int, default=0)
    parser.add_argument("--format", choices=sorted(DECOMPRESS), default="tar.gz")
    parser.add_argument("--url", default=os.environ.get("FINETUNE_ENV_URL", ""))
    args = parser.parse_args(argv)
    if not args.url:
        say(f"not restoring the stored environment {args.hash}: no download URL (FINETUNE_ENV_URL); "
            "installing from its lock instead")
        return 1
    return restore(args)


if __name__ == "__main__":
    sys.exit(main())
