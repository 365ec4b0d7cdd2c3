"""The client's half of the node environment cache: which lock a launch installs and which stored environment
its node restores, looked up in the store before the node starts, and the setup lines that use them.

A lock (sdk.core.lockfile: canonical name -> version) is the install plan: the node installs exactly those
pins with --no-deps, nothing resolved. It comes from the run folder's lock.json (`finetune rerun`), else from
`<output>/.envs/stacks/<stack-key>.json`, the lock the same stack last built. An environment built from a lock is
kept at `<output>/.envs/<lock-hash>/` (launch/envcache.py writes it, meta.json last); when one is there the
client signs a GET URL for its archive (FINETUNE_ENV_URL) and the node restores it with its base Python
(env_restore.py) before any venv exists, or falls back to installing the lock.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdk.core.errors import LaunchError, StoreError
from sdk.core.lockfile import canonical_name, lock_hash, lock_text

ENVS = ".envs"
LOCK_JSON = "lock.json"
URL_ENV = "FINETUNE_ENV_URL"
URL_SECONDS = 24 * 3600  # a managed job recovering later than this installs from the lock instead
LOOKUP_S = 20  # the store is asked a handful of small questions; a slow one must not hold the launch
# Installed by the torch stage for the node's driver (a CUDA build's own libraries), never from a lock made on
# another driver: the lock's torch version is kept, its build is the node's.
TORCH_FAMILY = re.compile(r"^(torch|triton|pytorch-triton.*|nvidia-.*|cuda-.*)$")


@dataclass
class NodeLock:
    packages: dict[str, str]
    origin: str  # in words, for the setup line
    exact: bool = False  # a rerun's lock.json: installed as is or not at all (no resolving fallback)
    torch: str | None = None  # as recorded, e.g. 2.13.0+cu126
    hash: str = field(init=False)

    def __post_init__(self) -> None:
        self.packages = {canonical_name(n): str(v) for n, v in self.packages.items()}
        if self.torch:
            self.packages.setdefault("torch", self.torch)
        self.torch = self.torch or self.packages.get("torch")
        self.hash = lock_hash(self.packages)

    def torch_release(self) -> str | None:
        """The version the torch stage installs: the recorded one without its local build (`+cu126`)."""
        return self.torch.split("+")[0] if self.torch else None

    def install_text(self, skip: tuple[str, ...] = ()) -> str:
        """The pins installed with --no-deps: all but the torch family and what a later stage builds."""
        kept = {n: v for n, v in self.packages.items() if not TORCH_FAMILY.match(n) and n not in skip}
        return lock_text(kept)


@dataclass
class Found:
    lock: NodeLock | None = None
    meta: dict[str, Any] | None = None  # the stored environment of lock.hash, when there is one
    url: str | None = None  # its archive, signed for the node (only for a real launch, not a dry run)


def rerun_lock(folder: Any) -> NodeLock | None:
    """The lock a rerun's client wrote into the new run folder, or None."""
    data = folder.read_json(LOCK_JSON)
    if data is None:
        return None
    where = folder.store.url(folder.key(LOCK_JSON))
    packages = data.get("packages") if isinstance(data, dict) else None
    if not isinstance(packages, dict) or not packages:
        raise LaunchError(f"{where}: has no packages (expected {{\"packages\": {{name: version}}, \"torch\": ...}})")
    origin = f"lock.json, from run {data['from_run']}" if data.get("from_run") else "lock.json"
    return NodeLock(packages, origin, exact=True, torch=data.get("torch"))


def stack_lock(store: Any, stack: str) -> NodeLock | None:
    record = f"{ENVS}/stacks/{stack}.json"
    if not store.exists(record):
        return None
    key = json.loads(store.get_bytes(record)).get("lock_hash")
    if not key or not store.exists(f"{ENVS}/{key}/lock.txt"):
        return None
    from sdk.core.lockfile import parse_lock

    text = store.get_bytes(f"{ENVS}/{key}/lock.txt").decode()
    lock = NodeLock(parse_lock(text), f"the lock stack {stack} last built")
    return lock if lock.hash == key else None  # an edited lock.txt is not the one its environment was built from


def stored_env(store: Any, key: str, *, sign: bool) -> tuple[dict[str, Any] | None, str | None]:
    meta_key = f"{ENVS}/{key}/meta.json"
    if not store.exists(meta_key):
        return None, None
    meta = json.loads(store.get_bytes(meta_key))
    if not sign or not hasattr(store, "presign_get"):
        return meta, None
    return meta, store.presign_get(f"{ENVS}/{key}/{meta['archive']}", URL_SECONDS)  # SigV4, the bucket's region


def find(output: str, stack: str, folder: Any) -> Found:
    """The lock and stored environment for a launch. A real launch (its folder holds spec.json) signs the
    archive's URL; a dry run only looks. A store that cannot answer leaves the node to build as before."""
    from sdk.backends import bounded
    from sdk.store import open_store

    def ask() -> Found:
        launching = folder.exists()
        lock = rerun_lock(folder) if launching else None
        lock = lock or stack_lock(open_store(output), stack)
        if lock is None:
            return Found()
        meta, url = stored_env(open_store(output), lock.hash, sign=launching)
        return Found(lock, meta, url)

    try:
        return bounded(ask, LOOKUP_S, "the store's environment cache")
    except LaunchError:
        raise
    except (StoreError, TimeoutError, OSError, ValueError, KeyError) as exc:
        if _quiet_failure(exc):
            return Found()
        print(f"warning: {output}/{ENVS}: environment cache not consulted ({exc}); the node builds its own",
              file=sys.stderr)
        return Found()


def _quiet_failure(exc: Exception) -> bool:
    """No credentials at all (a dry run on a new machine): nothing to say, the launch itself will say it."""
    return "no AWS credentials" in str(exc)


# ------------------------------------------------------------------------------------------ setup lines


def restore_stage(found: Found, then: str) -> str:
    """Lines that restore the stored environment into $VENV with the base Python ($PY), then run `then` (the
    torch check: a restored CUDA build this driver cannot run is replaced). Only where the client signed a URL."""
    meta = found.meta or {}
    if not meta or not found.lock:
        return ""
    script = (Path(__file__).parent / "env_restore.py").read_text()
    args = " ".join(f"--{k} {_q(str(v))}" for k, v in (
        ("hash", found.lock.hash), ("sha256", meta["sha256"]), ("size", meta.get("size", 0)),
        ("python", meta["python"]), ("home", meta["home"]), ("built-in", meta["venv"]),
        ("format", meta.get("format", "tar.gz"))))
    return f"""if [ ! -f "$VENV/.stack-$FINETUNE_STACK_KEY" ] && [ -n "${{{URL_ENV}:-}}" ] \\
    && command -v "$PY" >/dev/null 2>&1; then
  cat > "$HOME/.finetune/env_restore.py" <<'FINETUNE_ENV_RESTORE'
{script}FINETUNE_ENV_RESTORE
  if "$PY" "$HOME/.finetune/env_restore.py" --venv "$VENV" {args}; then
{then.rstrip()}
    touch "$VENV/.stack-$FINETUNE_STACK_KEY"
  fi
fi
"""


def lock_stage(lock: NodeLock, skip: tuple[str, ...], resolve: str) -> str:
    """Install the lock's pins without resolving; `resolve` (the ordinary install) is the fallback for a stack
    lock whose pin an index no longer has. A rerun's lock is exact: it installs as recorded or setup stops."""
    pins = lock.install_text(skip)
    count = pins.count("\n")
    file = f"$HOME/.finetune/lock-{lock.hash}.txt"
    if lock.exact:
        otherwise = (f'{{ echo "error: the packages of {lock.origin} (lock {lock.hash}) did not install as recorded '
                     f'(see above); rerun cannot reproduce its environment here" >&2; exit 3; }}')
    else:
        otherwise = (f'{{ echo "[finetune] setup: warning: the lock {lock.hash} did not install (a pin gone from '
                     f'the index?); resolving instead"\n{_indent_plain(resolve, 2)}\n}}')
    return f"""echo "[finetune] setup: installing the {count} packages of {lock.origin} (lock {lock.hash}) without \
resolving (--no-deps) with $(installer)"
cat > "{file}" <<'FINETUNE_LOCK'
{pins}FINETUNE_LOCK
pyinstall --no-deps -r "{file}" || {otherwise}
"""


def save_stage(output: str, stack: str | None) -> str:
    """After a build (not a restore), the first node keeps the environment in the store (a failed save only
    warns). FINETUNE_ENV_SAVE=0 turns it off."""
    stack_arg = f" --stack {_q(stack)}" if stack else ""
    return f"""if [ "$BUILT" = 1 ] && [ "${{FINETUNE_ENV_SAVE:-1}}" != 0 ] \\
    && [ "${{SKYPILOT_SETUP_NODE_RANK:-${{SKYPILOT_NODE_RANK:-0}}}}" = 0 ]; then
  "$VENV/bin/python" -m launch.envcache save --venv "$VENV" --store {_q(output)}{stack_arg} \\
    || echo "[finetune] setup: warning: the environment was not saved; the next node builds its own"
fi
"""


def _q(text: str) -> str:
    import shlex

    return shlex.quote(text)


def _indent_plain(text: str, n: int) -> str:
    return "\n".join(" " * n + line if line else line for line in text.rstrip("\n").splitlines())
