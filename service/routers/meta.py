"""Service metadata: ``GET /models``, ``/healthz`` (process alive), ``/readyz`` (can serve)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from ..auth import require_api_key
from ..dependencies import BackendDep, RepositoryDep

router = APIRouter(tags=["meta"])


@router.get(
    "/models",
    dependencies=[Depends(require_api_key)],
    responses={
        503: {"description": "the gateway is shutting down (shutting_down); see Retry-After"}
    },
)
async def models(repo: RepositoryDep, backend: BackendDep) -> dict:
    """Every model card in the repository, plus whether the backend has it loaded and, where the
    backend says, how it runs it (``runtime``, e.g. the OpenVINO backend's precision)."""
    out = []
    for name, card in sorted(repo.cards.items()):
        d = card.model_dump(mode="json")
        d["ready"] = await backend.ready(name)
        runtime = backend.describe(name)
        if runtime:
            d["runtime"] = runtime
        out.append(d)
    return {"backend": backend.name, "models": out}


@router.get("/healthz")
async def healthz() -> dict:
    """Liveness: 200 while the process serves HTTP (says nothing about the models)."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    responses={
        503: {
            "description": "not ready (a model or the backend), or "
            "draining after SIGTERM; see Retry-After"
        }
    },
)
async def readyz(request: Request, repo: RepositoryDep, backend: BackendDep) -> JSONResponse:
    """200 when the backend and every model of the repository are ready, else 503 with the list
    (503 ``draining`` from SIGTERM on)."""
    if request.app.state.drain.active:
        return JSONResponse({"status": "draining"}, status_code=503, headers={"Retry-After": "1"})
    try:
        not_ready = [n for n in sorted(repo.cards) if not await backend.ready(n)]
        server_ready = await backend.ready()
    except Exception as exc:  # backend unreachable
        return JSONResponse({"status": "not ready", "reason": str(exc)}, status_code=503)
    if not server_ready or not_ready:
        return JSONResponse(
            {"status": "not ready", "models_not_ready": not_ready},
            status_code=503,
            headers={"Retry-After": "1"},
        )
    return JSONResponse({"status": "ready", "models": sorted(repo.cards)})
