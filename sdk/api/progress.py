"""What a job's run folder says, in OpenAI's words: its events (newest first), its checkpoints, the metrics CSV of
`result_files`, trained tokens and the estimated finish."""

from __future__ import annotations

import csv
import hashlib
import io
from typing import Any

from sdk.api.objects import JobCheckpoint, JobEvent

CSV_COLUMNS = {"step": "step", "loss": "train_loss", "mean_token_accuracy": "train_accuracy", "eval_loss": "valid_loss",
               "eval_mean_token_accuracy": "valid_mean_token_accuracy"}


def _event_id(job_id: str, what: str) -> str:
    return "ftevent-" + hashlib.sha256(f"{job_id}/{what}".encode()).hexdigest()[:24]


def step_metrics(row: dict[str, Any]) -> dict[str, float]:
    """A metrics.jsonl row in the names OpenAI's events and checkpoints use."""
    out = {"step": row["step"]} if "step" in row else {}
    for name, value in row.items():
        if name in CSV_COLUMNS and name != "step" and isinstance(value, (int, float)):
            out[CSV_COLUMNS[name].replace("train_accuracy", "train_mean_token_accuracy")] = value
    return out


def events(job: Any, rows: list[dict[str, Any]], status: dict[str, Any], checkpoints: list[int],
           extra: tuple[str, ...] = ()) -> list[JobEvent]:
    """Every event of a job, newest first; ids are stable, so `after` pages stay put while the job runs. `extra`: the
    objective's own logged metrics (reward …), carried in the step events' data and message."""
    out = [JobEvent(id=_event_id(job.id, "created"), created_at=job.created_at,
                    message=f"Created fine-tuning job: {job.id}"),
           JobEvent(id=_event_id(job.id, "validating"), created_at=job.created_at,
                    message=f"Validating training file: {job.training_file}")]
    if job.launched:
        out.append(JobEvent(id=_event_id(job.id, "queued"), created_at=job.created_at,
                            message="Files validated, moving job to queued state"))
    trained = [r for r in rows if "loss" in r and "step" in r]
    total = status.get("total_steps")
    if trained:
        out.append(JobEvent(id=_event_id(job.id, "started"), created_at=int(trained[0].get("time", job.created_at)),
                            message="Fine-tuning job started"))
    for row in _by_step(rows):
        own = {n: row[n] for n in extra if n not in CSV_COLUMNS and isinstance(row.get(n), (int, float))}
        data = {**step_metrics(row), **own, **({"total_steps": total} if total else {})}
        said = ([f"training loss={row['loss']:.4f}"] if "loss" in row else []) + \
            ([f"validation loss={row['eval_loss']:.4f}"] if "eval_loss" in row else []) + \
            [f"{name}={value:.4f}" for name, value in own.items()]
        out.append(JobEvent(id=_event_id(job.id, f"step/{row['step']}"), type="metrics", data=data,
                            created_at=int(row.get("time", job.created_at)),
                            message=f"Step {row['step']}{f'/{total}' if total else ''}: {', '.join(said)}"))
    for step in checkpoints:
        out.append(JobEvent(id=_event_id(job.id, f"checkpoint/{step}"), created_at=_time_at(rows, step, job.created_at),
                            message=f"Checkpoint created at step {step}"))
    out += _ending(job)
    order = {event.id: index for index, event in enumerate(out)}  # same second: the order they happened in
    return sorted(out, key=lambda e: (e.created_at, order[e.id]), reverse=True)


def _by_step(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per step that trained or evaluated: a step's training and validation numbers in one event."""
    merged: dict[int, dict[str, Any]] = {}
    for row in rows:
        if "step" in row and {"loss", "eval_loss"} & set(row):
            merged.setdefault(row["step"], {}).update(row)
    return [merged[step] for step in sorted(merged)]


def _ending(job: Any) -> list[JobEvent]:
    if job.final is None:
        return []
    at = job.finished_at or job.created_at
    if job.final == "succeeded":
        return [JobEvent(id=_event_id(job.id, "model"), created_at=at,
                         message=f"New fine-tuned model created: {job.fine_tuned_model}"),
                JobEvent(id=_event_id(job.id, "done"), created_at=at, message="The job has successfully completed")]
    if job.final == "cancelled":
        return [JobEvent(id=_event_id(job.id, "cancelled"), created_at=at, message="Fine-tuning job cancelled")]
    why = job.error.message if job.error else "the run failed"
    return [JobEvent(id=_event_id(job.id, "failed"), created_at=at, level="error", message=f"Job failed: {why}")]


def _time_at(rows: list[dict[str, Any]], step: int, default: int) -> int:
    times = [r["time"] for r in rows if r.get("step") == step and "time" in r]
    return int(times[-1]) if times else default


def checkpoints(job: Any, rows: list[dict[str, Any]], committed: list[int], final_step: int | None
                ) -> list[JobCheckpoint]:
    """The run's committed checkpoints and, once it succeeded, its adapter as the last one; newest first."""
    steps = sorted(set(committed) | ({final_step} if final_step else set()), reverse=True)
    out = []
    for step in steps:
        at_step = [r for r in rows if r.get("step") == step]
        metrics: dict[str, float] = {}
        for row in at_step:
            metrics.update(step_metrics(row))
        metrics.setdefault("step", step)
        name = job.fine_tuned_model if step == final_step else f"{job.fine_tuned_model}:ckpt-step-{step}"
        out.append(JobCheckpoint(id="ftckpt-" + hashlib.sha256(f"{job.id}/{step}".encode()).hexdigest()[:24],
                                 created_at=_time_at(rows, step, job.created_at), fine_tuned_model_checkpoint=name,
                                 fine_tuning_job_id=job.id, metrics=metrics, step_number=step))
    return out


def results_csv(rows: list[dict[str, Any]], extra: list[str]) -> str:
    """OpenAI's step metrics CSV (step, train_loss, train_accuracy, valid_loss, valid_mean_token_accuracy), with the
    objective's own logged metrics (reward, rewards/accuracies …) as further columns."""
    by_step: dict[int, dict[str, Any]] = {}
    for row in rows:
        if "step" in row:
            by_step.setdefault(row["step"], {}).update(row)
    extra = [name for name in extra if name not in CSV_COLUMNS and any(name in r for r in by_step.values())]
    columns = [*CSV_COLUMNS.values(), *extra]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    names = {**{v: k for k, v in CSV_COLUMNS.items()}, **{name: name for name in extra}}
    for step in sorted(by_step):
        if not any(names[c] in by_step[step] for c in columns[1:]):
            continue  # a row of numbers taken before training (the base's general-text loss)
        writer.writerow(["" if by_step[step].get(names[c]) is None else by_step[step][names[c]] for c in columns])
    return buffer.getvalue()


def trained_tokens(rows: list[dict[str, Any]]) -> int | None:
    seen = [r.get("tokens_seen") or r.get("num_input_tokens_seen") for r in rows]
    counts = [int(v) for v in seen if isinstance(v, (int, float))]
    return max(counts) if counts else None


def estimated_finish(rows: list[dict[str, Any]], status: dict[str, Any]) -> int | None:
    """From the pace of the logged steps so far: when the last step should land."""
    timed = [(r["step"], r["time"]) for r in rows if "loss" in r and "time" in r and "step" in r]
    total = status.get("total_steps")
    if len(timed) < 2 or not total or timed[-1][0] <= timed[0][0]:
        return None
    pace = (timed[-1][1] - timed[0][1]) / (timed[-1][0] - timed[0][0])
    return int(timed[-1][1] + pace * max(total - timed[-1][0], 0))
