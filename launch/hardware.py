"""What this node runs on: the facts that GPU decisions take as arguments, read once from torch."""

from __future__ import annotations

import subprocess

from sdk.core.summary import Hardware


def capability() -> tuple[int, int] | None:
    """CUDA compute capability of this rank's GPU, None without one."""
    import torch

    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability()
    return int(major), int(minor)


def driver_version() -> str | None:
    """The NVIDIA driver version from nvidia-smi, when it is installed (None on CPU machines)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = out.stdout.strip().splitlines()
    return lines[0].strip() if out.returncode == 0 and lines else None


def torch_index() -> str | None:
    """The index the node's setup installed torch from (sdk.backends.skypilot.torch_stage writes it into the
    environment it built); None for an environment it did not build or whose torch it kept."""
    import sys
    from pathlib import Path

    marker = Path(sys.prefix) / ".torch-index"
    return marker.read_text().strip() or None if marker.is_file() else None


def hardware() -> Hardware:
    import torch

    cuda = torch.cuda.is_available()
    return Hardware(
        device="cuda" if cuda else "cpu",
        name=torch.cuda.get_device_name() if cuda else None,
        count=torch.cuda.device_count() if cuda else 0,
        capability=capability(),
        torch=torch.__version__,
        cuda=torch.version.cuda,
        driver=driver_version() if cuda else None,
        torch_index=torch_index(),
    )
