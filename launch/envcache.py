"""Keep the environment a node just built in the store, so that the next node with the same lock restores it.

Run by setup with the new venv's own Python once the build is done (it has boto3 and sdk.store by then):
    "$VENV/bin/python" -m launch.envcache save --venv "$VENV" --store s3://bucket/runs --stack KEY

Layout under the store (the spec's output), written in this order — no meta.json, no environment:
    .envs/<lock-hash>/env-<sha16>.tar.zst   the venv (zstd where the node has it, else gzip -1)
    .envs/<lock-hash>/lock.txt              the lock: sorted name==version lines (sdk.core.lockfile)
    .envs/<lock-hash>/meta.json             python, pyvenv.cfg home, venv path, platform, size, sha256, ...
    .envs/stacks/<stack-key>.json           {"lock_hash": ...}: what this stack key last built
The archive's name carries its own hash, so two nodes saving the same lock at once never pair one's meta with
the other's archive. A save that fails warns in one line and exits 0: the run goes on without it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

ENVS = ".envs"


def say(text: str) -> None:
    print(f"[finetune] setup: {text}", flush=True)


def venv_lock(venv: Path) -> dict[str, str]:
    """The packages installed in this venv's own site-packages (not a system site the venv may also see)."""
    from sdk.core.lockfile import installed_packages

    paths = {sysconfig.get_paths(vars={"base": str(venv), "platbase": str(venv)})[k] for k in ("purelib", "platlib")}
    return installed_packages(sorted(p for p in paths if Path(p).is_dir()))


def pyvenv_home(venv: Path) -> str:
    for line in (venv / "pyvenv.cfg").read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == "home":
            return value.strip()
    raise ValueError(f"{venv / 'pyvenv.cfg'} names no home")


def pack(venv: Path, out: Path) -> tuple[str, str, int]:
    """tar the venv into `out`, hashing as it is written: (format, sha256, size). zstd -3 on all cores where the
    node has it (a torch tree: 1.5 s and 23% of its size here, against gzip -1's 8.7 s and 31%)."""
    zstd = shutil.which("zstd")
    fmt, squeeze = ("tar.zst", [zstd, "-q", "-3", "-T0", "-c"]) if zstd else ("tar.gz", ["gzip", "-1", "-c"])
    tar = subprocess.Popen(["tar", "-c", "-C", str(venv), "."], stdout=subprocess.PIPE)
    comp = subprocess.Popen(squeeze, stdin=tar.stdout, stdout=subprocess.PIPE)
    tar.stdout.close()  # the compressor holds the only read end: tar sees a broken pipe if it stops
    digest, size = hashlib.sha256(), 0
    with open(out, "wb") as sink:
        while chunk := comp.stdout.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
            sink.write(chunk)
    if comp.wait() != 0 or tar.wait() not in (0, 1):  # GNU tar: 1 = a file changed while read (a .pyc written)
        raise RuntimeError(f"packing {venv} failed (tar {tar.returncode}, {squeeze[0]} {comp.returncode})")
    return fmt, digest.hexdigest(), size


def save(venv: Path, store_uri: str, stack: str | None) -> str:
    """Store the venv under its lock's hash unless it is there already; returns what was done, in words."""
    from sdk.core.lockfile import lock_hash, lock_text
    from sdk.store import open_store

    store = open_store(store_uri)
    packages = venv_lock(venv)
    key = lock_hash(packages)
    where = f"{ENVS}/{key}"
    if store.exists(f"{where}/meta.json"):
        done = f"the environment {key} is already in the store"
    else:
        done = upload(venv, store, where, key, packages, lock_text(packages))
    if stack:
        record = f"{ENVS}/stacks/{stack}.json"
        current = json.loads(store.get_bytes(record)) if store.exists(record) else {}
        if current.get("lock_hash") != key:
            store.put_bytes(record, json.dumps({"lock_hash": key, "updated_at": time.time()}).encode())
    return done


def upload(venv: Path, store, where: str, key: str, packages: dict[str, str], lock: str) -> str:
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="finetune-env-", dir=venv.parent) as scratch:
        archive = Path(scratch) / "env"
        fmt, sha, size = pack(venv, archive)
        packed = time.time()
        name = f"env-{sha[:16]}.{fmt}"
        store.upload_file(archive, f"{where}/{name}")
    store.put_bytes(f"{where}/lock.txt", lock.encode())
    meta = {
        "lock_hash": key, "archive": name, "format": fmt, "size": size, "sha256": sha,
        "python": sys.version.split()[0], "home": pyvenv_home(venv), "venv": str(venv),
        "platform": sysconfig.get_platform(), "machine": platform.machine(), "packages": len(packages),
        "torch": packages.get("torch"), "created_at": time.time(),
    }
    store.put_bytes(f"{where}/meta.json", json.dumps(meta, indent=1).encode())  # last: no meta, no environment
    return (f"saved the environment {key} ({size / 2**20:.0f} MiB {fmt}) to {store.url(where)} in "
            f"{time.time() - start:.1f} s (pack {packed - start:.1f} s, upload {time.time() - packed:.1f} s)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launch.envcache")
    sub = parser.add_subparsers(dest="command", required=True)
    saving = sub.add_parser("save", help="keep this venv in the store under its lock's hash")
    saving.add_argument("--venv", type=Path, required=True)
    saving.add_argument("--store", required=True)
    saving.add_argument("--stack", help="record that this stack key built this lock")
    lock = sub.add_parser("lock", help="print this venv's lock (name==version lines)")
    lock.add_argument("--venv", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "lock":
        from sdk.core.lockfile import lock_text

        print(lock_text(venv_lock(args.venv)), end="")
        return 0
    try:
        say(save(args.venv.absolute(), args.store, args.stack))
    except Exception as exc:  # noqa: BLE001 (a cache: never fails the run it is saved from)
        say(f"warning: the environment was not saved to {args.store}/{ENVS} ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); the next node builds its own")
    return 0


if __name__ == "__main__":
    sys.exit(main())
