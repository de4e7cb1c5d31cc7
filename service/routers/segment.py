"""``POST /segment``: semantic segmentation of one uploaded image (MMSeg 1.x test semantics).

Form fields: ``image`` (file), ``model``, ``mode`` (``whole`` | ``slide``; default the card's),
``flip`` (``true``/``false``), ``scales`` (JSON list of TTA ratios, or ``"ms"`` for
``[0.5, 0.75, 1.0, 1.25, 1.5, 1.75]``), ``render`` (``true``: colour overlay PNG).

Response by ``Accept``: ``application/json`` (default) -> :class:`service.schemas.SegmentResponse`
with the label map as a base64 single-channel PNG; ``image/png`` -> that PNG itself;
``render=true`` -> the overlay PNG whatever ``Accept`` says. Every response carries
``X-Inference-Mode`` (``whole``, ``slide`` or ``slide,whole`` with TTA): a view whose network input
exceeds ``settings.seg_slide_pixels`` runs slide inference even when ``mode=whole`` was asked for.

At most ``settings.seg_max_concurrency`` requests decode/segment/encode at once (the others wait);
pre- and post-processing and PNG encoding run in worker threads.
"""

from __future__ import annotations

import asyncio
import base64

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import Response

from ..dependencies import BackendDep, RepositoryDep, SettingsDep
from ..errors import InvalidParameter, PayloadTooLarge
from ..forms import parse_scales_field
from ..limits import endpoint_slot
from ..observability import note, request_timer
from ..pipelines.common import StageTimer
from ..pipelines.seg_plan import SCALE_PRESETS, InputTooLarge, SegOptions, plan_segmentation
from ..pipelines.segmentation import run_segmentation
from ..rendering import encode_label_png, overlay, pixel_counts
from ..schemas import INFERENCE_ERRORS, SegmentResponse
from .uploads import read_image

router = APIRouter(tags=["segmentation"])

_PNG = {
    "content": {"image/png": {}},
    "description": "label map PNG (Accept: image/png) or overlay PNG (render=true)",
}


def prefers_png(accept: str | None) -> bool:
    """True when the ``Accept`` header ranks ``image/png`` above ``application/json``.

    Media ranges are weighed by their ``q`` (default 1); ``*/*``, ``image/*`` and
    ``application/*`` count for the types they cover; a tie goes to JSON (the default).
    """
    if not accept:
        return False
    q = {"application/json": -1.0, "image/png": -1.0}
    specificity = {"application/json": -1, "image/png": -1}
    for part in accept.split(","):
        fields = [f.strip() for f in part.split(";")]
        media = fields[0].lower()
        weight = 1.0
        for f in fields[1:]:
            if f.lower().startswith("q="):
                try:
                    weight = float(f[2:])
                except ValueError:
                    weight = 0.0
        for target in q:
            major = target.split("/")[0]
            spec = (
                2
                if media == target
                else 1
                if media == f"{major}/*"
                else 0
                if media == "*/*"
                else -1
            )
            if spec > specificity[target]:  # the most specific range decides (RFC 9110)
                specificity[target], q[target] = spec, weight
    return q["image/png"] > 0 and q["image/png"] > q["application/json"]


@router.post("/segment", response_model=SegmentResponse, responses={**INFERENCE_ERRORS, 200: _PNG})
async def segment(
    request: Request,
    response: Response,
    settings: SettingsDep,
    repo: RepositoryDep,
    backend: BackendDep,
    image: UploadFile = File(..., description="JPEG, PNG, WebP or BMP image"),
    model: str | None = Form(None, description="segmentation model name (default from settings)"),
    mode: str | None = Form(None, description="'whole' or 'slide' (default: the model card's)"),
    flip: bool | None = Form(None, description="add horizontally flipped views (TTA)"),
    scales: str | None = Form(
        None,
        description="TTA ratios of the image as a JSON list, "
        "or 'ms' = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]",
    ),
    render: bool | None = Form(None, description="true: return a colour overlay PNG"),
):
    """Per-pixel class ids for the image, as MMSeg 1.x's test pipeline computes them.

    Keep-ratio resize to the card's test scale, whole or slide inference, optional flip / multi-
    scale TTA (softmax averaged), logits resized to the original size, argmax. JSON by default;
    ``Accept: image/png`` returns the label PNG (255 = ignore), ``render=true`` a palette overlay.
    Errors: 404 unknown model, 413 too large, 415 not an image, 422 bad parameters or wrong task,
    503 backend unavailable.
    """
    timer = request_timer(request)

    name = model or settings.default_segment_model
    if not name:
        seg_models = sorted(n for n, c in repo.cards.items() if c.task == "segmentation")
        if len(seg_models) != 1:
            raise InvalidParameter(
                "no 'model' given and no default segmentation model configured; "
                f"available: {', '.join(seg_models) or 'none'}"
            )
        name = seg_models[0]
    card = repo.get(name, task="segmentation")
    note(request, model=card.name)

    if mode is not None and mode.strip() == "":
        mode = None
    try:  # the scales field is checked as it is parsed, the mode by SegOptions
        options = SegOptions(mode, bool(flip), parse_scales_field(scales, SCALE_PRESETS))
    except ValueError as exc:
        raise InvalidParameter(str(exc)) from None

    async with endpoint_slot(request, "segment"):
        with timer("decode_image"):
            img = await read_image(image, settings)
        h, w = img.shape[:2]
        try:  # the views for this image (a ratio may shrink it to nothing or blow it up)
            plan = plan_segmentation(
                (w, h),
                card,
                options,
                slide_pixels=settings.seg_slide_pixels,
                max_input_pixels=settings.seg_max_input_pixels,
            )
        except InputTooLarge as exc:
            raise PayloadTooLarge(str(exc)) from None
        except ValueError as exc:
            raise InvalidParameter(str(exc)) from None

        result = await run_segmentation(
            img, card, backend, plan, max_call_pixels=settings.seg_max_call_pixels, timer=timer
        )
        label = result.label_map
        modes = ",".join(sorted({a.mode for a in result.augmentations}))

        if render:
            with timer("encode"):
                png = await asyncio.to_thread(overlay, img, label, card.palette or None)
            return _png_response(png, card.name, w, h, timer, modes)
        if prefers_png(request.headers.get("accept")):
            with timer("encode"):
                png = await asyncio.to_thread(encode_label_png, label)
            return _png_response(png, card.name, w, h, timer, modes)
        with timer("encode"):
            b64, counts = await asyncio.to_thread(_encode_json_parts, label, card.classes)
        response.headers["X-Inference-Mode"] = modes
        return SegmentResponse(
            model=card.name,
            width=w,
            height=h,
            classes=card.classes,
            pixel_counts=counts,
            label_png=b64,
            timing_ms=timer.total(),
        )


def _encode_json_parts(label, classes) -> tuple[str, dict[str, int]]:
    """Base64 label PNG and per-class pixel counts (CPU work, run in a worker thread)."""
    return base64.b64encode(encode_label_png(label)).decode("ascii"), pixel_counts(label, classes)


def _png_response(
    png: bytes, model: str, w: int, h: int, timer: StageTimer, modes: str
) -> Response:
    timing = timer.total()
    server_timing = ", ".join(f"{k};dur={v:.1f}" for k, v in timing.items())
    return Response(
        content=png,
        media_type="image/png",
        headers={
            "X-Model": model,
            "X-Image-Size": f"{w}x{h}",
            "X-Inference-Mode": modes,
            "Server-Timing": server_timing,
        },
    )
