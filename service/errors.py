"""Client-facing errors: every bad input becomes a 4xx JSON error that names the problem.

The JSON body is ``{"error": {"code": "<machine code>", "message": "<what is wrong>"}}``.
The FastAPI app registers :func:`install_error_handlers`, so raising an :class:`APIError` anywhere
on the request path ends the request cleanly; nothing reaches the client as a bare 500. Backend
failures (:class:`~service.backends.base.BackendError`) answer that one request with a JSON 500
``inference_failed`` (503 ``backend_unavailable`` when the backend cannot serve now). Starlette's
HTTP errors get the same format; its "field/part exceeded maximum size" (400) becomes 413.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # FastAPI is imported where the handlers are installed, so the error classes
    # stay importable without it (service.boxes in the torch/GPU tooling, e.g. benchmarks.gpu_bench)
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

from .backends.base import BackendError, BackendUnavailable

log = logging.getLogger("service")


class APIError(Exception):
    """An error to return to the client as ``status_code`` with a machine ``code`` and a message."""

    status_code: int = 400
    code: str = "bad_request"

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.message = message
        if status_code is not None:
            self.status_code = status_code
        if code is not None:
            self.code = code
        self.headers = headers or {}


class InvalidImage(APIError):
    """415: the upload is not a decodable JPEG/PNG/WebP/BMP image."""

    status_code, code = 415, "invalid_image"


class InvalidBoxes(APIError):
    """422: the ``boxes`` field is malformed or names an unusable box."""

    status_code, code = 422, "invalid_boxes"


class InvalidParameter(APIError):
    """422: a form parameter is out of range or malformed."""

    status_code, code = 422, "invalid_parameter"


class UnknownModel(APIError):
    """404: no model of that name in the repository."""

    status_code, code = 404, "unknown_model"


class WrongTask(APIError):
    """422: the named model serves another task (e.g. a detector on /pose)."""

    status_code, code = 422, "wrong_task"


class Unauthorized(APIError):
    """401: an API key is required (``HRNET_API_KEY`` is set) and none or a wrong one was sent."""

    status_code, code = 401, "unauthorized"


class PayloadTooLarge(APIError):
    """413: the file, image or network input exceeds a configured limit."""

    status_code, code = 413, "payload_too_large"


def error_body(code: str, message: str) -> dict:
    """The JSON error body ``{"error": {"code": code, "message": message}}``."""
    return {"error": {"code": code, "message": message}}


def error_response(
    request: Request,
    code: str,
    message: str,
    status_code: int,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """The JSON error response; also notes ``code`` on ``request.state.error_code``, where the
    observability middleware reads the cause for its error counter and the request's log line."""
    from fastapi.responses import JSONResponse

    request.state.error_code = code
    return JSONResponse(error_body(code, message), status_code=status_code, headers=headers)


def show_value(v: object, limit: int = 120) -> str:
    """``repr(v)`` cut to ``limit`` characters, for client input quoted in error messages."""
    r = repr(v)
    return r if len(r) <= limit else r[: limit - 3] + "..."


def install_error_handlers(app: FastAPI) -> None:
    """Map APIError, HTTP and request-validation errors to JSON 4xx responses, and backend
    failures to 503 ``backend_unavailable`` (+ ``Retry-After``) / 500 ``inference_failed``."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return error_response(request, exc.code, exc.message, exc.status_code, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        status, detail = exc.status_code, str(exc.detail)
        if status == 400 and "exceeded maximum size" in detail:
            # Starlette's multipart parser: a form field / part over its size limit (1 MiB)
            status = 413
        codes = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}
        return error_response(
            request, codes.get(status, "http_error"), detail, status, getattr(exc, "headers", None)
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            parts.append(f"{loc or 'request'}: {err.get('msg', 'invalid')}")
        return error_response(request, "invalid_request", "; ".join(parts), 422)

    @app.exception_handler(BackendUnavailable)
    async def _unavailable(request: Request, exc: BackendUnavailable) -> JSONResponse:
        # "overloaded" for the dynamic batcher's refusals (service.batching.Overloaded)
        return error_response(
            request,
            getattr(exc, "code", "backend_unavailable"),
            str(exc),
            503,
            {"Retry-After": str(max(1, round(exc.retry_after_s)))},
        )

    @app.exception_handler(BackendError)
    async def _backend_error(request: Request, exc: BackendError) -> JSONResponse:
        # This request only: the process, the other requests and the other models go on. The
        # backend's own words (ONNX Runtime / Triton internals) go to the log, not to the client.
        log.error("inference failed: %s", exc, exc_info=exc.__cause__ is not None)
        where = f" on model '{exc.model}'" if exc.model else ""
        return error_response(
            request,
            "inference_failed",
            f"inference failed{where}; the gateway log has the details "
            f"(request id {getattr(request.state, 'request_id', '-')})",
            500,
        )
