"""The node's part of the run record (sdk.core.record): written by global rank 0 when the node starts, before the
model loads — the packages this environment resolved, the torch build, CUDA, cuDNN and GPUs, the image, Python, the
platform, the product, and the sha256 of every data file as this node reads it (an s3:// object: the copy it
downloaded, which the data phase then reads, so nothing is downloaded twice).

A node that starts again for the same run (a crash, a spot recovery on another VM) writes it again; the earlier
starts' hardware, image, package hash and data hashes stay under `previous` (a bucket file changed before a spot
recovery stays visible)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from sdk.core.lockfile import installed_packages, lock_hash
from sdk.core.record import (
    CLIENT_RECORD,
    NODE_RECORD,
    Image,
    NodeRecord,
    TorchBuild,
    platform_name,
    product,
    python_version,
)
from sdk.data.fingerprint import fingerprints

# What a container image or a platform says about itself, in the order asked.
IMAGE_ENV = ("FINETUNE_IMAGE", "SKYPILOT_DOCKER_IMAGE", "CONTAINER_IMAGE", "NVIDIA_PYTORCH_VERSION", "PYTORCH_VERSION")


def torch_build() -> TorchBuild:
    import torch

    from launch.hardware import hardware

    facts = hardware()
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    count = facts.count
    return TorchBuild(version=torch.__version__, cuda=torch.version.cuda, cudnn=cudnn,
                      hip=getattr(torch.version, "hip", None),
                      gpus=[torch.cuda.get_device_name(i) for i in range(count)], gpu_count=count,
                      capability=facts.capability, driver=facts.driver, torch_index=facts.torch_index)


def _os_name() -> str | None:
    release = Path("/etc/os-release")
    if not release.is_file():
        return None
    for line in release.read_text(errors="replace").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.partition("=")[2].strip().strip('"')
    return None


def image(spec: Any) -> Image:
    """What the node runs in: the spec's resources.image, what the environment says, a container or not, the OS."""
    named = next((f"{name}={os.environ[name]}" for name in IMAGE_ENV if os.environ.get(name)), None)
    cloud = None
    if os.environ.get("SKYPILOT_CLUSTER_INFO"):
        try:
            cloud = json.loads(os.environ["SKYPILOT_CLUSTER_INFO"])
        except ValueError:
            cloud = {"raw": os.environ["SKYPILOT_CLUSTER_INFO"]}
    container = Path("/.dockerenv").exists() or Path("/run/.containerenv").exists()
    return Image(spec=spec.resources.image, env=named, container=container, os=_os_name(), cloud=cloud)


def node_record(spec: Any, *, s3_copy: Any = None, world_size: int = 1) -> NodeRecord:
    packages = installed_packages()
    return NodeRecord(started=time.time(), world_size=world_size, product=product(), python=python_version(),
                      platform=platform_name(), packages=packages, packages_hash=lock_hash(packages),
                      torch=torch_build(), image=image(spec), data=fingerprints(spec, s3_copy=s3_copy))


def write_node_record(spec: Any, folder: Any) -> NodeRecord:
    """The record of this start into the run folder (rank 0 calls it), earlier starts kept under `previous`."""
    from launch.data import _fetch_s3

    record = node_record(spec, s3_copy=_fetch_s3, world_size=int(os.environ.get("WORLD_SIZE", "1")))
    earlier = folder.read_json(NODE_RECORD)
    if earlier:
        gone = {k: earlier.get(k) for k in ("started", "packages_hash", "torch", "image", "data")}
        record.previous = [*earlier.get("previous", []), gone]
    folder.write_json(NODE_RECORD, record.model_dump(mode="json"))
    return record


def rerun_of(folder: Any) -> str | None:
    """The run this one reproduces, as its client record says (the summary keeps it)."""
    client = folder.read_json(CLIENT_RECORD) or {}
    return (client.get("rerun_of") or {}).get("run_id")


def keep_rerun_of(folder: Any, summary: Any) -> None:
    """A rerun's summary names the run it reproduces: written again with it before the run's final state is."""
    from sdk.store.runfolder import SUMMARY

    origin = rerun_of(folder)
    if origin and folder.read_json(SUMMARY) is not None:
        folder.write_json(SUMMARY, summary.model_copy(update={"rerun_of": origin}).model_dump(mode="json"))
