"""Administrative endpoints, behind the admin API key: ``POST /admin/reload``."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from ..auth import require_admin_key
from ..backends.base import ReloadNotSupported
from ..errors import error_body, error_response
from ..schemas import ReloadResponse, error_responses

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin_key)])


@router.post(
    "/reload",
    response_model=ReloadResponse,
    responses={
        **error_responses(
            {
                401: "missing or wrong admin key (unauthorized)",
                403: "no admin key configured (admin_disabled)",
                501: "the backend cannot reload while running (reload_not_supported)",
                503: "the gateway is shutting down (shutting_down)",
            }
        ),
        422: {
            "model": ReloadResponse,
            "description": "some entries were refused (reload_refused; "
            "the report says why); the other changes were "
            "applied",
        },
    },
)
async def reload_models(request: Request) -> JSONResponse:
    """Load the model repository's changes without a restart (also done on SIGHUP).

    New and changed entries are loaded beside the running models and swapped in atomically;
    requests in flight finish on the models they started with. A broken entry (invalid card,
    missing or unloadable ONNX, tensors not matching its card) is refused and its old version
    keeps serving: 422 with the report. Removed folders are unloaded.
    """
    try:
        report = await request.app.state.reloader.reload(request.app.state)
    except ReloadNotSupported as exc:
        return error_response(request, "reload_not_supported", str(exc), 501)
    body = report.as_dict()
    if report.refused:
        request.state.error_code = "reload_refused"  # the cause counted in /metrics
        reasons = "; ".join(f"{name}: {why}" for name, why in report.refused.items())
        return JSONResponse(
            {
                **error_body(
                    "reload_refused",
                    f"refused entries kept their previous version (if any): {reasons}",
                ),
                **body,
            },
            status_code=422,
        )
    return JSONResponse(body)
