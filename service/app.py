"""The FastAPI gateway: settings -> model repository -> backend, then the routers.

``create_app()`` builds the app; the lifespan opens the backend at start-up (ONNX Runtime sessions
or the Triton connection) and closes it at shut-down (also when start-up fails), and creates the
per-endpoint concurrency limits and the model reloader (``POST /admin/reload``, SIGHUP:
service/reload.py). SIGTERM drains before uvicorn's graceful shutdown (service/lifecycle.py).
Request bodies above ``max_upload_bytes`` + 1 MiB are refused with 413 before they are read
(:class:`service.limits.BodySizeLimit`); under overload ``/pose`` and ``/segment`` answer 503 +
``Retry-After`` before the body is parsed (:class:`service.shedding.LoadShedder`). Every request
gets an ``X-Request-ID``, a JSON access-log line and its metrics (:mod:`service.observability`);
``/pose``, ``/segment``, ``/models`` (and, by setting, ``/metrics``) need the API key when one is
configured, ``/admin/*`` the admin key (:mod:`service.auth`); CORS is off unless
``cors_allow_origins`` lists origins. Data flows one way per request: request -> preprocess ->
backend -> decode -> response.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from .auth import API_KEY_HEADER, require_api_key
from .backends.base import Backend
from .errors import install_error_handlers
from .lifecycle import Drain, DrainMiddleware
from .limits import BODY_OVERHEAD_BYTES, BodySizeLimit, make_endpoint_limits
from .observability import REQUEST_ID_HEADER, SERVER_TIMING_HEADER, install_observability
from .reload import ModelReloader, listen_for_sighup, stop_listening
from .repository import ModelRepository
from .settings import Settings
from .shedding import LoadShedder

log = logging.getLogger("service")


def make_backend(settings: Settings, repository: ModelRepository) -> Backend:
    """The backend named by ``settings.backend`` (embedded ONNX Runtime or OpenVINO, or Triton).
    Raises RuntimeError for ``openvino`` when the ``[openvino]`` extra is not installed."""
    if settings.backend == "triton":
        from .backends.triton import TritonBackend

        return TritonBackend.from_settings(settings, repository)
    from .batching import BatchConfig

    if settings.backend == "openvino":
        from .backends.openvino import OpenVinoBackend

        return OpenVinoBackend(
            repository,
            precision=settings.openvino_precision,
            precisions=dict(settings.openvino_precisions),
            threads=settings.openvino_threads,
            concurrent_runs=settings.openvino_concurrent_runs,
            batching=BatchConfig.from_settings(settings),
        )
    from .backends.onnxruntime import OnnxRuntimeBackend

    providers = settings.ort_providers.split(",") if settings.ort_providers else None
    return OnnxRuntimeBackend(
        repository,
        providers=providers,
        intra_op_threads=settings.ort_intra_op_threads,
        inter_op_threads=settings.ort_inter_op_threads,
        dynamic_intra_op_threads=settings.ort_dynamic_intra_op_threads,
        concurrent_runs=settings.ort_concurrent_runs,
        allow_spinning=settings.ort_allow_spinning,
        batching=BatchConfig.from_settings(settings),
    )


def create_app(settings: Settings | None = None, backend: Backend | None = None) -> FastAPI:
    """Build the gateway. ``backend`` may be injected (tests); otherwise made from ``settings``."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        repo = ModelRepository(settings.model_repository)
        app.state.backend = be = backend or make_backend(settings, repo)
        sighup = False
        try:  # close() runs even when start() fails (no leaked connection / shared memory)
            await be.start(repo.cards)
            if settings.warm_up:
                await be.warm_up()
            app.state.settings, app.state.repository = settings, repo
            app.state.endpoint_limits = make_endpoint_limits(settings)
            app.state.reloader = await ModelReloader.create(repo)
            sighup = listen_for_sighup(app.state.reloader, app.state)
            log.info("gateway ready: backend=%s models=%s", be.name, list(repo.cards))
            yield
        finally:
            if sighup:
                stop_listening()
            # the newest backend (a reload makes new ones that share the old one's resources)
            await app.state.backend.close()

    # /docs (Swagger UI) and /redoc load their JS/CSS from the gateway itself (fastapi-offline
    # ships them, under /static-offline-docs), not from a CDN: they work without internet
    app = FastAPIOffline(
        title="HRNet serving gateway",
        version="0.1.0",
        lifespan=lifespan,
        description="Top-down and bottom-up pose and semantic segmentation with "
        "HRNet-family models.",
    )
    install_error_handlers(app)
    app.state.drain = Drain()  # set by SIGTERM (service.lifecycle.GatewayServer)

    # innermost: overload refused before the multipart body is parsed (503 + Retry-After)
    app.add_middleware(
        LoadShedder,
        deadline_s=settings.shed_deadline_s,
        min_inflight=settings.shed_min_inflight,
    )
    # inside the observability middleware, which counts the 503s it answers while draining
    app.add_middleware(DrainMiddleware, drain=app.state.drain)
    # before the observability middleware, so that refused bodies are counted (added later = outer)
    app.add_middleware(
        BodySizeLimit, max_bytes=lambda: settings.max_upload_bytes + BODY_OVERHEAD_BYTES
    )
    install_observability(app)
    origins = [o.strip() for o in settings.cors_allow_origins.split(",") if o.strip()]
    if origins:  # outermost: preflights are answered before anything else runs
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", API_KEY_HEADER, REQUEST_ID_HEADER],
            expose_headers=[
                REQUEST_ID_HEADER,
                SERVER_TIMING_HEADER,
                "X-Inference-Mode",
                "Retry-After",
            ],
        )

    metrics_deps = [Depends(require_api_key)] if settings.metrics_require_api_key else []

    @app.get("/metrics", include_in_schema=False, dependencies=metrics_deps)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    from .routers import admin, meta, pose

    keyed = [Depends(require_api_key)]
    app.include_router(meta.router)
    app.include_router(pose.router, dependencies=keyed)
    app.include_router(admin.router)  # behind the admin key (its router's dependency)
    try:
        from .routers import segment

        app.include_router(segment.router, dependencies=keyed)
    except ImportError as exc:  # pragma: no cover - segmentation router is optional during builds
        log.warning("segmentation endpoint unavailable: %s", exc)
    return app
