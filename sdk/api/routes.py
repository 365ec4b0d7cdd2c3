"""The routes of sdk.api.app, by resource: files, fine-tuning jobs, models and inference. FastAPI reads the
parameters' annotations at runtime, so its types are imported at module level here (this module loads with the app)."""

from typing import Any

from fastapi import File, Form, Request, UploadFile
from starlette.concurrency import run_in_threadpool

from sdk.api.app import json_body, paged
from sdk.api.errors import invalid


def add_file_routes(app: Any, service: Any) -> None:
    from fastapi.responses import Response

    from sdk.api.files import check_upload

    state = service.state

    @app.post("/v1/files")
    async def upload(file: UploadFile = File(None), purpose: str = Form(None)) -> dict[str, Any]:
        if file is None:
            raise invalid("file: a multipart file field", param="file")
        if purpose != "fine-tune":
            raise invalid(f"purpose: {purpose!r}; this API takes 'fine-tune' files", param="purpose")
        data = await file.read()
        name = file.filename or "upload.jsonl"
        await run_in_threadpool(check_upload, data, filename=name)
        record = await run_in_threadpool(lambda: state.add_file(filename=name, purpose=purpose, data=data))
        return _file(record).model_dump(mode="json")

    @app.get("/v1/files")
    def list_files(purpose: str | None = None, after: str | None = None, limit: int = 10000,
                   order: str = "desc") -> dict[str, Any]:
        files = sorted(state.files.values(), key=lambda f: (f.created_at, f.id), reverse=order != "asc")
        return paged([_file(f) for f in files if purpose is None or f.purpose == purpose], after, limit, most=10000)

    @app.get("/v1/files/{file_id}")
    def retrieve_file(file_id: str) -> dict[str, Any]:
        return _file(state.file(file_id)).model_dump(mode="json")

    @app.get("/v1/files/{file_id}/content")
    def file_content(file_id: str) -> Any:
        record = state.file(file_id)
        kind = "text/csv" if record.key.endswith(".csv") else "application/jsonl"
        return Response(state.content(file_id), media_type=kind)

    @app.delete("/v1/files/{file_id}")
    def delete_file(file_id: str) -> dict[str, Any]:
        state.delete_file(file_id)
        return {"id": file_id, "object": "file", "deleted": True}


def _file(record: Any) -> Any:
    from sdk.api.objects import FileObject

    return FileObject.model_validate(record.model_dump(include=set(FileObject.model_fields)))


def add_job_routes(app: Any, service: Any) -> None:
    @app.post("/v1/fine_tuning/jobs")
    async def create_job(request: Request) -> dict[str, Any]:
        body = await json_body(request)
        key = request.headers.get("idempotency-key")
        job = await run_in_threadpool(service.create, body, idempotency_key=key)
        return job.model_dump(mode="json")

    @app.get("/v1/fine_tuning/jobs")
    def list_jobs(request: Request, after: str | None = None, limit: int = 20) -> dict[str, Any]:
        metadata = {k[len("metadata["):-1]: v for k, v in request.query_params.items()
                    if k.startswith("metadata[") and k.endswith("]")}
        listed = paged(service.listed(metadata=metadata or None), after, limit, dump=False)
        return {**listed, "data": [service.view(j).model_dump(mode="json") for j in listed["data"]]}

    @app.get("/v1/fine_tuning/jobs/{job_id}")
    def retrieve_job(job_id: str) -> dict[str, Any]:
        return service.view(service.state.job(job_id)).model_dump(mode="json")

    @app.post("/v1/fine_tuning/jobs/{job_id}/cancel")
    def cancel_job(job_id: str) -> dict[str, Any]:
        return service.cancel(job_id).model_dump(mode="json")

    @app.get("/v1/fine_tuning/jobs/{job_id}/events")
    def job_events(job_id: str, after: str | None = None, limit: int = 20) -> dict[str, Any]:
        return paged(service.events(service.state.job(job_id)), after, limit)

    @app.get("/v1/fine_tuning/jobs/{job_id}/checkpoints")
    def job_checkpoints(job_id: str, after: str | None = None, limit: int = 10) -> dict[str, Any]:
        return paged(service.checkpoints(service.state.job(job_id)), after, limit)


def add_inference_routes(app: Any, inference: Any) -> None:
    @app.get("/v1/models")
    def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [m.model_dump(mode="json") for m in inference.models()]}

    @app.get("/v1/models/{model:path}")
    def retrieve_model(model: str) -> dict[str, Any]:
        return inference.model(model).model_dump(mode="json")

    @app.delete("/v1/models/{model:path}")
    def delete_model(model: str) -> dict[str, Any]:
        return inference.delete(model)

    async def forward(request: Request, route: str) -> Any:
        body = await json_body(request)
        asked = body.get("model")
        engine, target = await run_in_threadpool(inference.target, asked)
        return await relay(engine, route, {**body, "model": target}, asked)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        return await forward(request, "/v1/chat/completions")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        return await forward(request, "/v1/completions")


async def relay(engine: Any, route: str, body: dict[str, Any], asked: str) -> Any:
    """The engine's answer, streamed or whole, with `model` written as the client asked for it."""
    import httpx
    from fastapi.responses import Response, StreamingResponse

    from sdk.api.inference import rewrite_model

    headers = {"Authorization": f"Bearer {engine.server.api_key}"}
    client = httpx.AsyncClient(base_url=engine.server.url, timeout=httpx.Timeout(600, connect=10))
    request = client.build_request("POST", route, json=body, headers=headers)
    reply = await client.send(request, stream=True)
    if not body.get("stream") or reply.status_code >= 300:
        payload = await reply.aread()
        await reply.aclose()
        await client.aclose()
        return Response(rewrite_model(payload, asked), status_code=reply.status_code, media_type="application/json")

    async def lines() -> Any:
        try:
            async for line in reply.aiter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    line = "data: " + rewrite_model(line[6:].encode(), asked).decode()
                yield (line + "\n").encode()
        finally:
            await reply.aclose()
            await client.aclose()

    return StreamingResponse(lines(), media_type="text/event-stream")

