"""The objects the API answers with, shaped as OpenAI's fine-tuning and files references shape them."""

from __future__ import annotations

from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, Field

JobStatus = Literal["validating_files", "queued", "running", "succeeded", "failed", "cancelled"]
FilePurpose = Literal["fine-tune", "fine-tune-results"]
T = TypeVar("T")


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: FilePurpose
    status: Literal["processed"] = "processed"  # a file the API kept was checked on upload
    expires_at: int | None = None


class JobError(BaseModel):
    code: str
    message: str
    param: str | None = None


class FineTuningJob(BaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    finished_at: int | None = None
    model: str
    fine_tuned_model: str | None = None
    organization_id: str = "org-finetune"
    status: JobStatus
    training_file: str
    validation_file: str | None = None
    hyperparameters: dict[str, Any]
    method: dict[str, Any]
    result_files: list[str] = Field(default_factory=list)
    trained_tokens: int | None = None
    error: JobError | None = None
    seed: int
    suffix: str | None = None
    metadata: dict[str, str] | None = None
    estimated_finish: int | None = None
    integrations: list[Any] | None = None
    user_provided_suffix: str | None = None


class JobEvent(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: Literal["info", "warn", "error"] = "info"
    message: str
    type: Literal["message", "metrics"] = "message"
    data: dict[str, Any] | None = None


class JobCheckpoint(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    metrics: dict[str, float]
    step_number: int


class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class Page(BaseModel, Generic[T]):
    """A list answer; `has_more` with cursor pagination (`after` = the last id a page held)."""

    object: Literal["list"] = "list"
    data: list[T]
    has_more: bool = False
    first_id: str | None = None
    last_id: str | None = None


def page(items: list[Any], *, after: str | None, limit: int, id_of=lambda item: item.id) -> Page:
    """Items (newest first) after the one whose id is `after`, at most `limit` of them."""
    start = 0
    if after is not None:
        ids = [id_of(item) for item in items]
        start = ids.index(after) + 1 if after in ids else len(items)
    chosen = items[start:start + limit]
    return Page(data=chosen, has_more=start + limit < len(items),
                first_id=id_of(chosen[0]) if chosen else None, last_id=id_of(chosen[-1]) if chosen else None)
