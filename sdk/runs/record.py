"""The client's part of the run record (sdk.core.record), written by `submit` after the spec and the shipped files
and before the backend starts anything; and the record read back (`Run.record()`, `finetune status --json`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from sdk.core.errors import FinetuneError
from sdk.core.record import (
    CLIENT_RECORD,
    LOCK,
    NODE_RECORD,
    ClientRecord,
    DataFile,
    FolderFiles,
    NodeRecord,
    RecipeGiven,
    RerunOf,
    RunRecord,
    platform_name,
    product,
    python_version,
)


class Provenance(BaseModel):
    """What submit cannot read from the spec: the recipe as given, the run a rerun reproduces, the lock it asks for."""

    recipe: RecipeGiven | None = None
    rerun: RerunOf | None = None
    lock: dict[str, Any] | None = None  # lock.json: {packages, torch, from_run}, for a node setup that installs it


def recipe_given(name: str, overrides: list[str] | None = None) -> RecipeGiven:
    """The recipe as the user named it (a file or a shipped recipe), its text and the `--set` overrides, unresolved."""
    from sdk.core.recipes import resolve_recipe

    try:
        file = resolve_recipe(name)
        text = file.read_text(encoding="utf-8")
    except (FinetuneError, OSError, UnicodeDecodeError):  # load_recipe has refused it already, or read it
        return RecipeGiven(name=name, overrides=list(overrides or []))
    return RecipeGiven(name=name, path=str(Path(file).resolve()), text=text, overrides=list(overrides or []))


def _data(spec: Any) -> list[DataFile]:
    """Each source as the client sees it: a local file's sha256, an S3 object's ETag and VersionId (its bytes are
    hashed by the node, which reads them); a source this machine cannot read is recorded with why."""
    from sdk.data.fingerprint import fingerprint, spec_sources

    out = []
    for field, source, declared in spec_sources(spec):
        try:
            out += fingerprint(field, source, declared=declared)
        except (FinetuneError, OSError) as exc:
            out.append(DataFile(field=field, source=source, kind="s3" if source.startswith("s3://") else "missing",
                                unread=str(exc)))
    return out


def _folders(spec: Any) -> list[FolderFiles]:
    """Each folder source's file list, so that a rerun sees a file added to it or removed from it."""
    from sdk.data.fingerprint import folder_listing, spec_sources

    out = []
    for field, source, declared in spec_sources(spec):
        try:
            names = folder_listing(source, declared)
        except OSError:
            names = None
        if names is not None:
            out.append(FolderFiles(field=field, source=source, files=names))
    return out


def _shipped(folder: Any) -> list[DataFile]:
    from sdk.store.runfolder import FILES_INDEX

    index = folder.read_json(FILES_INDEX) or {}
    return [DataFile(field=f"files:{name}", source=entry.get("path") or name, kind="file", path=entry.get("path"),
                     sha256=entry["sha256"]) for name, entry in index.items()]


def client_record(spec: Any, *, backend: str, given: Provenance | None = None) -> ClientRecord:
    """What the client knows before the run folder exists. Hashing the data takes time, and a sweep driver killed
    between the folder's creation and the node's start leaves a folder whose node never reports: that stretch must
    stay short, so this runs first."""
    given = given or Provenance()
    return ClientRecord(submitted=time.time(), backend=backend, product=product(), python=python_version(),
                        platform=platform_name(), recipe=given.recipe, data=_data(spec), folders=_folders(spec),
                        rerun_of=given.rerun)


def write_client_record(spec: Any, folder: Any, *, backend: str, given: Provenance | None = None,
                        record: ClientRecord | None = None) -> ClientRecord:
    """record/client.json (`record`, else made now; with the files shipped into the folder) and, for a rerun onto
    a cluster, lock.json, into a new run folder."""
    given = given or Provenance()
    record = record or client_record(spec, backend=backend, given=given)
    record = record.model_copy(update={"files": _shipped(folder)})
    folder.write_json(CLIENT_RECORD, record.model_dump(mode="json", exclude_none=True))
    if given.lock is not None:
        folder.write_json(LOCK, given.lock)
    return record


def read_record(folder: Any) -> RunRecord | None:
    """Both parts as stored; None for a run from before records (neither part exists). A part with a wrong field
    is a StoreError naming its file and the field."""
    client, node = folder.read_model(CLIENT_RECORD, ClientRecord), folder.read_model(NODE_RECORD, NodeRecord)
    if client is None and node is None:
        return None
    return RunRecord(client=client, node=node)
