"""Graceful shutdown: a draining flag the app answers with, and uvicorn's own shutdown behind it.

On SIGTERM the gateway

1. starts draining at once: ``/readyz`` answers 503 (so a load balancer takes this replica out),
   every new API request gets ``503 shutting_down`` with ``Retry-After`` and ``Connection: close``
   (``/healthz`` and ``/metrics`` still answer), requests already admitted go on;
2. keeps its listening socket open for ``settings.shutdown_drain_s`` seconds, so that clients and
   the load balancer see those 503s rather than refused connections;
3. then hands over to uvicorn's shutdown: it stops accepting connections, closes idle keep-alive
   ones and waits for the in-flight requests, at most ``settings.shutdown_timeout_s`` seconds
   (uvicorn's ``timeout_graceful_shutdown``; past it the remaining ones are cancelled), runs the
   app's lifespan shutdown (sessions closed) and returns;
4. ``hrnet-serve`` then exits with status 0.

SIGINT (Ctrl+C) skips the drain window (step 2) and a second one forces the exit, as in uvicorn.
"""

from __future__ import annotations

import logging
import signal
import time
from types import FrameType

import uvicorn
from prometheus_client import Gauge
from starlette.types import ASGIApp, Receive, Scope, Send

from .errors import error_body
from .limits import send_json

log = logging.getLogger(__name__)

IN_FLIGHT = Gauge(
    "hrnet_requests_in_flight", "API requests being served (not /healthz, /readyz, /metrics)"
)

#: Paths answered normally while draining (probes and scraping); ``/readyz`` reports the drain.
PROBE_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


class Drain:
    """The gateway's draining flag (set once, at the first SIGTERM)."""

    def __init__(self) -> None:
        self.started_at: float | None = None
        self.in_flight = 0  # API requests admitted and not finished (DrainMiddleware counts)

    @property
    def active(self) -> bool:
        """True from :meth:`begin` on."""
        return self.started_at is not None

    def begin(self) -> None:
        """Start draining (idempotent: the first call's time is kept)."""
        if self.started_at is None:
            self.started_at = time.monotonic()

    def elapsed_s(self) -> float:
        """Seconds since :meth:`begin` (0 when not draining)."""
        return 0.0 if self.started_at is None else time.monotonic() - self.started_at


class DrainMiddleware:
    """ASGI middleware: counts in-flight API requests and refuses new ones while draining.

    While ``drain.active``, an HTTP request to anything but :data:`PROBE_PATHS` gets
    ``503 {"error": {"code": "shutting_down", ...}}`` with ``Retry-After: retry_after_s`` and
    ``Connection: close``; requests admitted before keep running. :data:`IN_FLIGHT` counts the
    admitted API requests (the gauge the shutdown test watches).
    """

    def __init__(self, app: ASGIApp, drain: Drain, retry_after_s: int = 1):
        self.app = app
        self.drain = drain
        self.retry_after_s = max(1, int(retry_after_s))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in PROBE_PATHS:
            await self.app(scope, receive, send)
            return
        if self.drain.active:
            scope.setdefault("state", {})["error_code"] = "shutting_down"  # for the metrics
            await send_json(
                send,
                503,
                error_body(
                    "shutting_down", "the gateway is shutting down; retry on another replica"
                ),
                headers=[(b"retry-after", str(self.retry_after_s).encode())],
            )
            return
        self.drain.in_flight += 1
        IN_FLIGHT.inc()
        try:
            await self.app(scope, receive, send)
        finally:
            self.drain.in_flight -= 1
            IN_FLIGHT.dec()


class GatewayServer(uvicorn.Server):
    """``uvicorn.Server`` that drains on SIGTERM before its own graceful shutdown.

    SIGTERM: ``drain.begin()``, then uvicorn's ``should_exit`` as usual, but the main loop keeps
    serving (answering 503, see :class:`DrainMiddleware`) until ``drain_s`` seconds have passed
    since the signal. Everything else (stop accepting, wait for in-flight requests up to the
    config's ``timeout_graceful_shutdown``, lifespan shutdown, SIGINT twice = force) is uvicorn's.
    """

    def __init__(self, config: uvicorn.Config, drain: Drain, drain_s: float):
        super().__init__(config)
        self.drain = drain
        self.drain_s = float(drain_s)
        self._drain_logged = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # a signal handler: only flags here (logging could re-enter a stream being written)
        if sig == signal.SIGTERM:
            self.drain.begin()
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self.drain.active and not self._drain_logged:
            self._drain_logged = True
            log.info(
                "SIGTERM: draining (new requests get 503) for %.1f s, then waiting up to "
                "%s s for %d in-flight request(s)",
                self.drain_s,
                self.config.timeout_graceful_shutdown,
                self.drain.in_flight,
            )
        if (
            self.should_exit
            and not self.force_exit
            and self.drain.active
            and self.drain.elapsed_s() < self.drain_s
        ):
            return False  # the drain window: keep the listener open, answering 503
        return await super().on_tick(counter)


def serve(app, settings, log_level: str = "info") -> int:
    """Serve ``app`` on ``settings.host:port`` until SIGTERM/SIGINT, shut down gracefully, and
    return 0 (the process's exit status) once every in-flight request has finished or
    ``settings.shutdown_timeout_s`` has passed.

    ``app.state.drain`` (a :class:`Drain`, set by :func:`service.app.create_app`) is the flag the
    app answers with. uvicorn re-raises the signal it caught after shutting down, so that the
    default action (death by signal) applies; a no-op handler is installed first, so the re-raised
    SIGTERM/SIGINT is absorbed and the process ends with 0 instead.
    """
    # uvicorn keeps the logging hrnet-serve set up (log_config=None: JSON lines by default); the
    # gateway writes its own access line per request (service.observability), so uvicorn's is off
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        timeout_graceful_shutdown=settings.shutdown_timeout_s,
        log_config=None,
        access_log=False,
    )
    server = GatewayServer(config, app.state.drain, settings.shutdown_drain_s)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _absorb)
    server.run()  # a failed start-up raises SystemExit (uvicorn's exit status) out of here
    return 0


def _absorb(sig: int, _frame: FrameType | None) -> None:
    """Handler uvicorn restores after its shutdown; its re-raised signal ends up here."""
    log.info("shut down after signal %d", sig)
