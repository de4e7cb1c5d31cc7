"""FastAPI dependencies for the objects every router shares: settings, repository, backend.

The app's lifespan (:mod:`service.app`) puts them on ``app.state``; a reload
(:mod:`service.reload`) swaps the repository and the backend there atomically, so each request
reads them once, when its dependencies are resolved, and keeps those for its whole run. Use as
``settings: SettingsDep`` in a handler's signature (``Annotated[..., Depends(...)]``).

They are ``async def`` on purpose: FastAPI runs a plain ``def`` dependency in its thread pool, a
thread hand-off per dependency and request for what is an attribute read.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from .backends.base import Backend
from .repository import ModelRepository
from .settings import Settings


async def get_settings(request: Request) -> Settings:
    """The gateway's :class:`Settings`."""
    return request.app.state.settings


async def get_repository(request: Request) -> ModelRepository:
    """The model repository serving now (replaced by a reload)."""
    return request.app.state.repository


async def get_backend(request: Request) -> Backend:
    """The backend serving now (replaced by a reload; requests in flight keep theirs)."""
    return request.app.state.backend


SettingsDep = Annotated[Settings, Depends(get_settings)]
RepositoryDep = Annotated[ModelRepository, Depends(get_repository)]
BackendDep = Annotated[Backend, Depends(get_backend)]
