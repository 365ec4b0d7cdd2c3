"""The run record, typed: what a run read and ran with, so that it can be run again and compared (issue 36).

Two parts, each written once by the side that knows it (docs/run-folder.md):
  record/client.json   at submit, before the backend starts anything: the recipe as given (YAML text, path,
                       `--set` overrides), the data as the client saw it (sha256 of local files, an S3 object's
                       ETag and VersionId), the product's version and source commit, the run it reproduces
  record/node.json     by the node (global rank 0) when it starts, before the model loads: the packages it resolved,
                       the torch build, CUDA and cuDNN, its GPUs and driver, the image, Python, the platform, and the
                       sha256 of every data file it reads (an S3 object as downloaded)
Shared by the client (which reads both) and the node (which writes its part): no torch here.
"""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

CLIENT_RECORD = "record/client.json"
NODE_RECORD = "record/node.json"
LOCK = "lock.json"  # a rerun onto a cluster: the packages its node setup installs exactly


class _Kept(BaseModel):
    model_config = ConfigDict(extra="allow")  # a newer writer's keys are kept when an older client reads them


class DataFile(_Kept):
    """One file a run reads (a source, a file of a folder source, or a file shipped with the run), as hashed."""

    field: str  # data.source, data.sources.1, data.eval_source, or files:<name as written> (sdk.runs.shipping)
    source: str  # as the spec names it
    kind: Literal["file", "s3", "hf_dataset", "builtin", "missing"]
    path: str | None = None  # the file itself (a folder source's file; the local copy of an s3:// object is not kept)
    sha256: str | None = None
    size: int | None = None
    etag: str | None = None  # an S3 object's ETag, quotes stripped ("-N" at its end: a multipart upload)
    version_id: str | None = None  # an S3 object's VersionId, in a versioned bucket

    @property
    def key(self) -> tuple[str, str]:
        """Which file this is, across records (a rerun's record names the same source and file)."""
        return self.source, self.path or self.source


class FolderFiles(_Kept):
    """A folder source's data files as the client listed them: a file added or removed since is a change."""

    field: str
    source: str  # as the spec names it
    files: list[str] = Field(default_factory=list)  # relative names, sorted (sdk.data.rows.folder_files)


class Product(_Kept):
    version: str
    git_commit: str | None = None  # the source tree the product runs from, when it runs from one
    git_dirty: bool | None = None  # that tree has changes not committed (tracked or new files)


class RecipeGiven(_Kept):
    """The recipe as the user gave it, before resolution."""

    name: str | None = None  # as given: a file path or a shipped recipe's name
    path: str | None = None  # the file it resolved to
    text: str | None = None  # its YAML text
    overrides: list[str] = Field(default_factory=list)  # --set k=v, in order


class RerunOf(_Kept):
    """What a rerun checked before launching (sdk.runs.rerun)."""

    run_id: str
    uri: str
    overrides: list[str] = Field(default_factory=list)  # on top of the run's spec
    allow_data_change: bool = False
    data_changes: list[str] = Field(default_factory=list)  # one line each: allowed, and so recorded
    unchecked: list[str] = Field(default_factory=list)  # what the record could not let it check
    package_differences: dict[str, Any] | None = None  # this machine against the record (a local rerun)
    lock: bool = False  # lock.json written: the node installs the recorded packages


class ClientRecord(_Kept):
    version: int = 1
    submitted: float
    backend: str
    product: Product
    python: str
    platform: str
    recipe: RecipeGiven | None = None  # None: submitted as a spec object (Python, a sweep trial, the API)
    data: list[DataFile] = Field(default_factory=list)
    files: list[DataFile] = Field(default_factory=list)  # shipped with the run (files.json)
    folders: list[FolderFiles] = Field(default_factory=list)  # each folder source's file list
    rerun_of: RerunOf | None = None


class TorchBuild(_Kept):
    version: str | None = None  # torch.__version__, e.g. 2.5.1+cu124
    cuda: str | None = None  # the CUDA it was built with
    cudnn: int | None = None
    hip: str | None = None
    gpus: list[str] = Field(default_factory=list)  # each visible device's name
    gpu_count: int = 0
    capability: tuple[int, int] | None = None
    driver: str | None = None  # the NVIDIA driver, when nvidia-smi answers
    torch_index: str | None = None  # where the node's setup installed torch from, when it did


class Image(_Kept):
    spec: str | None = None  # resources.image as the spec asks
    env: str | None = None  # what the node's environment says it is (FINETUNE_IMAGE, or a container's own variables)
    container: bool = False  # running inside a container (/.dockerenv, /run/.containerenv)
    os: str | None = None  # /etc/os-release's PRETTY_NAME
    cloud: dict[str, Any] | None = None  # SkyPilot's SKYPILOT_CLUSTER_INFO (cloud, region, zone)


class NodeRecord(_Kept):
    version: int = 1
    started: float
    world_size: int = 1
    product: Product
    python: str
    platform: str
    packages: dict[str, str] = Field(default_factory=dict)  # sdk.core.lockfile's form: canonical name -> version
    packages_hash: str | None = None
    torch: TorchBuild = Field(default_factory=TorchBuild)
    image: Image = Field(default_factory=Image)
    data: list[DataFile] = Field(default_factory=list)
    previous: list[dict[str, Any]] = Field(default_factory=list)  # earlier starts of this run (a recovered node)


class RunRecord(_Kept):
    """Both parts; either may be missing (a run from before records, a node that never started)."""

    client: ClientRecord | None = None
    node: NodeRecord | None = None

    @property
    def rerun_of(self) -> str | None:
        return self.client.rerun_of.run_id if self.client and self.client.rerun_of else None

    def data_files(self) -> list[DataFile]:
        """Every data file: the node's hash where it read one (it read those bytes), the client's ETag beside it."""
        client = {f.key: f for f in (self.client.data if self.client else [])}
        out = []
        for item in self.node.data if self.node else []:
            seen = client.pop(item.key, None)
            extra = {k: getattr(seen, k) for k in ("etag", "version_id", "size") if seen and getattr(item, k) is None}
            out.append(item.model_copy(update={k: v for k, v in extra.items() if v is not None}))
        return out + list(client.values())


def product(root: Path | None = None) -> Product:
    """This product's version, and the git commit of the source tree it runs from (dirty or not), if any."""
    import sdk

    root = root or Path(__file__).resolve().parents[2]
    commit = dirty = None
    if (root / ".git").exists():
        try:
            head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                  timeout=10)
            changes = subprocess.run(["git", "-C", str(root), "status", "--porcelain"], capture_output=True,
                                     text=True, timeout=20)
            if head.returncode == 0:
                commit = head.stdout.strip()
                dirty = bool(changes.stdout.strip()) if changes.returncode == 0 else None
        except (OSError, subprocess.TimeoutExpired):
            pass
    return Product(version=sdk.__version__, git_commit=commit, git_dirty=dirty)


def python_version() -> str:
    return f"{platform.python_implementation()} {platform.python_version()}"


def platform_name() -> str:
    return f"{platform.system()} {platform.release()} {platform.machine()}"


def package_changes(before: dict[str, str], after: dict[str, str]) -> dict[str, dict[str, Any]]:
    """{added: {name: version}, removed: {name: version}, changed: {name: [before, after]}}: only what differs."""
    return {"added": {n: v for n, v in after.items() if n not in before},
            "removed": {n: v for n, v in before.items() if n not in after},
            "changed": {n: [before[n], after[n]] for n in before if n in after and before[n] != after[n]}}
