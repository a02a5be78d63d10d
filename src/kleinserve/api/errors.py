"""API errors: one exception type, rendered in the shape of the dialect the path belongs to: OpenAI's
`{"error": {"message", "type", "param", "code"}}`, or fal's `{"detail", "error_type"}` with an
`x-fal-error-type` header (a bad field is a 422 whose detail lists `{"loc", "msg", "type"}`, as fal's), or
Black Forest Labs' (FastAPI's) `{"detail"}` on its paths (the same 422 for a bad field), or Replicate's
problem+json `{"title", "detail", "status"}` (a bad input: a 422 with `invalid_fields`).

Service exceptions (unknown model, queue full, ...) map to statuses here, so every route and middleware
answers the same way.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException

from kleinserve.api.request_ids import new_request_id
from kleinserve.errors import (
    DatabaseUnavailable,
    GenerationFailed,
    InvalidRequest,
    KleinserveError,
    ModelNotReady,
    ModelNotServed,
    QueueFull,
    ResultGone,
    ShuttingDown,
    StorageFull,
    StoreUnavailable,
)

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable",
    507: "server_error",
}
ERROR_CODES = {413: "payload_too_large", 415: "unsupported_media_type", 429: "rate_limit_exceeded"}
FAL_PATH_PREFIXES = ("/fal-ai/", "/queue/")
BFL_PATHS = ("/v1/flux-", "/v1/get_result")  # gate errors there read as BFL's (the bfl dialect)
GATEWAY_PATHS = ("/v1/ai/",)  # the AI Gateway's: @ai-sdk/gateway picks its error class by `type`
GATEWAY_TYPES = {429: "rate_limit_exceeded", 500: "internal_server_error"}  # where they differ from OpenAI's
REPLICATE_PATHS = ("/v1/predictions", "/v1/files", "/v1/streams/", "/v1/models/black-forest-labs/flux-2-")


class OpenAIErrorDetail(BaseModel):
    model_config = ConfigDict(extra="allow")
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIError(BaseModel):
    """The error body on every path but fal's (ApiError.body())."""

    error: OpenAIErrorDetail


class FalError(BaseModel):
    """The error body on fal's paths (ApiError.fal_body())."""

    model_config = ConfigDict(extra="allow")
    detail: str | list[dict[str, Any]]
    error_type: str | None = None


def is_fal_path(path: str) -> bool:
    return path.startswith(FAL_PATH_PREFIXES)


def is_replicate_path(path: str) -> bool:
    """Replicate's routes: predictions, files, a klein model's page, and any model's predictions."""
    predictions = path.startswith("/v1/models/") and path.rstrip("/").endswith("/predictions")
    return path.startswith(REPLICATE_PATHS) or predictions


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: int | None = None,
        reason: str | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason or message  # without the field name, where the error's shape names it apart
        self.param = param
        self.code = code or ERROR_CODES.get(status)
        self.retry_after = retry_after

    def body(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": ERROR_TYPES.get(
                    self.status, "invalid_request_error" if self.status < 500 else "server_error"
                ),
                "param": self.param,
                "code": self.code,
            }
        }

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {}

    def fal_body(self) -> tuple[int, dict]:
        if self.status == 400 and self.param:
            parts = self.param.replace("]", "").replace(".", "[").split("[")  # loras[1].path: loras, 1, path
            loc = ["body", *(int(p) if p.isdigit() else p for p in parts)]
            detail = [{"loc": loc, "msg": self.reason, "type": "value_error"}]
            return 422, {"detail": detail, "error_type": "validation_error", "message": self.message}
        error_type = self.code or self.body()["error"]["type"]
        # `message` too: @fal-ai/client shows body.message (else only the HTTP status text)
        return self.status, {"detail": self.message, "error_type": error_type, "message": self.message}

    def bfl_body(self) -> tuple[int, dict]:
        """BFL's shape: a field's error as a 422 whose msg names the field and the fix."""
        if self.param and self.status in (400, 422):
            loc = ["body", *self.param.split(".")]
            return 422, {"detail": [{"loc": loc, "msg": self.message, "type": "value_error"}]}
        return self.status, {"detail": self.message}

    def replicate_body(self) -> tuple[int, dict]:
        """Replicate's problem+json; a field's error: a 422 "Input validation failed" with invalid_fields."""
        if self.param and self.status in (400, 422):
            detail = f"- {self.message}"
            field = {"type": "invalid", "field": self.param, "description": self.reason}
            return 422, {"title": "Input validation failed", "detail": detail, "status": 422,
                         "invalid_fields": [field]}  # fmt: skip
        return self.status, {"title": _phrase(self.status), "detail": self.message, "status": self.status}

    def response(self, path: str = "") -> JSONResponse:
        if is_replicate_path(path):
            status, body = self.replicate_body()
            return JSONResponse(body, status_code=status, headers=self.headers())
        if path.startswith(BFL_PATHS):
            status, body = self.bfl_body()
            return JSONResponse(body, status_code=status, headers=self.headers())
        if is_fal_path(path):
            status, body = self.fal_body()
            headers = {**self.headers(), "x-fal-error-type": body["error_type"]}
            return JSONResponse(body, status_code=status, headers=headers)
        body = self.body()
        if path.startswith(GATEWAY_PATHS) and self.status in GATEWAY_TYPES:
            body["error"]["type"] = GATEWAY_TYPES[self.status]
        return JSONResponse(body, status_code=self.status, headers=self.headers())


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def invalid(param: str, message: str) -> ApiError:
    return ApiError(400, f"{param}: {message}", param=param, reason=message)


def from_service_error(exc: KleinserveError) -> ApiError:
    if isinstance(exc, ModelNotServed):
        return ApiError(404, str(exc), param="model", code="model_not_found")
    if isinstance(exc, QueueFull):
        return ApiError(503, str(exc), code="queue_full", retry_after=exc.retry_after)
    if isinstance(exc, ShuttingDown):
        return ApiError(503, str(exc), code="shutting_down", retry_after=exc.retry_after)
    if isinstance(exc, StorageFull):
        return ApiError(507, str(exc), code="storage_full", retry_after=exc.retry_after)
    if isinstance(exc, DatabaseUnavailable):
        message = f"the job database is unreachable; nothing was recorded, retry in {exc.retry_after} s"
        return ApiError(503, message, code="database_unavailable", retry_after=exc.retry_after)
    if isinstance(exc, StoreUnavailable):
        message = f"the image store is unreachable; retry in {exc.retry_after} s"
        return ApiError(503, message, code="store_unavailable", retry_after=exc.retry_after)
    if isinstance(exc, ModelNotReady):
        return ApiError(503, str(exc), code="model_not_ready", retry_after=exc.retry_after)
    if isinstance(exc, InvalidRequest):
        return invalid(exc.field, exc.reason)
    if isinstance(exc, GenerationFailed):
        return ApiError(500, str(exc), code="generation_failed")
    if isinstance(exc, ResultGone):
        return ApiError(410, str(exc), code="result_gone")
    return ApiError(500, str(exc))


def install_error_handlers(app) -> None:
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response(request.url.path)

    async def service_error(request: Request, exc: KleinserveError) -> JSONResponse:
        return from_service_error(exc).response(request.url.path)

    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}; see GET /v1/models and the README"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        response = ApiError(exc.status_code, message).response(request.url.path)
        response.headers.update(exc.headers or {})  # e.g. a 405's Allow
        return response

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        message = f"internal error: {type(exc).__name__}; the server log has details"
        response = ApiError(500, message).response(request.url.path)
        response.headers["x-request-id"] = new_request_id()
        return response

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(KleinserveError, service_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)
