"""Person detection with an MMDeploy-exported RTMDet (class-aware NMS inside the graph), then
MMPose's person filtering.

Pre-processing follows MMDetection's RTMDet test pipeline: keep-ratio resize so the image fits the
input square (``Resize(scale=(S, S), keep_ratio=True)``, bilinear), pad bottom/right to ``S x S``
with ``pad_value`` (``Pad(size=(S, S), pad_val=114)``), normalise in BGR. Boxes come back in the
padded input's pixels and are divided by the per-axis resize factors, as MMDetection's
``scale_factor`` rescaling does, then clipped to the image.

Post-processing follows MMPose 1.x's top-down demo (``demo/topdown_demo_with_mmdet.py``) and
``Pose2DInferencer.preprocess_single``: keep the person label with ``score > bbox_thr`` (strictly
greater: the graph pads its fixed-size output with all-zero rows, which a threshold of 0 must not
let through), then ``mmpose.evaluation.functional.nms(bboxes, nms_thr)`` (greedy, IoU with the
legacy ``+1`` pixel convention, ``nms_thr=0.3``), see :func:`nms`. Two additions of ours: boxes
with a side under 1 pixel after clipping are dropped (MMPose would build a zero-size affine warp
from them), and at most ``max_detections`` / ``max_boxes`` top-scoring boxes are kept. One
deliberate difference: when no person remains, MMPose's inferencer falls back to one box covering
the whole image; we return no boxes (the API answers an empty ``persons`` list).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import cv2
import numpy as np

from ..backends.base import Backend
from ..boxes import MIN_BOX_SIDE
from ..cards import DetectorCard
from ..geometry import rescale_size
from .common import to_input_tensor


@dataclass
class Detections:
    """``boxes`` (N, 4) float32 xyxy in original image pixels, ``scores`` (N,) float32."""

    boxes: np.ndarray
    scores: np.ndarray


def letterbox(
    image: np.ndarray, size: tuple[int, int], pad_value: float
) -> tuple[np.ndarray, tuple[float, float]]:
    """Keep-ratio resize of ``(H, W, 3)`` into ``size=(w, h)`` then pad bottom/right.

    Returns the ``(h, w, 3)`` uint8 canvas and the ``(w_scale, h_scale)`` factors actually applied
    (new size / old size per axis, as mmcv's ``imrescale`` + MMDet's ``scale_factor``).
    """
    h, w = image.shape[:2]
    out_w, out_h = size
    new_w, new_h = rescale_size((w, h), (out_w, out_h))[0]  # mmcv imrescale, as MMDet's Resize
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    canvas = np.full((out_h, out_w, 3), pad_value, dtype=np.uint8)
    canvas[:new_h, :new_w] = resized
    return canvas, (new_w / w, new_h / h)


def nms(boxes_xyxy: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy IoU non-maximum suppression, as ``mmpose.evaluation.functional.nms``.

    ``boxes_xyxy``: ``(N, 4)`` float image pixels; ``scores``: ``(N,)``. Boxes are visited by
    descending score (ties: the later index first, as upstream's reversed ``argsort`` with a stable
    sort); each kept box suppresses every remaining box whose overlap with it is ``> iou_threshold``
    (kept: ``<=``). Overlap uses the legacy pixel-inclusive convention of upstream:
    ``area = (x2 - x1 + 1) * (y2 - y1 + 1)``, intersection sides ``max(0, min(x2) - max(x1) + 1)``,
    ``iou = inter / (area_a + area_b - inter)``, in float32 like upstream's float32 ``dets`` (the
    threshold compared as float32, NumPy 2's rule for a Python float against a float32 array).
    The IoU matrix is computed once, vectorised
    (``O(N^2)`` memory; N is at most the detector's output size), and the greedy pass walks it.

    Returns the kept indices, ``(K,)`` int64, in visiting order (descending score).
    Raises ValueError for mismatched shapes.
    """
    b = np.asarray(boxes_xyxy, dtype=np.float32)
    s = np.asarray(scores, dtype=np.float32)
    if b.ndim != 2 or b.shape[1] != 4 or s.shape != (b.shape[0],):
        raise ValueError(f"expected boxes (N, 4) and scores (N,), got {b.shape} and {s.shape}")
    n = len(b)
    if n == 0:
        return np.zeros((0,), np.int64)
    order = np.argsort(s, kind="stable")[::-1]
    b = b[order]
    one = np.float32(1.0)
    area = (b[:, 2] - b[:, 0] + one) * (b[:, 3] - b[:, 1] + one)
    iw = np.maximum(
        np.float32(0.0),
        np.minimum(b[:, None, 2], b[None, :, 2]) - np.maximum(b[:, None, 0], b[None, :, 0]) + one,
    )
    ih = np.maximum(
        np.float32(0.0),
        np.minimum(b[:, None, 3], b[None, :, 3]) - np.maximum(b[:, None, 1], b[None, :, 1]) + one,
    )
    inter = iw * ih
    with np.errstate(divide="ignore", invalid="ignore"):
        suppress = inter / (area[:, None] + area[None, :] - inter) > np.float32(iou_threshold)
    alive = np.ones(n, bool)
    keep = []
    for i in range(n):  # one step per kept box; the row test itself is vectorised
        if not alive[i]:
            continue
        keep.append(i)
        alive &= ~suppress[i]
    return order[np.asarray(keep, np.int64)].astype(np.int64)


def _prepare(image_bgr: np.ndarray, card: DetectorCard) -> tuple[np.ndarray, float, float]:
    spec = card.detector
    w_in, h_in = card.input_size
    if w_in is None or h_in is None:
        raise ValueError(
            f"detector card {card.name!r} needs a fixed input_size, got {card.input_size}"
        )
    canvas, (sx, sy) = letterbox(image_bgr, (int(w_in), int(h_in)), spec.pad_value)
    return to_input_tensor(canvas[None], card.normalization), sx, sy


def filter_detections(
    dets: np.ndarray,
    labels: np.ndarray,
    scale_xy: tuple[float, float],
    image_size: tuple[int, int],
    *,
    person_label: int,
    score_threshold: float,
    nms_threshold: float,
    max_detections: int,
) -> Detections:
    """The detector graph's raw output -> person boxes in image pixels (see the module notes).

    ``dets``: ``(M, 5)`` ``[x1, y1, x2, y2, score]`` in network-input pixels; ``labels``: ``(M,)``;
    ``scale_xy``: the letterbox's ``(w_scale, h_scale)``; ``image_size``: ``(width, height)``.
    Steps: rescale to the image and clip; keep ``label == person_label`` and
    ``score > score_threshold`` and both sides ``>= MIN_BOX_SIDE`` px; :func:`nms` at
    ``nms_threshold``; keep the ``max_detections`` top-scoring. Returns boxes sorted by descending
    score.
    """
    dets = np.asarray(dets, dtype=np.float32).reshape(-1, 5)
    labels = np.asarray(labels).reshape(-1)
    sx, sy = scale_xy
    w, h = image_size
    boxes = dets[:, :4] / np.array([sx, sy, sx, sy], dtype=np.float32)
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
    scores = dets[:, 4]
    keep = (
        (labels == person_label)
        & (scores > score_threshold)
        & (boxes[:, 2] - boxes[:, 0] >= MIN_BOX_SIDE)
        & (boxes[:, 3] - boxes[:, 1] >= MIN_BOX_SIDE)
    )
    boxes, scores = boxes[keep], scores[keep]
    order = nms(boxes, scores, nms_threshold)[: max(0, int(max_detections))]
    return Detections(boxes[order].astype(np.float32), scores[order].astype(np.float32))


async def detect_persons(
    image_bgr: np.ndarray,
    card: DetectorCard,
    backend: Backend,
    score_threshold: float | None = None,
    max_boxes: int | None = None,
) -> Detections:
    """Person boxes of one ``(H, W, 3) uint8`` BGR image (see :func:`filter_detections`).

    ``score_threshold``: ``bbox_thr`` (default the card's); a box is kept when its score is
    strictly greater. NMS at the card's ``detector.nms_threshold``. At most
    ``min(card.detector.max_detections, max_boxes)`` boxes, the top-scoring ones, sorted by
    descending score; none found: empty arrays. Letterboxing and normalisation run in a worker
    thread. Raises BackendError / BackendUnavailable from the backend.
    """
    spec = card.detector
    thr = spec.score_threshold if score_threshold is None else score_threshold
    x, sx, sy = await asyncio.to_thread(_prepare, image_bgr, card)
    out = await backend.infer(card.name, {card.inputs[0].name: x})
    dets = np.asarray(out[card.outputs[0].name])[0]
    labels = (
        np.asarray(out[card.outputs[1].name])[0] if len(card.outputs) > 1 else np.zeros(len(dets))
    )
    cap = spec.max_detections if max_boxes is None else min(spec.max_detections, max_boxes)
    h, w = image_bgr.shape[:2]
    return filter_detections(
        dets,
        labels,
        (sx, sy),
        (w, h),
        person_label=spec.person_label,
        score_threshold=thr,
        nms_threshold=spec.nms_threshold,
        max_detections=cap,
    )
