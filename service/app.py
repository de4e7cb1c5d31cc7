"""The FastAPI gateway: settings -> model repository -> backend, then the routers.

``create_app()`` builds the app; the lifespan opens the backend at start-up (ONNX Runtime sessions
or the Triton connection) and closes it at shut-down (also when start-up fails), and creates the
per-endpoint concurrency limits. Request bodies above ``max_upload_bytes`` + 1 MiB are refused
with 413 before they are read (:class:`service.limits.BodySizeLimit`). Data flows one way per request:
request -> preprocess -> backend -> decode -> response.
"""
from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from starlette.responses import Response

from .backends.base import Backend, BackendError, BackendUnavailable
from .errors import error_body, install_error_handlers
from .limits import BODY_OVERHEAD_BYTES, BodySizeLimit, make_endpoint_limits
from .repository import ModelRepository
from .settings import Settings

log = logging.getLogger("service")

REQUESTS = Counter("hrnet_requests_total", "HTTP requests", ["path", "status"])
LATENCY = Histogram("hrnet_request_seconds", "HTTP request latency", ["path"])


def make_backend(settings: Settings, repository: ModelRepository) -> Backend:
    """The backend named by ``settings.backend`` (embedded ONNX Runtime or Triton)."""
    if settings.backend == "triton":
        from .backends.triton import TritonBackend
        return TritonBackend.from_settings(settings, repository)
    from .backends.onnxruntime import OnnxRuntimeBackend
    providers = settings.ort_providers.split(",") if settings.ort_providers else None
    from .batching import BatchConfig
    return OnnxRuntimeBackend(repository, providers=providers,
                              intra_op_threads=settings.ort_intra_op_threads,
                              inter_op_threads=settings.ort_inter_op_threads,
                              concurrent_runs=settings.ort_concurrent_runs,
                              allow_spinning=settings.ort_allow_spinning,
                              batching=BatchConfig.from_settings(settings))


def create_app(settings: Settings | None = None, backend: Backend | None = None) -> FastAPI:
    """Build the gateway. ``backend`` may be injected (tests); otherwise made from ``settings``."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        repo = ModelRepository(settings.model_repository)
        be = backend or make_backend(settings, repo)
        try:  # close() runs even when start() fails (no leaked connection / shared memory)
            start = getattr(be, "start", None)
            if start is not None:
                await start(repo.cards)
            app.state.settings, app.state.repository, app.state.backend = settings, repo, be
            app.state.endpoint_limits = make_endpoint_limits(settings)
            log.info("gateway ready: backend=%s models=%s", be.name, list(repo.cards))
            yield
        finally:
            await be.close()

    app = FastAPI(title="HRNet serving gateway", version="0.1.0", lifespan=lifespan,
                  description="Top-down pose and semantic segmentation with HRNet-family models.")
    install_error_handlers(app)

    @app.exception_handler(BackendUnavailable)
    async def _unavailable(_: Request, exc: BackendUnavailable) -> JSONResponse:
        # code: "overloaded" for the dynamic batcher's refusals (service.batching.Overloaded)
        code = getattr(exc, "code", "backend_unavailable")
        return JSONResponse(error_body(code, str(exc)), status_code=503,
                            headers={"Retry-After": str(max(1, round(exc.retry_after_s)))})

    @app.exception_handler(BackendError)
    async def _backend_error(_: Request, exc: BackendError) -> JSONResponse:
        log.error("inference failed: %s", exc)
        return JSONResponse(error_body("inference_failed", str(exc)), status_code=500)

    # before the metrics middleware, so that refused bodies are counted (added later = outer)
    app.add_middleware(BodySizeLimit,
                       max_bytes=lambda: settings.max_upload_bytes + BODY_OVERHEAD_BYTES)

    @app.middleware("http")
    async def _metrics(request: Request, call_next):
        t0 = time.perf_counter()
        try:
            response = await call_next(request)
        except Exception as exc:  # last resort: a JSON 500, never a dropped connection
            log.exception("unhandled error on %s", request.url.path)
            response = JSONResponse(error_body("internal_error", f"{type(exc).__name__}: {exc}"),
                                    status_code=500)
        route = request.scope.get("route")
        path = getattr(route, "path", "other")
        REQUESTS.labels(path, str(response.status_code)).inc()
        LATENCY.labels(path).observe(time.perf_counter() - t0)
        return response

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    from .routers import meta, pose
    app.include_router(meta.router)
    app.include_router(pose.router)
    try:
        from .routers import segment
        app.include_router(segment.router)
    except ImportError as exc:  # pragma: no cover - segmentation router is optional during builds
        log.warning("segmentation endpoint unavailable: %s", exc)
    return app
