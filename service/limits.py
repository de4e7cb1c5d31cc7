"""Request-level resource limits of the gateway: body size before reading, per-endpoint concurrency.

* :class:`BodySizeLimit` (ASGI middleware): a request whose ``Content-Length`` exceeds the limit is
  answered ``413 payload_too_large`` before a byte of its body is read; a body sent without a
  length (chunked) is counted as it streams and the request fails with the same 413 once it
  passes the limit (so Starlette never spools an unbounded upload to disk).
* :func:`endpoint_slot`: an ``asyncio.Semaphore`` per endpoint (created at start-up by the app's
  lifespan, see :func:`make_endpoint_limits`) bounding how many requests of that endpoint do their
  CPU/memory-heavy work at once; the others wait their turn.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import HTTPException, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import error_body

#: Extra bytes allowed on top of ``max_upload_bytes`` for the multipart framing and small fields.
BODY_OVERHEAD_BYTES = 1 << 20


class BodySizeLimit:
    """ASGI middleware rejecting HTTP request bodies larger than ``max_bytes`` with a JSON 413.

    ``Content-Length`` above ``max_bytes``: the 413 is sent at once and the body is never read
    (nor is the endpoint called). Without a (valid) ``Content-Length`` the bytes are counted as the
    app reads them; past ``max_bytes`` the read raises ``HTTPException(413)``, which the gateway's
    error handlers turn into the same JSON error. ``max_bytes``: bytes (> 0), or a function
    returning them, evaluated per request (so a changed setting applies at once).
    """

    def __init__(self, app: ASGIApp, max_bytes: int | Callable[[], int]):
        if not callable(max_bytes) and max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.app = app
        self._limit = max_bytes

    @property
    def max_bytes(self) -> int:
        return int(self._limit() if callable(self._limit) else self._limit)

    @staticmethod
    def _message(size: int | None, limit: int) -> str:
        got = f" of {size} bytes" if size is not None else ""
        return f"the request body{got} exceeds the limit of {limit} bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = None
        for key, value in scope.get("headers", ()):
            if key == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    length = None
                break
        limit = self.max_bytes
        if length is not None and length > limit:
            await send_json(
                send, 413, error_body("payload_too_large", self._message(length, limit))
            )
            return
        seen = 0

        async def counted_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise HTTPException(status_code=413, detail=self._message(None, limit))
            return message

        await self.app(scope, counted_receive, send)


async def send_json(
    send: Send,
    status: int,
    body: dict,
    headers: list[tuple[bytes, bytes]] | None = None,
    close: bool = True,
) -> None:
    """Send a whole JSON response from ASGI middleware (outside FastAPI's error handlers):
    ``status``, ``body`` serialised, extra ``headers`` (lower-case bytes pairs) and, with
    ``close``, ``Connection: close`` (for a request whose body was not read)."""
    payload = json.dumps(body).encode()
    head = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        *(headers or []),
    ]
    if close:
        head.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": payload})


def make_endpoint_limits(settings) -> dict[str, asyncio.Semaphore]:
    """Per-endpoint semaphores from ``settings`` (``pose_max_concurrency``,
    ``seg_max_concurrency``; each >= 1). Called in the app's lifespan, i.e. inside the event loop."""
    limits = {
        "pose": int(settings.pose_max_concurrency),
        "segment": int(settings.seg_max_concurrency),
    }
    for name, n in limits.items():
        if n < 1:
            raise ValueError(f"{name} concurrency must be >= 1, got {n}")
    return {name: asyncio.Semaphore(n) for name, n in limits.items()}


@asynccontextmanager
async def endpoint_slot(request: Request, endpoint: str) -> AsyncIterator[None]:
    """Hold one of ``endpoint``'s concurrency slots (``app.state.endpoint_limits[endpoint]``) for the
    duration of the block; waits while all are taken. No semaphore configured: no limit."""
    limits = getattr(request.app.state, "endpoint_limits", None) or {}
    sem = limits.get(endpoint)
    if sem is None:
        yield
        return
    async with sem:
        yield
