"""What a cloud node installs before it runs: the exact client package (a wheel built from this source tree,
file-mounted, or the released version), `finetune[extras]` with the client's own training-stack versions as
pip constraints, the torch build its driver can run, into an environment keyed on all of it."""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import re
import subprocess
import sys
from pathlib import Path

from sdk.backends.envcache import URL_ENV, Found, find, lock_stage, restore_stage, save_stage
from sdk.core.errors import LaunchError
from sdk.core.spec import FineTuneSpec
from sdk.machine.registry import home
from sdk.objectives import objective_of
from sdk.store.runfolder import RunFolder

TORCH_DEFAULT = "2.13.0"  # the node's torch when this client has none installed (a client-only install)
# Pinned on the node to what this client runs (when installed here): the versions the tests passed with.
PINNED = ("torch", "transformers", "peft", "trl", "accelerate", "datasets", "bitsandbytes", "safetensors",
          "tokenizers", "boto3", "pydantic", "deepspeed")
NODE_DIST = "~/.finetune/dist"  # a file-mount destination; in scripts it is $HOME/.finetune/dist
# Extras whose wheels carry GPU code for one CUDA major version, installed only beside a torch of that build. PyPI's
# vllm 0.31.0 (pyproject's `vllm` extra: the release that pins torch 2.13.0, and the newest trl 1.16 supports) is a
# CUDA 13 build (it depends on nvidia-cutlass-dsl[cu13]): a node whose driver is below 580 gets torch's cu126 build
# (torch_index), where vLLM's kernels cannot load, so there it is left out and rollouts: auto uses transformers.
CUDA_BOUND_EXTRAS = {"vllm": ("13", "vLLM 0.31.0")}


def project_root() -> Path | None:
    """The source tree this client runs from, when it is one (an editable install or a checkout)."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() and (root / "launch" / "__main__.py").is_file() else None


def source_modules(root: Path) -> list[Path]:
    return [*root.glob("sdk/**/*.py"), *root.glob("launch/**/*.py")]


def missing_from_wheel(wheel: Path, root: Path) -> list[str]:
    """The source tree's modules a built wheel does not hold (a package setup.py did not find), as dotted names."""
    import zipfile

    with zipfile.ZipFile(wheel) as archive:
        held = set(archive.namelist())
    return sorted(".".join(path.relative_to(root).with_suffix("").parts) for path in source_modules(root)
                  if path.relative_to(root).as_posix() not in held)


def constraints() -> str:
    lines = []
    for name in PINNED:
        try:
            version = md.version(name)
        except md.PackageNotFoundError:
            continue
        lines.append(f"{name}=={version.split('+')[0]}")  # '2.13.0+cpu' is a local build; pin the release
    return "\n".join(lines) + "\n"


def build_dist() -> dict[str, Path]:
    """The package the node installs, built once per source state: {'wheel': ..., 'constraints': ...}.
    A released install (no source tree) is pinned by version instead: {} and setup uses PyPI."""
    root = project_root()
    if root is None:
        return {}
    digest = hashlib.sha256()
    for path in sorted(p for p in [root / "pyproject.toml", root / "setup.py", *source_modules(root)] if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    pins = constraints()
    digest.update(pins.encode())
    out = home() / "dist" / digest.hexdigest()[:16]
    wheels = list(out.glob("finetune-*.whl"))
    if not wheels:
        out.mkdir(parents=True, exist_ok=True)
        build = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(root)],
            capture_output=True, text=True,
        )
        wheels = list(out.glob("finetune-*.whl"))
        if build.returncode != 0 or not wheels:
            raise LaunchError(f"cannot build the finetune wheel from {root}: {build.stderr.strip()[-500:]}")
        left_out = missing_from_wheel(wheels[0], root)
        if left_out:  # the node would stop at its first import of one of them, long after the cluster came up
            wheels[0].unlink()
            more = " …" if len(left_out) > 5 else ""
            raise LaunchError(f"the finetune wheel built from {root} lacks {', '.join(left_out[:5])}{more} "
                              "(setup.py finds the packages: an __init__.py missing?)")
    (out / "constraints.txt").write_text(pins)
    return {"wheel": wheels[0], "constraints": out / "constraints.txt"}


def stack_key(spec: FineTuneSpec, pins: str) -> str:
    """The training stack a node environment holds: pinned versions, extras, the package's dependencies.
    A source edit changes the wheel, not this: the venv is reused and only the package reinstalled."""
    root = project_root()
    deps = (root / "pyproject.toml").read_text() if root else md.version("finetune")
    bound = ",".join(cuda_bound_extras(spec))
    extras = extras_for(spec) + (f"|{bound}" if bound else "")
    return hashlib.sha256(f"{pins}|{extras}|{install_env(spec)}|{deps}".encode()).hexdigest()[:16]


def extras_for(spec: FineTuneSpec) -> str:
    """The package extras a node installs: the training stack, plus what this spec uses and nothing more:
    DeepSpeed for `distributed: deepspeed`, Liger for `train.liger_kernels`, flash-attn for
    and each tracker named in `tracking` (flash-attn for `train.attention: flash_attention_2` is built by
    kernels_stage: its build needs the installed torch)."""
    extras = ["train"]
    if spec.distributed.strategy == "deepspeed":
        extras.append("deepspeed")
    if spec.train.liger_kernels:
        extras.append("liger")
    extras += [e for e in objective_extras(spec) if e not in CUDA_BOUND_EXTRAS]
    return ",".join(extras + sorted({t.name for t in spec.tracking}))


def objective_extras(spec: FineTuneSpec) -> tuple[str, ...]:
    """The extras the spec's objective asks for (its `node_extras`), on a CUDA node where the spec names accelerators:
    for grpo, `vllm` unless its rollouts are transformers'."""
    return tuple(objective_of(spec).node_extras(spec.objective, bool(spec.resources.accelerators)))


def cuda_bound_extras(spec: FineTuneSpec) -> tuple[str, ...]:
    """The objective's extras that only a torch of one CUDA build can run (CUDA_BOUND_EXTRAS): cuda_extras_stage."""
    return tuple(e for e in objective_extras(spec) if e in CUDA_BOUND_EXTRAS)


def cuda_extras_stage(spec: FineTuneSpec, pins: str, package: str) -> str:
    """Setup lines that install each CUDA-bound extra (`package` names the finetune package, `{extra}` its place)
    where the venv's torch is that CUDA build, and elsewhere print why not. A failed install only warns: rollouts:
    auto then uses transformers, and an explicit vllm_* fails at start naming objective.rollouts."""
    lines = []
    for extra in cuda_bound_extras(spec):
        major, what = CUDA_BOUND_EXTRAS[extra]
        torch_is = f"import sys, torch; sys.exit((torch.version.cuda or '').split('.')[0] != '{major}')"
        version = "$(\"$VENV/bin/python\" -c 'import torch; print(torch.__version__)')"
        lines += [f'if "$VENV/bin/python" -c "{torch_is}" 2>/dev/null; then',
                  f'  echo "[finetune] setup: installing {what} for objective.rollouts (CUDA {major}, as this torch)"',
                  f'  pyinstall {pins} "{package.format(extra=extra)}" \\',
                  f'    || echo "[finetune] setup: warning: {what} did not install; rollouts: auto uses transformers"',
                  "else",
                  f'  echo "[finetune] setup: not installing {what}, a CUDA {major} build on PyPI: this torch is '
                  f'{version} (NVIDIA driver below 580: cu126); rollouts: auto uses transformers"',
                  "fi"]
    return "\n".join(lines) + ("\n" if lines else "")


def install_env(spec: FineTuneSpec) -> dict[str, str]:
    """Environment for building DeepSpeed on the node: its CPU Adam op built at install when the optimizer is
    offloaded (else it JIT-compiles at the first step of every run, and needs a compiler there)."""
    if spec.distributed.strategy == "deepspeed" and spec.distributed.offload:
        return {"DS_BUILD_OPS": "0", "DS_BUILD_CPU_ADAM": "1"}
    return {}


def kernels_stage(spec: FineTuneSpec, pins: str) -> str:
    """What is built against the venv's own torch, after it is in (no build isolation; setuptools, which a 3.12
    venv lacks): flash-attn when the spec asks for flash_attention_2 (a failure stops setup: the run would
    refuse to start without it), and DeepSpeed with the ops install_env names when the optimizer is offloaded
    (rebuilt without the cache, which holds the wheel built without them; a failure leaves DeepSpeed's JIT build
    at the first step, which needs nvcc matching torch's CUDA, so it only warns)."""
    lines = []
    if spec.train.attention == "flash_attention_2":
        lines += ['echo "[finetune] setup: building flash-attn against this torch (train.attention: flash_attention_2): minutes"',
                  "pyinstall setuptools wheel ninja packaging",
                  "pyinstall --no-build-isolation flash-attn"]
    env = install_env(spec)
    if env:
        assign = " ".join(f"{k}={v}" for k, v in env.items())
        lines += [f'echo "[finetune] setup: building DeepSpeed with its CPU Adam op ({assign}): a few minutes"',
                  "pyinstall setuptools wheel ninja",
                  f"( export {assign}; pyinstall --no-build-isolation --no-cache-dir --force-reinstall --no-deps {pins} deepspeed ) \\",
                  '  || echo "[finetune] setup: warning: DeepSpeed\'s CPU Adam op did not build here; DeepSpeed compiles it at '
                  'the first step instead (it needs nvcc matching torch\'s CUDA)"']
    return "\n".join(lines) + ("\n" if lines else "")


PYTHON_FLOOR = (3, 10)  # pyproject's requires-python


def installer_stage() -> str:
    """`pyinstall ARGS...` installs into $VENV with uv where the node has it (much faster at a multi-GB torch
    stack), else pip. pip wherever the node configures pip's sources (PIP_INDEX_URL / find-links, a pip.conf
    pointing at a mirror): uv would not read that configuration. FINETUNE_INSTALLER=uv|pip decides outright."""
    return """installer() {
  case "${FINETUNE_INSTALLER:-auto}" in uv|pip) echo "$FINETUNE_INSTALLER"; return;; esac
  command -v uv >/dev/null 2>&1 || { echo pip; return; }
  "$VENV/bin/python" -m pip --version >/dev/null 2>&1 || { echo uv; return; }
  if [ -n "${PIP_INDEX_URL:-}${PIP_EXTRA_INDEX_URL:-}${PIP_FIND_LINKS:-}" ] \\
      || "$VENV/bin/python" -m pip config list 2>/dev/null | grep -qE 'index-url|find-links'; then echo pip; else echo uv; fi
}
pyinstall() {  # pip's flags; uv's names for the two that differ
  if [ "$(installer)" = uv ]; then
    local args=("${@/--force-reinstall/--reinstall}")
    uv pip install -q --python "$VENV/bin/python" "${args[@]/--no-cache-dir/--no-cache}"
  else "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$@"; fi
}
"""


def torch_stage(torch_version: str, pins: str = "") -> str:
    """The part of setup that puts torch into $VENV: the image's own torch when it is the pinned version and
    sees the GPU, else the pinned version from the CUDA build that sdk.backends.torch_index chooses on the
    node against the real index (FINETUNE_TORCH_INDEX_URL overrides the index root), through uv where the
    node has it (SkyPilot's runtime installs it), else pip. A driver no build fits stops setup (exit 3)."""
    chooser = (Path(__file__).parent / "torch_index.py").read_text()
    return f"""mkdir -p "$HOME/.finetune"
cat > "$HOME/.finetune/torch_index.py" <<'FINETUNE_TORCH_INDEX'
{chooser}FINETUNE_TORCH_INDEX
# one line of Python: the stage is indented inside setup, and an indented continuation line is a SyntaxError
if "$VENV/bin/python" -c "import torch, sys, shutil, subprocess; gpu = shutil.which('nvidia-smi') and subprocess.run(['nvidia-smi'], capture_output=True).returncode == 0; sys.exit(torch.__version__.split('+')[0] != '{torch_version}' or bool(gpu and not torch.cuda.is_available()))" 2>/dev/null; then
  echo "[finetune] setup: keeping the environment's torch $("$VENV/bin/python" -c 'import torch; print(torch.__version__)')"
else
  INDEX="$("$VENV/bin/python" "$HOME/.finetune/torch_index.py" --torch {torch_version} ${{FINETUNE_TORCH_INDEX_URL:+--index "$FINETUNE_TORCH_INDEX_URL"}})" || exit 3
  echo "[finetune] setup: installing torch {torch_version}${{INDEX:+ from $INDEX}} with $(installer)"
  pyinstall {pins} ${{INDEX:+--index-url "$INDEX"}} torch=={torch_version}
  echo "${{INDEX:-default}}" > "$VENV/.torch-index"
fi
"""


def venv_stage() -> str:
    """Create $VENV with the node's Python: refuse one below the floor in one line; where the image has no
    venv module (Debian/Ubuntu without python3-venv), uv or virtualenv make it instead."""
    floor = ".".join(map(str, PYTHON_FLOOR))
    return f"""PY="${{FINETUNE_NODE_PYTHON:-python3}}"
command -v "$PY" >/dev/null 2>&1 || {{ echo "error: this image has no $PY: set resources.image to one with Python >= {floor}" >&2; exit 3; }}
"$PY" -c "import sys; sys.exit(sys.version_info < {PYTHON_FLOOR})" || {{
  echo "error: this image's $("$PY" -V 2>&1) is older than Python {floor}, which finetune needs: set resources.image to an image with Python >= {floor} (or FINETUNE_NODE_PYTHON to such a Python on it)" >&2; exit 3; }}
if [ ! -x "$VENV/bin/python" ]; then
  echo "[finetune] setup: creating the environment $VENV with $("$PY" -V 2>&1)"
  "$PY" -m venv ${{FINETUNE_VENV_SYSTEM_SITE:+--system-site-packages}} "$VENV" 2>/dev/null \\
    || {{ rm -rf "$VENV"; command -v uv >/dev/null 2>&1 && uv venv -q --python "$PY" ${{FINETUNE_VENV_SYSTEM_SITE:+--system-site-packages}} "$VENV"; }} \\
    || {{ rm -rf "$VENV"; "$PY" -m virtualenv -q ${{FINETUNE_VENV_SYSTEM_SITE:+--system-site-packages}} "$VENV"; }} \\
    || {{ echo "error: cannot create a Python environment: this image's $PY has no venv module (apt install python3-venv), and neither uv nor virtualenv is here" >&2; exit 3; }}
fi
"""


def setup_script(spec: FineTuneSpec, dist: dict[str, Path], found: Found | None = None) -> str:
    """The node's setup: restore the stored environment of the lock when there is one (found.meta, signed), else
    build it — from the lock without resolving (found.lock), or by resolving finetune[extras] under the client's
    pins — then this build of the package on top, then (after a build) keep the environment in the store."""
    found = found or Found()
    lock, extras, pins_text = found.lock, extras_for(spec), constraints()
    if dist:
        base = f"$HOME/.finetune/dist/{dist['wheel'].name}"
        key, pins = dist["wheel"].parent.name, '-c "$HOME/.finetune/dist/constraints.txt"'
        with_extra = base + "[{extra}]"
    else:
        version = md.version("finetune")
        base, key, pins = f"finetune=={version}", version, ""
        with_extra = "finetune[{extra}]==" + version
    resolve = (f'echo "[finetune] setup: installing finetune[{extras}] and its dependencies with $(installer)"\n'
               f'pyinstall {pins} "{with_extra.format(extra=extras)}"\n')
    torch_pin = next((line.partition("==")[2] for line in pins_text.splitlines() if line.startswith("torch==")), None)
    stack = stack_key(spec, pins_text)
    if lock:  # the lock decides every version: the client's pins would only conflict with an older lock's
        torch = torch_stage(lock.torch_release() or torch_pin or TORCH_DEFAULT)
        built_by = ("flash-attn",) if spec.train.attention == "flash_attention_2" else ()
        install = lock_stage(lock, built_by + cuda_bound_extras(spec), resolve)
        pins = ""
    else:
        torch = torch_stage(torch_pin or TORCH_DEFAULT, pins)
        install = resolve
    venv_key = f"lock-{lock.hash}" if lock else stack
    restore = restore_stage(found, torch) if lock else ""
    # Setup runs on every node at once, and nodes may share a home: one venv, built under a lock.
    # FINETUNE_NODE_PYTHON picks the interpreter (an image's own Python), FINETUNE_VENV_SYSTEM_SITE=1
    # lets the venv see that interpreter's preinstalled packages (a CUDA torch in a GPU image).
    return f"""set -euo pipefail
VENV="${{FINETUNE_VENV:-$HOME/.finetune/venv-{venv_key}}}"
FINETUNE_STACK_KEY={venv_key}
PY="${{FINETUNE_NODE_PYTHON:-python3}}"
mkdir -p "$(dirname "$VENV")" "$HOME/.finetune"
{installer_stage()}(
  flock 9
  BUILT=0
{_indent(restore, 2)}
  # The training stack, once per stack (or lock): torch for this driver, then everything else.
  if [ ! -f "$VENV/.stack-{venv_key}" ]; then
{_indent(venv_stage(), 4)}
{_indent(torch, 4)}
{_indent(install, 4)}
{_indent(kernels_stage(spec, pins) + cuda_extras_stage(spec, pins, with_extra), 4)}
    touch "$VENV/.stack-{venv_key}"
    BUILT=1
  fi
  # The package on top, whenever its build changes: no dependency is touched.
  if [ ! -f "$VENV/.finetune-{key}" ]; then
    echo "[finetune] setup: installing this build of finetune"
    pyinstall --force-reinstall --no-deps "{base}"
    rm -f "$VENV"/.finetune-*
    touch "$VENV/.finetune-{key}"
  fi
{_indent(save_stage(spec.output, None if lock and lock.exact else stack), 2)}
) 9>"$VENV.lock"
"""


def setup_for(spec: FineTuneSpec, dist: dict[str, Path], folder: RunFolder) -> tuple[str, dict[str, str]]:
    """What the SkyPilot backend's task runs as setup, and the envs it adds: the lock (the run folder's lock.json,
    else what this stack last built) and the stored environment looked up in the store first."""
    found = find(spec.output, stack_key(spec, constraints()), folder)
    envs = {"FINETUNE_STACK_KEY": f"lock-{found.lock.hash}" if found.lock else stack_key(spec, constraints())}
    if found.url:
        envs[URL_ENV] = found.url
    return setup_script(spec, dist, found), envs


HEREDOC = re.compile(r"<<'(FINETUNE_\w+)'")


def _indent(text: str, n: int) -> str:
    """Indent shell lines, but not the body of a here-document (its terminator must start the line)."""
    out, end = [], None
    for line in text.rstrip("\n").splitlines():
        if end:
            out.append(line)
            end = None if line == end else end
            continue
        out.append(" " * n + line if line else line)
        match = HEREDOC.search(line)
        end = match.group(1) if match else None
    return "\n".join(out)
