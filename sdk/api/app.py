"""The HTTP surface: OpenAI's files, fine-tuning jobs and models routes, and chat / completions forwarded to the
engine that serves the model asked for. Every route but /health wants a bearer key (sdk.api.keys); every refusal is
OpenAI's error body (sdk.api.errors)."""

from __future__ import annotations

import json
from typing import Any

from sdk.api.errors import ApiError, invalid
from sdk.api.objects import page


def create_app(service: Any, inference: Any, keys: Any) -> Any:
    import contextlib

    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> Any:
        # Here, not after the server returns: uvicorn re-raises the SIGTERM it caught once it has shut down
        yield
        service.close()
        inference.close()

    app = FastAPI(title="finetune api", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)

    add_error_handlers(app)

    @app.middleware("http")
    async def require_key(request: Request, call_next: Any) -> Any:
        if request.url.path != "/health":
            header = request.headers.get("authorization", "")
            key = header[7:].strip() if header.lower().startswith("bearer ") else None
            if not keys.valid(key):
                message = ("Incorrect API key provided" if key else "You didn't provide an API key. Provide it as "
                           "'Authorization: Bearer KEY' (finetune api keys --create makes one)")
                return JSONResponse(ApiError(401, message, code="invalid_api_key").body(), status_code=401)
        return await call_next(request)

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    from sdk.api.routes import add_file_routes, add_inference_routes, add_job_routes

    add_file_routes(app, service)
    add_job_routes(app, service)
    add_inference_routes(app, inference)
    return app


def add_error_handlers(app: Any) -> None:
    """Every refusal in OpenAI's error body: the API's own, unknown routes and methods, bad query values, and what
    nobody foresaw (whose details go to the log, not the client)."""
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(404)
    async def no_route(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(ApiError(404, f"Invalid URL ({request.method} {request.url.path})",
                                     code="unknown_url").body(), status_code=404)

    @app.exception_handler(405)
    async def wrong_method(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(ApiError(405, f"Invalid method for {request.url.path}: {request.method}",
                                     code="method_not_allowed").body(), status_code=405)

    @app.exception_handler(RequestValidationError)
    async def bad_parameter(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        return JSONResponse(ApiError(400, f"{param or 'request'}: {first.get('msg', 'invalid')}", param=param,
                                     code="invalid_request").body(), status_code=400)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # the details go to the operator's log, not to the client
        print(f"[finetune api] {request.method} {request.url.path}: {type(exc).__name__}: {exc}", flush=True)
        return JSONResponse(ApiError(500, "The server had an error while processing your request; its log says why",
                                     code="server_error").body(), status_code=500)


async def json_body(request: Any) -> dict[str, Any]:
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError as exc:
        raise invalid(f"the request body is not JSON: {exc}", param=None, code="invalid_json") from None
    if not isinstance(body, dict):
        raise invalid("the request body is a JSON object", param=None, code="invalid_json")
    return body


def paged(items: list[Any], after: str | None, limit: int, *, most: int = 100, dump: bool = True) -> dict[str, Any]:
    """A page of `items` (newest first) as OpenAI's cursor pagination gives it."""
    if not 1 <= limit <= most:
        raise invalid(f"limit: between 1 and {most}", param="limit")
    result = page(items, after=after, limit=limit)
    return result.model_dump(mode="json") if dump else {**result.model_dump(exclude={"data"}), "data": result.data}
