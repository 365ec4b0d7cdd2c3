"""What the API keeps, in the store beside the jobs' run folders, so that a restarted `finetune api` (or one on
another machine) loses nothing:

    <store>/api/files/<file id>.json      the file object (and its sha256)
    <store>/api/files/<file id>.<ext>     its bytes (.jsonl uploads, .csv results): a run's data.source
    <store>/api/jobs/<job id>.json        the job: the request as resolved, its ft: name, how it ended
    <store>/api/idempotency/<sha256>.json the job an Idempotency-Key created
    <store>/<job id>/                     the job's run folder (the run id is the job id)

One `finetune api` writes a store at a time; the records are read once at start and written through."""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
import time
from typing import Any

from pydantic import BaseModel, ConfigDict

from sdk.api.errors import not_found
from sdk.api.objects import FileObject, JobError, JobStatus
from sdk.store import open_store

PREFIX = "api"


def new_id(prefix: str) -> str:
    """OpenAI-like ids: file-…, ftjob-… (24 characters of [a-zA-Z0-9])."""
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    return f"{prefix}-{''.join(secrets.choice(alphabet) for _ in range(24))}"


class FileRecord(FileObject):
    model_config = ConfigDict(extra="allow")
    sha256: str
    key: str  # where its bytes are, relative to the store


class JobRecord(BaseModel):
    """A job as the API keeps it; its live state is read from the run folder (sdk.api.jobs)."""

    model_config = ConfigDict(extra="allow")  # a newer API's fields survive an older one's rewrite
    id: str
    created_at: int
    model: str  # as the client named it
    base: str  # the open model it trains (the spec's model.id)
    fine_tuned_model: str
    training_file: str
    validation_file: str | None = None
    suffix: str | None = None
    seed: int
    metadata: dict[str, str] | None = None
    hyperparameters: dict[str, Any]
    method: dict[str, Any]
    spec: dict[str, Any]  # the run's spec, as submitted
    backend: str
    launched: bool = False  # submit came back: the run folder and its node exist
    final: JobStatus | None = None  # set once the job ended; never changes after
    finished_at: int | None = None
    error: JobError | None = None
    result_files: list[str] = []
    trained_tokens: int | None = None
    model_deleted: bool = False


class ApiState:
    def __init__(self, store_uri: str):
        self.store = open_store(store_uri)
        self.lock = threading.RLock()
        self.files: dict[str, FileRecord] = {}
        self.jobs: dict[str, JobRecord] = {}
        for key in self.store.list(f"{PREFIX}/files/"):
            if key.endswith(".json"):
                record = FileRecord.model_validate_json(self.store.get_bytes(key))
                self.files[record.id] = record
        for key in self.store.list(f"{PREFIX}/jobs/"):
            if key.endswith(".json"):
                job = JobRecord.model_validate_json(self.store.get_bytes(key))
                self.jobs[job.id] = job

    # -- files

    def add_file(self, *, filename: str, purpose: str, data: bytes, suffix: str = ".jsonl") -> FileRecord:
        ident = new_id("file")
        key = f"{PREFIX}/files/{ident}{suffix}"
        self.store.put_bytes(key, data)  # the bytes first: a record never points at nothing
        record = FileRecord(id=ident, bytes=len(data), created_at=int(time.time()), filename=filename, purpose=purpose,
                            sha256=hashlib.sha256(data).hexdigest(), key=key)
        self.store.put_bytes(f"{PREFIX}/files/{ident}.json", record.model_dump_json(indent=1).encode())
        with self.lock:
            self.files[ident] = record
        return record

    def file(self, ident: str, *, param: str | None = None) -> FileRecord:
        record = self.files.get(ident)
        if record is None:
            raise not_found("file", ident, param=param)
        return record

    def content(self, ident: str) -> bytes:
        return self.store.get_bytes(self.file(ident).key)

    def location(self, ident: str) -> str:
        """The file's bytes as a data source a node reads: a local path or an s3:// URI."""
        return self.store.url(self.file(ident).key)

    def delete_file(self, ident: str) -> None:
        record = self.file(ident)
        with self.lock:
            self.files.pop(ident, None)
        self.store.delete_prefix(f"{PREFIX}/files/{ident}.json")
        self.store.delete_prefix(record.key)

    # -- jobs

    def save_job(self, job: JobRecord) -> None:
        with self.lock:
            self.jobs[job.id] = job
            self.store.put_bytes(f"{PREFIX}/jobs/{job.id}.json", job.model_dump_json(indent=1).encode())

    def job(self, ident: str) -> JobRecord:
        job = self.jobs.get(ident)
        if job is None:
            raise not_found("fine-tuning job", ident, param="fine_tuning_job_id")
        return job

    # -- idempotency

    @staticmethod
    def _idempotency_key(key: str) -> str:
        return f"{PREFIX}/idempotency/{hashlib.sha256(key.encode()).hexdigest()}.json"

    def replayed(self, key: str) -> dict[str, Any] | None:
        stored = self._idempotency_key(key)
        return json.loads(self.store.get_bytes(stored)) if self.store.exists(stored) else None

    def remember(self, key: str, *, job_id: str, request_sha256: str) -> None:
        record = {"job_id": job_id, "request": request_sha256}
        self.store.put_bytes(self._idempotency_key(key), json.dumps(record).encode())
