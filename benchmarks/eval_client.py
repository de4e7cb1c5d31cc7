"""HTTP side of ``hrnet-eval``: bounded-concurrency requests with retries and backoff.

Transient failures — HTTP 429/502/503/504 and transport errors (refused or dropped connections,
timeouts) — are retried up to ``retries`` times with exponential backoff
``backoff · 2**attempt`` seconds (capped at 30 s; a ``Retry-After`` header in seconds is honoured
up to the same cap). Anything else fails the image at once with a cause such as
``http_422:invalid_boxes``; exhausted retries fail it with ``http_503`` or the transport error's
class name (``ConnectError``, ``ReadTimeout`` ...).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

RETRY_STATUS = frozenset({429, 502, 503, 504})
MAX_DELAY_S = 30.0


def api_key_headers(key: str | None = None) -> dict[str, str]:
    """Headers for a gateway that needs an API key (``service.auth``): ``{"X-API-Key": key}``.

    ``key`` None: the first of the comma-separated keys in ``$HRNET_API_KEY`` (the gateway's own
    variable), if any. Returns {} when there is no key.
    """
    if key is None:
        key = next(
            (k.strip() for k in os.environ.get("HRNET_API_KEY", "").split(",") if k.strip()), None
        )
    return {"X-API-Key": key} if key else {}


class RequestFailed(Exception):
    """A request that could not be completed; ``cause`` is a short machine-readable reason."""

    def __init__(self, cause: str, message: str = "") -> None:
        super().__init__(f"{cause}: {message}" if message else cause)
        self.cause = cause
        self.message = message


@dataclass
class RetryPolicy:
    """``retries``: extra attempts after the first; ``backoff``: first delay in seconds."""

    retries: int = 5
    backoff: float = 0.5
    stats: dict[str, int] = field(default_factory=dict)

    def delay(self, attempt: int, response: httpx.Response | None = None) -> float:
        """Seconds to wait before retry ``attempt`` (0-based): ``backoff * 2**attempt`` or the
        response's ``Retry-After`` if longer, capped at :data:`MAX_DELAY_S`."""
        d = self.backoff * (2**attempt)
        if response is not None:
            ra = response.headers.get("retry-after")
            try:
                d = max(d, float(ra)) if ra is not None else d
            except ValueError:
                pass
        return min(d, MAX_DELAY_S)

    def count(self, what: str) -> None:
        """Count one retry of kind ``what`` in ``stats``."""
        self.stats[what] = self.stats.get(what, 0) + 1


def _error_code(resp: httpx.Response) -> str:
    try:
        body = resp.json()
        return str(body["error"]["code"])
    except Exception:
        return ""


async def request_with_retries(
    client: httpx.AsyncClient, method: str, url: str, policy: RetryPolicy, **kwargs: Any
) -> httpx.Response:
    """Send one request, retrying transient failures per ``policy``.

    ``kwargs`` go to ``client.request`` (``data``, ``files``, ``headers``, ...); ``files`` values
    must be re-sendable (bytes, not open files). Returns the 2xx response.

    Raises:
        RequestFailed: on a non-retryable status, or when the retries are used up.
    """
    attempt = 0
    while True:
        resp: httpx.Response | None = None
        try:
            resp = await client.request(method, url, **kwargs)
        except httpx.TransportError as exc:
            cause, msg = type(exc).__name__, str(exc)
        else:
            if resp.status_code < 300:
                return resp
            code = _error_code(resp)
            cause = f"http_{resp.status_code}" + (f":{code}" if code else "")
            msg = resp.text[:300]
            if resp.status_code not in RETRY_STATUS:
                raise RequestFailed(cause, msg)
        if attempt >= policy.retries:
            raise RequestFailed(cause, msg)
        policy.count(f"retry:{cause}")
        await asyncio.sleep(policy.delay(attempt, resp))
        attempt += 1


async def get_json(client: httpx.AsyncClient, url: str, policy: RetryPolicy) -> Any:
    """GET ``url`` with retries and decode its JSON body (raises :class:`RequestFailed`)."""
    resp = await request_with_retries(client, "GET", url, policy)
    try:
        return resp.json()
    except ValueError as exc:
        raise RequestFailed("bad_response", f"GET {url}: {exc}") from None


async def post_form(
    client: httpx.AsyncClient,
    url: str,
    policy: RetryPolicy,
    *,
    image_name: str,
    image_bytes: bytes,
    fields: Mapping[str, str],
    accept: str = "application/json",
) -> httpx.Response:
    """POST a multipart form (``image`` file + string ``fields``) with retries."""
    files = {"image": (image_name, image_bytes, _mime(image_name))}
    return await request_with_retries(
        client, "POST", url, policy, data=dict(fields), files=files, headers={"Accept": accept}
    )


def _mime(name: str) -> str:
    n = name.lower()
    if n.endswith(".png"):
        return "image/png"
    if n.endswith((".jpg", ".jpeg")):
        return "image/jpeg"
    if n.endswith(".bmp"):
        return "image/bmp"
    if n.endswith(".webp"):
        return "image/webp"
    return "application/octet-stream"
