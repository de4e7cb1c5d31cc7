"""The admin API key: the one dependency that guards administrative endpoints (``/admin/*``).

Clients send ``X-API-Key: <key>``; the key is ``settings.admin_api_key`` (``HRNET_ADMIN_API_KEY``).
"""
from __future__ import annotations

import hmac

from fastapi import Request, Security
from fastapi.security import APIKeyHeader

from .errors import APIError

_HEADER = APIKeyHeader(name="X-API-Key", auto_error=False,
                       description="the gateway's admin key (HRNET_ADMIN_API_KEY)")


async def require_admin_key(request: Request, key: str | None = Security(_HEADER)) -> None:
    """FastAPI dependency: passes when ``X-API-Key`` equals the configured admin key (compared in
    constant time). Raises APIError 401 ``unauthorized`` for a missing or wrong key, 403
    ``admin_disabled`` when no admin key is configured."""
    expected = request.app.state.settings.admin_api_key
    if expected is None or not expected.get_secret_value():
        raise APIError("administrative endpoints are disabled: no admin key is configured "
                       "(HRNET_ADMIN_API_KEY)", status_code=403, code="admin_disabled")
    if key is None or not hmac.compare_digest(key.encode(), expected.get_secret_value().encode()):
        raise APIError("missing or wrong X-API-Key header", status_code=401, code="unauthorized")
