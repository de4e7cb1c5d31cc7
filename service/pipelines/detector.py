"""Person detection with an MMDeploy-exported RTMDet (NMS inside the graph).

Pre-processing follows MMDetection's RTMDet test pipeline: keep-ratio resize so the image fits the
input square (``Resize(scale=(S, S), keep_ratio=True)``, bilinear), pad bottom/right to ``S x S``
with ``pad_value`` (``Pad(size=(S, S), pad_val=114)``), normalise in BGR. Boxes come back in the
padded input's pixels and are divided by the per-axis resize factors, as MMDetection's
``scale_factor`` rescaling does, then clipped to the image.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..backends.base import Backend
from ..cards import ModelCard
from .common import to_input_tensor


@dataclass
class Detections:
    """``boxes`` (N, 4) float32 xyxy in original image pixels, ``scores`` (N,) float32."""

    boxes: np.ndarray
    scores: np.ndarray


def letterbox(image: np.ndarray, size: tuple[int, int], pad_value: float) -> tuple[np.ndarray, tuple[float, float]]:
    """Keep-ratio resize of ``(H, W, 3)`` into ``size=(w, h)`` then pad bottom/right.

    Returns the ``(h, w, 3)`` uint8 canvas and the ``(w_scale, h_scale)`` factors actually applied
    (new size / old size per axis, as mmcv's ``imrescale`` + MMDet's ``scale_factor``).
    """
    h, w = image.shape[:2]
    out_w, out_h = size
    scale = min(out_w / w, out_h / h)  # mmcv rescale_size with a square target
    new_w, new_h = max(int(w * scale + 0.5), 1), max(int(h * scale + 0.5), 1)
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    canvas = np.full((out_h, out_w, 3), pad_value, dtype=np.uint8)
    canvas[:new_h, :new_w] = resized
    return canvas, (new_w / w, new_h / h)


async def detect_persons(image_bgr: np.ndarray, card: ModelCard, backend: Backend,
                         score_threshold: float | None = None) -> Detections:
    """Run the detector on one ``(H, W, 3) uint8`` BGR image and keep person boxes above threshold.

    Boxes are sorted by descending score, at most ``card.detector.max_detections``.
    """
    spec = card.detector
    assert spec is not None
    thr = spec.score_threshold if score_threshold is None else score_threshold
    w_in, h_in = card.input_size
    canvas, (sx, sy) = letterbox(image_bgr, (int(w_in), int(h_in)), spec.pad_value)
    x = to_input_tensor(canvas[None], card.normalization)
    out = await backend.infer(card.name, {card.inputs[0].name: x})
    dets = np.asarray(out[card.outputs[0].name])[0]
    labels = np.asarray(out[card.outputs[1].name])[0] if len(card.outputs) > 1 else np.zeros(len(dets))
    keep = (labels == spec.person_label) & (dets[:, 4] >= thr)
    dets = dets[keep]
    order = np.argsort(-dets[:, 4], kind="stable")[: spec.max_detections]
    dets = dets[order]
    boxes = dets[:, :4] / np.array([sx, sy, sx, sy], dtype=np.float32)
    h, w = image_bgr.shape[:2]
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
    return Detections(boxes.astype(np.float32), dets[:, 4].astype(np.float32))
