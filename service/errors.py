"""Client-facing errors: every bad input becomes a 4xx JSON error that names the problem.

The JSON body is ``{"error": {"code": "<machine code>", "message": "<what is wrong>"}}``.
The FastAPI app registers :func:`install_error_handlers`, so raising an :class:`APIError` anywhere
on the request path ends the request cleanly; nothing reaches the client as a bare 500. Starlette's
HTTP errors get the same format; its "field/part exceeded maximum size" (400) becomes 413.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # FastAPI is imported where the handlers are installed, so the error classes
    # stay importable without it (service.boxes in the torch/GPU tooling, e.g. benchmarks.gpu_bench)
    from fastapi import FastAPI


class APIError(Exception):
    """An error to return to the client as ``status_code`` with a machine ``code`` and a message."""

    status_code: int = 400
    code: str = "bad_request"

    def __init__(self, message: str, *, status_code: int | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
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


class PayloadTooLarge(APIError):
    """413: the file, image or network input exceeds a configured limit."""

    status_code, code = 413, "payload_too_large"


def error_body(code: str, message: str) -> dict:
    """The JSON error body ``{"error": {"code": code, "message": message}}``."""
    return {"error": {"code": code, "message": message}}


def install_error_handlers(app: FastAPI) -> None:
    """Map APIError and request-validation errors to JSON 4xx responses."""
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(error_body(exc.code, exc.message), status_code=exc.status_code,
                            headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        status, detail = exc.status_code, str(exc.detail)
        if status == 400 and "exceeded maximum size" in detail:
            # Starlette's multipart parser: a form field / part over its size limit (1 MiB)
            status = 413
        codes = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}
        return JSONResponse(error_body(codes.get(status, "http_error"), detail),
                            status_code=status, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            parts.append(f"{loc or 'request'}: {err.get('msg', 'invalid')}")
        return JSONResponse(error_body("invalid_request", "; ".join(parts)), status_code=422)
