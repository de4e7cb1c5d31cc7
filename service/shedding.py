"""Load shedding before a request's body is read: 503 + ``Retry-After`` at once under overload.

:class:`LoadShedder` (ASGI middleware) watches the heavy endpoints (``POST /pose``,
``POST /segment``). Per endpoint it counts the requests in flight and measures the rate at which
they complete while the endpoint is busy (completions / seconds with at least one request in
flight, over the last ``window`` completions: Little's law gives the endpoint's capacity, idle gaps
do not dilute it). A new request whose expected wait, ``in flight / rate`` seconds, passes
``deadline_s`` is answered ``503 {"error": {"code": "overloaded"}}`` with ``Retry-After`` (the
expected wait in whole seconds: about when the work in flight now is done) before its body is
parsed or its image decoded: the body is read off the connection and dropped (so the connection
stays usable), nothing else is done. At most ``min_inflight`` requests are always admitted (so an
endpoint without history, or with a slow first request, still serves).

This is the first, cheap line; the model's dynamic batcher (:mod:`service.batching`) still refuses
admitted requests whose crops would miss its own queue deadline. Metrics:
``hrnet_shed_inflight{endpoint}`` (gauge), ``hrnet_shed_rejections_total{endpoint}`` (counter).
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field

from prometheus_client import Counter, Gauge
from starlette.types import ASGIApp, Receive, Scope, Send

from .errors import error_body
from .limits import send_json

INFLIGHT = Gauge(
    "hrnet_shed_inflight", "Requests in flight per shedding-watched endpoint", ["endpoint"]
)
SHED = Counter(
    "hrnet_shed_rejections_total",
    "Requests refused with 503 before their body was read (expected wait past the deadline)",
    ["endpoint"],
)


@dataclass
class EndpointLoad:
    """In-flight count and busy-time completion rate of one endpoint.

    ``start(now)`` / ``finish(now)``: a request enters / leaves, at ``now`` monotonic seconds.
    ``rate()``: completions per busy second over the last ``window`` completions, None before two
    completions. ``expected_wait()``: ``in_flight / rate`` seconds (0 without a rate).
    """

    window: int = 64
    in_flight: int = 0
    busy_s: float = 0.0  # seconds with in_flight > 0, up to busy_since
    busy_since: float = 0.0
    marks: deque = field(init=False)  # busy seconds at each of the last `window` completions

    def __post_init__(self) -> None:
        self.marks = deque(maxlen=self.window)

    def _busy_now(self, now: float) -> float:
        return self.busy_s + (now - self.busy_since if self.in_flight > 0 else 0.0)

    def start(self, now: float) -> None:
        if self.in_flight == 0:
            self.busy_since = now
        self.in_flight += 1

    def finish(self, now: float) -> None:
        self.busy_s = self._busy_now(now)
        self.busy_since = now
        self.in_flight -= 1
        self.marks.append(self.busy_s)

    def rate(self) -> float | None:
        if len(self.marks) < 2 or self.marks[-1] <= self.marks[0]:
            return None
        return (len(self.marks) - 1) / (self.marks[-1] - self.marks[0])

    def expected_wait(self) -> float:
        rate = self.rate()
        return self.in_flight / rate if rate else 0.0


class LoadShedder:
    """ASGI middleware refusing requests to ``endpoints`` (paths, POST) whose expected wait passes
    ``deadline_s`` seconds (see the module docstring). ``deadline_s`` <= 0: off. ``min_inflight``
    (>= 1): requests always admitted regardless of the estimate. ``clock``: a monotonic clock in
    seconds (tests pass their own)."""

    def __init__(
        self,
        app: ASGIApp,
        endpoints: tuple[str, ...] = ("/pose", "/segment"),
        deadline_s: float = 3.0,
        min_inflight: int = 4,
        window: int = 64,
        clock=time.monotonic,
    ):
        if min_inflight < 1 or window < 2:
            raise ValueError(f"min_inflight must be >= 1 and window >= 2: {min_inflight}, {window}")
        self.app = app
        self.deadline_s = float(deadline_s)
        self.min_inflight = int(min_inflight)
        self.clock = clock
        self.loads = {path: EndpointLoad(window=window) for path in endpoints}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        load = self.loads.get(scope.get("path", "")) if scope["type"] == "http" else None
        if load is None or scope.get("method") != "POST" or self.deadline_s <= 0:
            await self.app(scope, receive, send)
            return
        endpoint = scope["path"].strip("/")
        wait = load.expected_wait()
        if load.in_flight >= self.min_inflight and wait > self.deadline_s:
            SHED.labels(endpoint).inc()
            scope.setdefault("state", {})["error_code"] = "overloaded"  # for the metrics
            try:
                await _drain_body(receive)
                drained = True
            except Exception:  # e.g. a chunked body past the size limit: drop the connection
                drained = False
            retry = max(1, math.ceil(wait))  # about when the work in flight now is done
            await send_json(
                send,
                503,
                error_body(
                    "overloaded",
                    f"{load.in_flight} {endpoint} requests in flight, expected wait "
                    f"{wait:.1f} s exceeds the {self.deadline_s:g} s deadline; retry later",
                ),
                headers=[(b"retry-after", str(retry).encode())],
                close=not drained,
            )
            return
        load.start(self.clock())
        INFLIGHT.labels(endpoint).set(load.in_flight)
        try:
            await self.app(scope, receive, send)
        finally:
            load.finish(self.clock())
            INFLIGHT.labels(endpoint).set(load.in_flight)


async def _drain_body(receive: Receive) -> None:
    """Read the request body off the connection and drop it (no parsing, nothing kept)."""
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return
