"""Request ids, one JSON log line per request, and the gateway's Prometheus metrics.

* ``X-Request-ID``: a client's id is kept when it is 1..128 characters of ``[A-Za-z0-9._:-]``;
  otherwise (absent, too long, other characters) a new one (32 hex digits) is made. Either way it
  is echoed in the response header, set on ``request.state.request_id``, and carried by every log
  line written while the request runs (a context variable).
* One log line per request on logger ``service.access``: request id, method, route, path,
  status, error code (the JSON error's ``code``), model, boxes, people and the latency of each
  stage in milliseconds (``latency_ms``: the route's stages plus ``total``).
* ``Server-Timing`` response header (W3C Server Timing): the same stages and ``total`` as
  ``name;dur=MILLISECONDS`` entries, ``total`` being the whole request inside the gateway (body
  read, form parsing, the route, JSON rendering), so a client can tell the gateway's time from the
  network's and its own.
* Metrics (``GET /metrics``): ``hrnet_requests_total{path,status}``,
  ``hrnet_request_seconds{path}``, ``hrnet_stage_seconds{route,stage}`` (decode_image, detect,
  preprocess, inference, decode_heatmaps, serialise, ... as the routes time them) and
  ``hrnet_errors_total{route,code}`` (every error response, by its cause).

Routers take their :class:`~service.pipelines.common.StageTimer` from :func:`request_timer` and
note what they served with :func:`note`; the middleware (:func:`install_observability`) does the
rest. With ``log_format="json"`` (:func:`configure_logging`) every log line is one JSON object.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import Any

from fastapi import FastAPI, Request
from prometheus_client import Counter, Histogram

from .errors import error_response
from .pipelines.common import StageTimer

REQUEST_ID_HEADER = "X-Request-ID"
SERVER_TIMING_HEADER = "Server-Timing"
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

#: the id of the request being served in this context (None outside a request)
current_request_id: ContextVar[str | None] = ContextVar("hrnet_request_id", default=None)

access_log = logging.getLogger("service.access")
log = logging.getLogger("service")

REQUESTS = Counter("hrnet_requests_total", "HTTP requests", ["path", "status"])
LATENCY = Histogram("hrnet_request_seconds", "HTTP request latency", ["path"])
STAGE_LATENCY = Histogram(
    "hrnet_stage_seconds",
    "Latency of one stage of a request",
    ["route", "stage"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
ERRORS = Counter(
    "hrnet_errors_total", "Error responses by cause (the JSON error code)", ["route", "code"]
)

#: error code of an error response that did not come through the error handlers
_STATUS_CODES = {
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    500: "internal_error",
    503: "backend_unavailable",
}


def accepted_request_id(value: str | None) -> str:
    """``value`` when it is a safe request id (1..128 of ``[A-Za-z0-9._:-]``), else a new one."""
    if value is not None and _REQUEST_ID.fullmatch(value):
        return value
    return uuid.uuid4().hex


def request_timer(request: Request) -> StageTimer:
    """A new :class:`StageTimer` for the route's stages, also kept for the request's log line
    and the stage histograms."""
    timer = StageTimer()
    request.state.timer = timer
    return timer


def note(request: Request, **fields: Any) -> None:
    """Add fields to the request's log line (``model=``, ``boxes=``, ``people=``, ...)."""
    notes = getattr(request.state, "log_fields", None)
    if notes is None:
        notes = request.state.log_fields = {}
    notes.update(fields)


def install_observability(app: FastAPI) -> None:
    """Add the request-id / access-log / metrics middleware to ``app``. Add it after (i.e. outside
    of) middleware whose responses should be counted, e.g. the body-size limit. An exception that
    escapes the app becomes a JSON ``500 internal_error`` here (never a dropped connection)."""

    _stamp_log_records()

    @app.middleware("http")
    async def _observe(request: Request, call_next):
        t0 = time.perf_counter()
        rid = accepted_request_id(request.headers.get(REQUEST_ID_HEADER))
        request.state.request_id = rid
        token = current_request_id.set(rid)
        try:
            try:
                response = await call_next(request)
            except Exception:  # last resort; the details go to the log only
                log.exception("unhandled error on %s", request.url.path)
                response = error_response(
                    request, "internal_error", f"internal error (request id {rid})", 500
                )
            response.headers[REQUEST_ID_HEADER] = rid
            elapsed = time.perf_counter() - t0
            timer = getattr(request.state, "timer", None)
            response.headers[SERVER_TIMING_HEADER] = server_timing(
                timer.ms if timer is not None else {}, elapsed
            )
            _account(request, response.status_code, elapsed)
            return response
        finally:
            current_request_id.reset(token)


def server_timing(stages_ms: dict[str, float], total_s: float) -> str:
    """The ``Server-Timing`` header value: ``stage;dur=ms`` per stage in order, then
    ``total;dur=ms`` (``total_s`` in seconds); durations in milliseconds, 3 decimals. Stage names
    are the routes' own (``decode_image``, ``inference``, ...), all valid header tokens."""
    parts = [f"{name};dur={ms:.3f}" for name, ms in stages_ms.items()]
    parts.append(f"total;dur={total_s * 1e3:.3f}")
    return ", ".join(parts)


def parse_server_timing(value: str) -> dict[str, float]:
    """``Server-Timing`` header value -> ``{name: milliseconds}`` (entries without ``dur`` are
    skipped; a repeated name keeps its last value). The inverse of :func:`server_timing`, for
    clients such as ``hrnet-bench``. Raises ValueError for a ``dur`` that is not a number."""
    out: dict[str, float] = {}
    for entry in value.split(","):
        name, *params = (p.strip() for p in entry.split(";"))
        for param in params:
            key, _, val = param.partition("=")
            if name and key.strip().lower() == "dur":
                out[name] = float(val.strip().strip('"'))
    return out


def _stamp_log_records() -> None:
    """Give every log record created from now on a ``request_id`` attribute (the id of the
    request being served where it was logged, else None); installed once per process."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "stamps_request_id", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        record.request_id = current_request_id.get()
        return record

    factory.stamps_request_id = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


def _account(request: Request, status: int, elapsed_s: float) -> None:
    """Metrics and the access-log line of one finished request."""
    route = getattr(request.scope.get("route"), "path", "other")
    REQUESTS.labels(route, str(status)).inc()
    LATENCY.labels(route).observe(elapsed_s)
    code = getattr(request.state, "error_code", None)
    if status >= 400:
        code = code or _STATUS_CODES.get(status, f"http_{status}")
        ERRORS.labels(route, code).inc()
    timer = getattr(request.state, "timer", None)
    stages = dict(timer.ms) if timer is not None else {}
    for stage, ms in stages.items():
        STAGE_LATENCY.labels(route, stage).observe(ms / 1e3)
    latency = {k: round(v, 3) for k, v in stages.items()}
    latency["total"] = round(elapsed_s * 1e3, 3)
    fields: dict[str, Any] = {
        "method": request.method,
        "route": route,
        "path": request.url.path[:200],
        "status": status,
    }
    if code:
        fields["error"] = code
    fields.update(getattr(request.state, "log_fields", None) or {})
    fields["latency_ms"] = latency
    access_log.info("request", extra={"fields": fields})


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``ts`` (UTC, ISO 8601), ``level``, ``logger``, ``message``,
    ``request_id`` (of the request it was logged in, if any), the record's ``fields`` extra,
    ``exc`` (a traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", None) or current_request_id.get()
        if rid is not None:
            out["request_id"] = rid
        out.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    """Root logging to stderr: JSON lines (``fmt="json"``) or plain text; ``level`` by name."""
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
