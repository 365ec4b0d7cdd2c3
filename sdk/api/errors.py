"""Errors as OpenAI's API answers them: an HTTP status and `{"error": {message, type, param, code}}`, the body the
official client turns into `openai.BadRequestError`, `AuthenticationError`, `NotFoundError` and so on."""

from __future__ import annotations

from typing import Any

from sdk.core.errors import FinetuneError

_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
          409: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_exceeded",
          500: "server_error", 503: "server_error"}


class ApiError(FinetuneError):
    """A request the API refuses: what is wrong, the request parameter it is about, and OpenAI's code for it."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": _TYPES.get(self.status, "invalid_request_error"),
                          "param": self.param, "code": self.code}}


def not_found(kind: str, ident: str, *, param: str | None = None) -> ApiError:
    code = f"{kind.replace(' ', '_').replace('-', '_')}_not_found"
    return ApiError(404, f"No such {kind}: {ident}", param=param, code=code)


def invalid(message: str, *, param: str | None, code: str = "invalid_request") -> ApiError:
    return ApiError(400, message, param=param, code=code)
