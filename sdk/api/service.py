"""The jobs of the API, over the runs they start: create (checked, idempotent), read, cancel; and the watcher that
writes down how each ended, so that a job reads the same after `finetune api` restarts."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sdk.api import jobs as requests
from sdk.api import progress
from sdk.api.config import ApiConfig
from sdk.api.errors import ApiError, invalid
from sdk.api.objects import FineTuningJob, JobError
from sdk.api.state import ApiState, JobRecord, new_id
from sdk.core.errors import FinetuneError
from sdk.store.runfolder import LAUNCH, RunFolder


class JobService:
    def __init__(self, config: ApiConfig, state: ApiState, *, on_succeeded: Callable[[JobRecord], None] | None = None):
        self.config = config
        self.state = state
        self.on_succeeded = on_succeeded or (lambda job: None)
        self._create = threading.Lock()  # one create at a time: a retried request finds the first one's job
        self._launching = ThreadPoolExecutor(max_workers=4, thread_name_prefix="finetune-api-launch")
        self._starting: set[str] = set()  # jobs whose launch is under way
        self._runs: dict[str, Any] = {}
        self._settling = threading.Lock()  # the watcher and a request may both see a run end: one writes it down

    # -- create

    def create(self, body: dict[str, Any], *, idempotency_key: str | None = None) -> FineTuningJob:
        digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        with self._create:
            if idempotency_key:
                seen = self.state.replayed(idempotency_key)
                if seen is not None:
                    if seen["request"] != digest:
                        raise ApiError(409, "Idempotency-Key was used with a different request",
                                       param="Idempotency-Key", code="idempotency_key_reused")
                    return self.view(self.state.job(seen["job_id"]))
            job = self._new_job(body)
            self.state.save_job(job)
            if idempotency_key:
                self.state.remember(idempotency_key, job_id=job.id, request_sha256=digest)
        self.pump()
        return self.view(job).model_copy(update={"status": "validating_files"})

    def _new_job(self, body: dict[str, Any]) -> JobRecord:
        requests.check_request(body, self.config)
        training = body.get("training_file")
        if not isinstance(training, str):
            raise invalid("training_file: the id of an uploaded file (files.create, purpose fine-tune)",
                          param="training_file")
        data = self.state.location(self.state.file(training, param="training_file").id)
        validation = body.get("validation_file")
        eval_data = self.state.location(self.state.file(validation, param="validation_file").id) if validation else None
        suffix = requests.check_suffix(body.get("suffix"))
        metadata = requests.check_metadata(body.get("metadata"))
        spec, entry, hyperparameters = requests.build_spec(self.config, body, data=data, eval_data=eval_data)
        backend = entry.backend or self.config.backend
        try:  # what the backend needs (an s3:// store for SkyPilot, secrets set here) before a job exists
            from sdk.backends import get_backend

            get_backend(backend).check(spec)
        except FinetuneError as exc:
            raise invalid(f"{body['model']}: {exc} (the API config's store and backend)", param="model",
                          code="invalid_job") from None
        self._check_rows(spec, {data: ("training_file", training), eval_data: ("validation_file", validation)})
        for param, ident in (("training_file", training), ("validation_file", validation)):
            if ident:
                self._check_grader_fields(spec, param, ident)
        job_id = new_id("ftjob")
        objective, _, inner = requests.read_method(body)
        method_type = objective.openai_method
        extra = {"grader": inner["grader"]} if "grader" in inner else {}
        return JobRecord(id=job_id, created_at=int(time.time()), model=body["model"], base=spec.model.id,
                         fine_tuned_model=f"ft:{body['model']}:{suffix or ''}:{job_id}", training_file=training,
                         validation_file=validation, suffix=suffix, seed=spec.train.seed, metadata=metadata,
                         hyperparameters=hyperparameters,
                         method={"type": method_type, method_type: {"hyperparameters": hyperparameters, **extra}},
                         spec=spec.model_dump(mode="json"), backend=backend)

    @staticmethod
    def _check_rows(spec: Any, files: dict[str | None, tuple[str, str | None]]) -> None:
        """Every row read as the run will read it; a bad one is a 400 naming the file id and the line."""
        from sdk.data.rows import DataError
        from sdk.runs import preflight_data

        try:
            preflight_data(spec)
        except DataError as exc:
            raise bad_rows(str(exc), files) from None

    def _check_grader_fields(self, spec: Any, param: str, ident: str) -> None:
        """Each row holds the fields its grader reads ({{item.answer}}): a row without one is a 400 naming its line."""
        from sdk.data.prompts import REFERENCE
        from sdk.objectives import objective_of

        wanted = objective_of(spec).reads_columns(spec.objective)
        if not wanted:
            return
        lines = self.state.content(ident).decode("utf-8-sig").split("\n")
        for number, line in enumerate(lines, start=1):
            row = json.loads(line) if line.strip() else None
            answered = isinstance(row, dict) and (row.get("messages") or [{}])[-1].get("role") == "assistant"
            for where, column in wanted if isinstance(row, dict) else ():
                if row.get(column) is None and not (column == REFERENCE and answered):
                    where = where.replace("objective.rewards[0]", "method.reinforcement.grader")
                    raise invalid(f"{param} {ident}: line {number}: no field {column!r}, which {where} reads "
                                  f"({{{{item.{column}}}}})", param=param, code=f"invalid_{param}")

    def pump(self) -> None:
        """Launch what waits, oldest first: a SkyPilot job at once (each gets its own cluster), a local one when fewer
        than `max_local_jobs` local jobs of this API are running (a second job on one GPU would run out of memory)."""
        with self.state.lock:
            waiting = sorted((j for j in self.state.jobs.values() if j.final is None and not j.launched
                              and j.id not in self._starting), key=lambda j: (j.created_at, j.id))
            busy = sum(1 for j in self.state.jobs.values() if j.backend == "local" and j.final is None
                       and (j.launched or j.id in self._starting))
            for job in waiting:
                if job.backend == "local":
                    if busy >= self.config.max_local_jobs:
                        continue
                    busy += 1
                self._starting.add(job.id)
                self._launching.submit(self._launch, job.id)

    def _launch(self, job_id: str) -> None:
        """Start the job's run (its id is the job's). A run folder already there was started before a restart: with
        its launch record it is adopted; without one the launch was cut short, and the job fails saying so."""
        from sdk.core.spec import FineTuneSpec
        from sdk.runs import submit

        job = self.state.job(job_id)
        error = None
        try:
            folder = RunFolder(self.state.store, job.id)
            if not folder.exists():
                submit(FineTuneSpec.model_validate(job.spec), backend=job.backend, check_data=False, run_id=job.id)
            elif folder.read_json(LAUNCH) is None:
                error = JobError(code="launch_failed", message="the API stopped while it launched this job, before the "
                                 "run started; create the job again")
        except FinetuneError as exc:
            error = JobError(code="launch_failed", message=str(exc))
        except Exception as exc:  # noqa: BLE001 - a job must end with its reason, whatever the backend raised
            error = JobError(code="launch_failed", message=f"{type(exc).__name__}: {exc}")
        with self.state.lock:  # a cancel may have landed while it launched: it stays cancelled
            self._starting.discard(job_id)
            current = self.state.job(job_id)
            if error is not None and current.final is None:
                self._end(current, "failed", error)
            elif error is None:
                self.state.save_job(current.model_copy(update={"launched": True}))
                if current.final == "cancelled":
                    self.run(current).cancel()

    # -- read

    def run(self, job: JobRecord) -> Any:
        """The job's Run, with its backend (read from the run folder's launch record) so a dead node is seen."""
        if job.id not in self._runs:
            from sdk.backends import get_backend
            from sdk.runs import Run

            folder = RunFolder(self.state.store, job.id)
            launch = folder.read_json(LAUNCH)
            if launch is None:
                return Run(folder.uri)  # not recorded yet: read it from the store alone, and ask again next time
            backend = get_backend(launch["backend"])
            info = backend.Info.model_validate(launch["info"])
            self._runs[job.id] = Run(folder.uri, backend=launch["backend"], info=info)
        return self._runs[job.id]

    def live_status(self, job: JobRecord) -> tuple[str, dict[str, Any]]:
        if job.final is not None:
            return job.final, {}
        if not job.launched:
            return "queued", {}
        status = self.run(job).status()
        return requests.JOB_STATUS[status.state], status.model_dump()

    def view(self, job: JobRecord) -> FineTuningJob:
        status, run_status = self.live_status(job)
        if job.final is None and status in ("succeeded", "failed", "cancelled"):  # ended since the watcher looked
            self.settle(job)
            job = self.state.job(job.id)
            status = job.final or status
        estimate = None
        if status == "running":
            estimate = progress.estimated_finish(self.run(job).metrics(), run_status)
        return FineTuningJob(
            id=job.id, created_at=job.created_at, finished_at=job.finished_at, model=job.model,
            fine_tuned_model=job.fine_tuned_model if status == "succeeded" else None, status=status,
            training_file=job.training_file, validation_file=job.validation_file, hyperparameters=job.hyperparameters,
            method=job.method, result_files=job.result_files, trained_tokens=job.trained_tokens, error=job.error,
            seed=job.seed, suffix=job.suffix, user_provided_suffix=job.suffix, metadata=job.metadata,
            estimated_finish=estimate)

    def listed(self, *, metadata: dict[str, str] | None = None) -> list[JobRecord]:
        jobs = sorted(self.state.jobs.values(), key=lambda j: (j.created_at, j.id), reverse=True)
        if metadata:
            jobs = [j for j in jobs if all((j.metadata or {}).get(k) == v for k, v in metadata.items())]
        return jobs

    def events(self, job: JobRecord) -> list[Any]:
        if not job.launched:
            return progress.events(job, [], {}, [])
        run = self.run(job)
        return progress.events(job, run.metrics(), run.folder.status(), run.folder.committed_checkpoints(),
                               self._objective_metrics(job))

    def checkpoints(self, job: JobRecord) -> list[Any]:
        if not job.launched:
            return []
        run = self.run(job)
        final = None
        if job.final == "succeeded":
            summary = run.summary()
            final = summary.steps if summary else max((r.get("step", 0) for r in run.metrics()), default=None)
        return progress.checkpoints(job, run.metrics(), run.folder.committed_checkpoints(), final)

    # -- cancel

    def cancel(self, job_id: str, *, wait: float = 30.0) -> FineTuningJob:
        job = self.state.job(job_id)
        if job.final == "cancelled":
            return self.view(job)
        if job.final is not None:
            raise invalid(f"job {job_id} already {job.final}; only a job that has not ended can be cancelled",
                          param="fine_tuning_job_id", code="job_not_cancellable")
        with self.state.lock:
            job = self.state.job(job_id)
            if not job.launched:  # waiting, or launching: _launch sees the cancel and stops the run it started
                self._end(job, "cancelled", None)
                return self.view(self.state.job(job_id))
        self.run(job).cancel()
        deadline = time.time() + wait
        while time.time() < deadline and self.live_status(self.state.job(job_id))[0] not in ("cancelled", "failed",
                                                                                              "succeeded"):
            time.sleep(0.5)
        self.settle(self.state.job(job_id))
        return self.view(self.state.job(job_id))

    # -- the watcher

    def settle(self, job: JobRecord) -> None:
        """Write down how a job ended, once: final state, finish time, error, result file, trained tokens."""
        with self._settling:
            job = self.state.job(job.id)
            if job.final is not None or not job.launched:
                return
            status, run_status = self.live_status(job)
            if status not in ("succeeded", "failed", "cancelled"):
                return
            error = None
            if status == "failed":
                why = run_status.get("error") or "the run failed"
                error = JobError(code="run_failed", message=f"{why} (on the API's machine: finetune logs {job.id})")
            self._end(job, status, error, finished=run_status.get("finished") or run_status.get("heartbeat"))

    def _end(self, job: JobRecord, status: str, error: JobError | None, *, finished: float | None = None) -> None:
        update: dict[str, Any] = {"final": status, "finished_at": int(finished or time.time()), "error": error}
        if job.launched or RunFolder(self.state.store, job.id).exists():
            rows = self.run(job).metrics()
            update["trained_tokens"] = progress.trained_tokens(rows)
            if status == "succeeded":
                update["result_files"] = [self._results_file(job, rows).id]
        ended = job.model_copy(update=update)
        self.state.save_job(ended)
        if status == "succeeded":
            self.on_succeeded(ended)

    @staticmethod
    def _objective_metrics(job: JobRecord) -> tuple[str, ...]:
        from sdk.core.spec import FineTuneSpec
        from sdk.objectives import objective_of

        return tuple(m.name for m in objective_of(FineTuneSpec.model_validate(job.spec)).metrics)

    def _results_file(self, job: JobRecord, rows: list[dict[str, Any]]) -> Any:
        text = progress.results_csv(rows, list(self._objective_metrics(job)))
        return self.state.add_file(filename="step_metrics.csv", purpose="fine-tune-results", data=text.encode(),
                                   suffix=".csv")

    def watch(self, stop: threading.Event, *, every: float = 2.0) -> None:
        """Every few seconds: write down the jobs that ended, then launch what waits for a free slot."""
        self.pump()  # after a restart: what was created but not yet started
        while not stop.wait(every):
            for job in list(self.state.jobs.values()):
                try:
                    self.settle(job)
                except Exception as exc:  # noqa: BLE001 - one unreadable run must not stop the others' watch
                    print(f"[finetune api] {job.id}: {type(exc).__name__}: {exc}", flush=True)
            self.pump()

    def close(self) -> None:
        self._launching.shutdown(wait=False, cancel_futures=True)


def bad_rows(message: str, files: dict[str | None, tuple[str, str | None]]) -> ApiError:
    """The data check's report as OpenAI words it: the file's id and the line of each bad example."""
    import re

    for location, (param, ident) in files.items():
        if not location or location not in message:
            continue
        lines = re.findall(re.escape(location) + r":(\d+): (.*)", message)
        if lines:
            detail = "; ".join(f"line {number}: {why}" for number, why in lines[:5])
            more = f" (and {len(lines) - 5} more)" if len(lines) > 5 else ""
            return invalid(f"{param} {ident}: {detail}{more}", param=param, code=f"invalid_{param}")
        return invalid(f"{param} {ident}: {message.replace(location, ident)}", param=param, code=f"invalid_{param}")
    return invalid(message, param="training_file", code="invalid_training_file")
