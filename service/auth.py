"""The gateway's key checks, as FastAPI dependencies: the optional API key (``HRNET_API_KEY``,
:func:`require_api_key`) and the admin key of ``/admin/*`` (``HRNET_ADMIN_API_KEY``,
:func:`require_admin_key`).

With no key configured every request passes. With one or several keys (``HRNET_API_KEY=k1,k2``)
a request must send one of them as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``;
otherwise it gets a JSON ``401 unauthorized`` with ``WWW-Authenticate: Bearer``. Keys are compared
in constant time (``hmac.compare_digest`` on SHA-256 digests, so neither the content nor the
length of a key leaks through timing), always against every configured key.

The routers that need a key declare ``dependencies=[Depends(require_api_key)]`` (the app adds it
to ``/pose``, ``/segment``, ``/models`` and, by setting, ``/metrics``); ``/healthz`` and
``/readyz`` stay open. Both schemes appear in the OpenAPI spec (``/docs``) as security schemes.

The admin key is a separate secret, sent the same two ways; with none configured the admin
endpoints answer ``403 admin_disabled``.
"""

from __future__ import annotations

import hashlib
import hmac
from functools import lru_cache

from fastapi import Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from .errors import APIError, Unauthorized

API_KEY_HEADER = "X-API-Key"

_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="BearerKey",
    description="the gateway's API key (HRNET_API_KEY; the admin key "
    "HRNET_ADMIN_API_KEY for /admin/*) as a bearer token",
)
_api_key_header = APIKeyHeader(
    name=API_KEY_HEADER,
    auto_error=False,
    scheme_name="ApiKeyHeader",
    description="the gateway's API key (HRNET_API_KEY; the admin key "
    "HRNET_ADMIN_API_KEY for /admin/*)",
)


def configured_keys(settings, field: str = "api_key") -> list[str]:
    """The keys of ``settings.<field>`` (a SecretStr, comma-separated, blanks ignored); [] = none."""
    secret = getattr(settings, field, None)
    if secret is None:
        return []
    return [k.strip() for k in secret.get_secret_value().split(",") if k.strip()]


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()


@lru_cache(maxsize=8)
def _digests(keys: tuple[str, ...]) -> tuple[bytes, ...]:
    """SHA-256 of each configured key, once per key set (not per request)."""
    return tuple(_digest(k) for k in keys)


def key_matches(given: str, keys: list[str]) -> bool:
    """True when ``given`` equals one of ``keys``; constant time in the key contents and lengths
    (each key's digest is compared, no early exit)."""
    d = _digest(given)
    ok = False
    for kd in _digests(tuple(keys)):
        ok |= hmac.compare_digest(d, kd)
    return ok


def _check(
    keys: list[str], bearer: HTTPAuthorizationCredentials | None, api_key: str | None, what: str
) -> None:
    """Raise :class:`Unauthorized` unless the bearer token or ``X-API-Key`` is one of ``keys``."""
    given = [c for c in (bearer.credentials if bearer else None, api_key) if c]
    challenge = {"WWW-Authenticate": "Bearer"}
    if not given:
        raise Unauthorized(
            f"{what} is required: send 'Authorization: Bearer <key>' or '{API_KEY_HEADER}: <key>'",
            headers=challenge,
        )
    if not any(key_matches(g, keys) for g in given):
        raise Unauthorized(
            f"the {what.removeprefix('an ').removeprefix('the ')} is not valid", headers=challenge
        )


async def require_api_key(
    request: Request,
    bearer: HTTPAuthorizationCredentials | None = Security(_bearer),
    api_key: str | None = Security(_api_key_header),
) -> None:
    """FastAPI dependency: passes when no key is configured or a configured key was sent.

    Raises :class:`service.errors.Unauthorized` (401, JSON error, ``WWW-Authenticate: Bearer``)
    when the key is missing or wrong. Reads the keys from ``request.app.state.settings``.
    """
    keys = configured_keys(request.app.state.settings)
    if keys:
        _check(keys, bearer, api_key, "an API key")


async def require_admin_key(
    request: Request,
    bearer: HTTPAuthorizationCredentials | None = Security(_bearer),
    api_key: str | None = Security(_api_key_header),
) -> None:
    """FastAPI dependency of the administrative endpoints: passes when the admin key
    (``settings.admin_api_key``, one or several, comma-separated) was sent.

    Raises APIError 403 ``admin_disabled`` when no admin key is configured, and
    :class:`service.errors.Unauthorized` (401) when it is missing or wrong.
    """
    keys = configured_keys(request.app.state.settings, "admin_api_key")
    if not keys:
        raise APIError(
            "administrative endpoints are disabled: no admin key is configured "
            "(HRNET_ADMIN_API_KEY)",
            status_code=403,
            code="admin_disabled",
        )
    _check(keys, bearer, api_key, "the admin key")
