"""API-key check as a FastAPI dependency: ``require_api_key``.

Stand-in with the name and interface of the ``reliability`` branch's ``service/auth.py``
(``require_api_key``, keys from ``settings.api_key`` = ``HRNET_API_KEY``, comma-separated; sent as
``X-API-Key: <key>`` or ``Authorization: Bearer <key>``; JSON ``401 unauthorized`` otherwise).
When both branches are merged, this module goes and ``service/routers/admin.py`` imports
``require_api_key`` from ``service.auth`` instead: the one line that changes.
"""
from __future__ import annotations

import hashlib
import hmac
from typing import Optional

from fastapi import Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from .errors import APIError

_HEADER = APIKeyHeader(name="X-API-Key", auto_error=False,
                       description="the gateway's API key (HRNET_API_KEY)")
_BEARER = HTTPBearer(auto_error=False, description="the gateway's API key as a bearer token")


def configured_keys(settings) -> list[str]:
    """The keys of ``settings.api_key`` (comma-separated, blanks dropped); [] when none is set."""
    secret = getattr(settings, "api_key", None)
    if secret is None:
        return []
    return [k.strip() for k in secret.get_secret_value().split(",") if k.strip()]


def _same(a: str, b: str) -> bool:
    # digests first: the comparison time depends on neither the keys' contents nor lengths
    return hmac.compare_digest(hashlib.sha256(a.encode()).digest(), hashlib.sha256(b.encode()).digest())


async def require_api_key(request: Request, key: Optional[str] = Security(_HEADER),
                          bearer: Optional[HTTPAuthorizationCredentials] = Security(_BEARER)) -> None:
    """FastAPI dependency: passes when no key is configured or one of the configured keys was
    sent (``X-API-Key`` or ``Authorization: Bearer``). Raises APIError 401 ``unauthorized``
    (with ``WWW-Authenticate: Bearer``) for a missing or wrong key."""
    keys = configured_keys(request.app.state.settings)
    if not keys:
        return
    sent = [k for k in (key, bearer.credentials if bearer else None) if k]
    if not any(_same(s, k) for s in sent for k in keys):
        raise APIError("missing or wrong API key: send 'X-API-Key: <key>' or "
                       "'Authorization: Bearer <key>'", status_code=401, code="unauthorized",
                       headers={"WWW-Authenticate": "Bearer"})
