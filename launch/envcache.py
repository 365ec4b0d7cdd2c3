"""Keep the environment a node just built in the store, so that the next node with the same lock restores it.

Run by setup with the new venv's own Python once the build is done (it has boto3 and sdk.store by then):
    "$VENV/bin/python" -m launch.envcache save --venv "$VENV" --store s3://bucket/runs --stack KEY

Layout under the store (the spec's output), written in this order — no meta.json, no environment:
    .envs/<lock-hash>/env-<id>.tar.zst      the venv (zstd where the node has it, else gzip -1)
    .envs/<lock-hash>/lock.txt              the lock: sorted name==version lines (sdk.core.lockfile)
    .envs/<lock-hash>/meta.json             python, pyvenv.cfg home, venv path, platform, size, sha256, ...
    .envs/stacks/<stack-key>.json           {"lock_hash": ...}: what this stack key last built
Each archive gets a name of its own, so two nodes saving the same lock at once never pair one's meta with the
other's archive. A save that fails warns in one line and exits 0: the run goes on without it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import secrets
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


class Packed:
    """The venv as a tar stream (zstd -3 on all cores where the node has it, else gzip -1), hashed as it is read.
    On a torch tree here zstd took 1.5 s for 23% of its size against gzip -1's 8.7 s and 31%."""

    def __init__(self, venv: Path):
        zstd = shutil.which("zstd")
        fast = ("tar.zst", [zstd, "-q", "-3", "-T0", "-c"]) if zstd else ("tar.gz", ["gzip", "-1", "-c"])
        self.format, squeeze = fast
        self.venv, self.digest, self.size = venv, hashlib.sha256(), 0
        self.tar = subprocess.Popen(["tar", "-c", "-C", str(venv), "."], stdout=subprocess.PIPE)
        self.comp = subprocess.Popen(squeeze, stdin=self.tar.stdout, stdout=subprocess.PIPE)
        self.tar.stdout.close()  # the compressor holds the only read end: tar sees a broken pipe if it stops

    def read(self, n: int = -1) -> bytes:
        chunk = self.comp.stdout.read(n)
        self.digest.update(chunk)
        self.size += len(chunk)
        return chunk

    def close(self) -> str:
        """The archive's sha256, once the stream was read to its end; RuntimeError when packing failed."""
        self.comp.stdout.close()
        if self.comp.wait() != 0 or self.tar.wait() not in (0, 1):  # GNU tar: 1 = a file changed while read
            raise RuntimeError(f"packing {self.venv} failed (tar {self.tar.returncode}, "
                               f"compressor {self.comp.returncode})")
        return self.digest.hexdigest()

    def abort(self) -> None:
        for proc in (self.comp, self.tar):
            proc.kill()
            proc.wait()


def put_stream(store, stream: Packed, key: str) -> None:
    """Upload while packing: an S3 store takes the stream as a multipart upload (packing and uploading overlap:
    a 2.7 GB environment took 46 s to pack and 86 s to upload one after the other); another store, a file."""
    if hasattr(store, "client"):
        from sdk.store.s3 import _retry

        _retry(store.url(key), "upload", lambda: store.client.upload_fileobj(
            stream, store.bucket, store._key(key), Config=store._transfer_config()), attempts=1)
        return
    with tempfile.TemporaryDirectory(prefix="finetune-env-") as scratch:
        with open(Path(scratch) / "env", "wb") as sink:
            while chunk := stream.read(1 << 20):
                sink.write(chunk)
        store.upload_file(Path(scratch) / "env", key)


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
    stream = Packed(venv)
    name = f"env-{secrets.token_hex(8)}.{stream.format}"  # its own name: a second saver never replaces it
    try:
        put_stream(store, stream, f"{where}/{name}")
    except BaseException:
        stream.abort()  # the upload's own error is the one to report
        raise
    sha = stream.close()  # a pack that failed after its last byte went up: no meta, so no environment
    store.put_bytes(f"{where}/lock.txt", lock.encode())
    meta = {
        "lock_hash": key, "archive": name, "format": stream.format, "size": stream.size, "sha256": sha,
        "python": sys.version.split()[0], "home": pyvenv_home(venv), "venv": str(venv),
        "platform": sysconfig.get_platform(), "machine": platform.machine(), "packages": len(packages),
        "torch": packages.get("torch"), "created_at": time.time(),
    }
    store.put_bytes(f"{where}/meta.json", json.dumps(meta, indent=1).encode())  # last: no meta, no environment
    return (f"saved the environment {key} ({stream.size / 2**20:.0f} MiB {stream.format}) to {store.url(where)} in "
            f"{time.time() - start:.1f} s (packed and uploaded as one stream)")


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
