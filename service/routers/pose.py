"""``POST /pose``: keypoints of the people in a photo.

A top-down model estimates one person per given box, or per box the person detector finds; a
bottom-up model (HigherHRNet) finds every person itself and takes no boxes. Parameters are
validated first (overload was already refused before the body was read,
:mod:`service.shedding`); under the endpoint's concurrency limit
(``settings.pose_max_concurrency``) the model's dynamic batcher admits the request or refuses it
at once (503 ``overloaded`` + ``Retry-After``: queue full or deadline, :mod:`service.batching`);
decoding, detection, pose estimation and serialisation then run, their CPU work in worker
threads. Detector boxes are cut to the ``settings.max_boxes`` top-scoring ones.
"""

from __future__ import annotations

import asyncio
from typing import Literal

import numpy as np
from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import Response

from ..batching import admission
from ..boxes import parse_boxes
from ..cards import BottomUpCard, TopDownCard
from ..dependencies import BackendDep, RepositoryDep, SettingsDep
from ..errors import InvalidParameter, WrongTask
from ..forms import parse_scales_field
from ..geometry import bbox_xyxy2xywh
from ..limits import endpoint_slot
from ..observability import note, request_timer
from ..pipelines.bottomup import check_scales, estimate_poses_bottomup
from ..pipelines.detector import detect_persons
from ..pipelines.topdown import estimate_poses
from ..pose_rendering import render_poses_png
from ..schemas import INFERENCE_ERRORS, Person, PoseResponse
from .uploads import read_image

router = APIRouter(tags=["pose"])

#: ``scales`` presets of bottom-up models: ``ms`` = the scales behind MMPose 0.x's published
#: HigherHRNet multi-scale numbers
BOTTOMUP_SCALE_PRESETS: dict[str, tuple[float, ...]] = {"ms": (2.0, 1.0, 0.5)}

_PNG = {
    "content": {"image/png": {}},
    "description": "render=true: the photo with boxes, skeleton and joints coloured by score",
}


@router.post("/pose", response_model=PoseResponse, responses={**INFERENCE_ERRORS, 200: _PNG})
async def pose(
    request: Request,
    settings: SettingsDep,
    repo: RepositoryDep,
    backend: BackendDep,
    image: UploadFile = File(..., description="JPEG, PNG, WebP or BMP image"),
    boxes: str | None = Form(
        None,
        description="JSON list of [x,y,w,h(,score)] boxes; absent: the person detector finds them",
    ),
    box_format: Literal["xywh", "xyxy"] = Form("xywh"),
    model: str | None = Form(None, description="pose model name (default from settings)"),
    flip_test: bool | None = Form(None, description="default: the model card's setting"),
    detector: str | None = Form(None, description="detector model name (default from settings)"),
    score_threshold: float | None = Form(
        None, description="detector score threshold in [0, 1]: boxes scoring above it are kept"
    ),
    render: bool | None = Form(
        None,
        description="true: return the photo as PNG with boxes, "
        "skeleton and joints coloured by score",
    ),
    scales: str | None = Form(
        None,
        description="bottom-up models only: test scales as a JSON "
        "list (e.g. [2, 1, 0.5]; 1 must be among "
        "several) or 'ms' = [2, 1, 0.5]; default: "
        "the card's",
    ),
) -> PoseResponse | Response:
    """Keypoints (image pixels) for each given box, each person the detector finds, or each person
    a bottom-up model finds.

    Top-down models (MMPose 1.x test path): box -> center/scale (padding 1.25, aspect fix) ->
    affine crop -> one batched inference (flipped crops too when ``flip_test``) -> heatmap
    decoding (the card's codec) -> image pixels. Bottom-up models (HigherHRNet, as the original
    repo / MMPose 0.x test it): whole image per scale -> heatmaps + tags -> associative-embedding
    grouping, adjust, refine (:mod:`service.pipelines.bottomup`); ``box_source`` is ``bottomup``,
    each ``bbox`` encloses the person's found keypoints and ``bbox_score`` equals ``score``.
    ``render=true`` answers with the photo as PNG instead of JSON (boxes, skeleton, joints
    coloured by score; :mod:`service.pose_rendering`). Errors: 404 unknown model, 413 too large,
    415 not an image, 422 invalid boxes/parameters (also boxes, detector or threshold with a
    bottom-up model, scales with a top-down one) or wrong task, 500 inference failed, 503 backend
    unavailable, overloaded or draining.
    """
    timer = request_timer(request)
    name = model or settings.default_pose_model
    card = repo.get(name)
    note(request, model=card.name)
    if not isinstance(card, (TopDownCard, BottomUpCard)):
        raise WrongTask(f"model '{name}' is a {card.task} model, not a pose model")
    given = boxes is not None and boxes.strip() != ""
    if isinstance(card, BottomUpCard):
        extra = [
            f
            for f, v in (
                ("boxes", given),
                ("detector", detector),
                ("score_threshold", score_threshold is not None),
            )
            if v
        ]
        if extra:
            raise InvalidParameter(
                f"model '{name}' is bottom-up: it finds every person itself "
                f"and takes no {', '.join(repr(f) for f in extra)}"
            )
        try:
            test_scales = check_scales(
                parse_scales_field(scales, BOTTOMUP_SCALE_PRESETS), card.bottomup.scale_factor
            )
        except ValueError as exc:
            raise InvalidParameter(str(exc)) from None
    elif scales is not None and scales.strip():
        raise InvalidParameter(f"'scales' applies to bottom-up models; '{name}' is top-down")
    elif not given:
        if score_threshold is not None and not (0.0 <= score_threshold <= 1.0):
            raise InvalidParameter(f"score_threshold must be in [0, 1], got {score_threshold}")
        det_name = detector or settings.default_detector_model
        if not det_name:
            raise InvalidParameter(
                "no 'boxes' given and no person detector is configured "
                "(set HRNET_DEFAULT_DETECTOR_MODEL or pass 'detector')"
            )
        det_card = repo.get(det_name, task="detection")
    use_flip = card.flip_test if flip_test is None else flip_test

    # overload was refused before the body was read (service.shedding); then, one of the
    # endpoint's slots, and the model's dynamic batcher admits the request (or refuses it, 503 +
    # Retry-After, when its bounded queue is full) before any CPU work
    async with endpoint_slot(request, "pose"), admission(backend, card.name):
        with timer("decode_image"):
            img = await read_image(image, settings)
        h, w = img.shape[:2]

        if isinstance(card, BottomUpCard):
            result = await estimate_poses_bottomup(
                img, card, backend, flip_test=use_flip, scales=test_scales, timer=timer
            )
            source: Literal["given", "detector", "bottomup"] = "bottomup"
            xyxy, box_scores = result.boxes, result.person_scores
        else:
            if boxes is not None and given:
                xyxy, box_scores = parse_boxes(boxes, box_format, (w, h), settings.max_boxes)
                source = "given"
            else:
                thr = (
                    score_threshold
                    if score_threshold is not None
                    else settings.detector_score_threshold
                )
                with timer("detect"):
                    dets = await detect_persons(
                        img, det_card, backend, score_threshold=thr, max_boxes=settings.max_boxes
                    )
                xyxy, box_scores = dets.boxes, dets.scores
                source = "detector"
            result = await estimate_poses(
                img, xyxy, box_scores, card, backend, flip_test=use_flip, timer=timer
            )

        # one person per box (top-down), one box around each person found (bottom-up)
        note(request, box_source=source, boxes=len(xyxy), people=len(xyxy))
        if render:
            with timer("render"):
                png = await asyncio.to_thread(
                    render_poses_png,
                    img,
                    result.keypoints,
                    result.keypoint_scores,
                    card.output_skeleton,
                    xyxy,
                )
            return Response(
                content=png,
                media_type="image/png",
                headers={"X-Model": card.name, "X-Persons": str(len(xyxy))},
            )

        with timer("serialise"):
            # float64 before rounding, so the JSON carries decimals, not float32 noise: coordinates
            # to 1e-4 px, scores to 1e-6 (fine enough that rescoring/ranking is unchanged)
            xy = result.keypoints.astype(np.float64).round(4)
            ks = result.keypoint_scores.astype(np.float64).round(6)
            kpts = np.concatenate([xy, ks[..., None]], axis=-1)
            xywh = bbox_xyxy2xywh(xyxy).astype(np.float64)
            persons = [
                Person(bbox=b, bbox_score=s, keypoints=k, score=p)
                for b, s, k, p in zip(
                    xywh.round(3).tolist(),
                    box_scores.astype(np.float64).round(6).tolist(),
                    kpts.tolist(),
                    result.person_scores.astype(np.float64).round(6).tolist(),
                )
            ]
    return PoseResponse(
        model=card.name,
        image_size=[w, h],
        flip_test=use_flip,
        box_source=source,
        keypoint_names=card.output_keypoint_names,
        skeleton=[list(s) for s in card.output_skeleton],
        persons=persons,
        timing_ms=timer.total(),
    )
