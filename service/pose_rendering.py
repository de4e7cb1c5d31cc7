"""Drawing pose results on the photo: boxes, skeleton links and joints coloured by their score.

Follows the look of MMPose 1.x ``PoseLocalVisualizer`` (boxes as rectangles, links as lines, joints
as filled circles, joints scoring below ``kpt_thr`` = 0.3 and links touching them left out), with
one deliberate change that the gateway's users asked for: a joint's colour encodes its score
(OpenCV's TURBO colour map, blue = 0 ... red = 1) instead of a fixed per-keypoint colour, so weak
joints are visible at a glance. Used by ``POST /pose`` with ``render=true`` for top-down and
bottom-up models alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

KPT_THR = 0.3  # MMPose PoseLocalVisualizer's default kpt_thr
BOX_COLOUR_BGR = (0, 255, 0)
LINK_COLOUR_BGR = (255, 255, 255)

# 256-entry TURBO lookup table, BGR uint8: score s in [0, 1] -> _TURBO[round(s * 255)]
_TURBO = cv2.applyColorMap(
    np.arange(256, dtype=np.uint8).reshape(-1, 1), cv2.COLORMAP_TURBO
).reshape(256, 3)


def score_colour(score: float) -> tuple[int, int, int]:
    """BGR colour of a joint with ``score`` (clipped to [0, 1]) on the TURBO colour map."""
    s = float(np.clip(score, 0.0, 1.0)) if np.isfinite(score) else 0.0
    b, g, r = _TURBO[int(round(s * 255))]
    return int(b), int(g), int(r)


def marker_sizes(width: int, height: int) -> tuple[int, int]:
    """``(joint radius, line thickness)`` in pixels for an image of ``width`` x ``height``: MMPose's
    radius 3 / line width 1 on photos up to 600 px, growing with the long side beyond that."""
    long_side = max(width, height)
    radius = max(3, int(round(long_side / 200)))
    return radius, max(1, radius // 2)


def draw_poses(
    image_bgr: np.ndarray,
    keypoints: np.ndarray,
    keypoint_scores: np.ndarray,
    skeleton: Sequence[Sequence[int]],
    boxes_xyxy: np.ndarray | None = None,
    kpt_thr: float = KPT_THR,
) -> np.ndarray:
    """A copy of the photo with every person drawn.

    ``image_bgr``: (H, W, 3) uint8. ``keypoints``: (P, K, 2) image pixels (x, y);
    ``keypoint_scores``: (P, K); ``skeleton``: pairs of keypoint indices (the card's);
    ``boxes_xyxy``: (P, 4) image pixels or None. Drawing order: boxes, links, then joints on top.
    Joints with score < ``kpt_thr`` or non-finite coordinates, and links touching them, are
    skipped. Returns a new (H, W, 3) uint8 BGR array. Raises ValueError for mismatched shapes.
    """
    image_bgr = np.asarray(image_bgr)
    if image_bgr.ndim != 3 or image_bgr.shape[2] != 3 or image_bgr.dtype != np.uint8:
        raise ValueError(
            f"expected an (H, W, 3) uint8 image, got {image_bgr.shape} {image_bgr.dtype}"
        )
    kpts = np.asarray(keypoints, np.float64).reshape(len(keypoints), -1, 2)
    scores = np.asarray(keypoint_scores, np.float64)
    if scores.shape != kpts.shape[:2]:
        raise ValueError(f"keypoint_scores {scores.shape} do not match keypoints {kpts.shape}")
    if boxes_xyxy is not None and np.asarray(boxes_xyxy).shape != (len(kpts), 4):
        raise ValueError(f"boxes {np.asarray(boxes_xyxy).shape} do not match {len(kpts)} persons")
    canvas = image_bgr.copy()
    h, w = canvas.shape[:2]
    radius, thickness = marker_sizes(w, h)
    visible = (scores >= kpt_thr) & np.isfinite(kpts).all(axis=-1)
    pts = np.round(np.where(np.isfinite(kpts), kpts, 0.0)).astype(np.int64)

    if boxes_xyxy is not None:
        for x1, y1, x2, y2 in np.round(np.asarray(boxes_xyxy, np.float64)).astype(np.int64):
            cv2.rectangle(
                canvas,
                (int(x1), int(y1)),
                (int(x2), int(y2)),
                BOX_COLOUR_BGR,
                thickness,
                cv2.LINE_AA,
            )
    for p in range(len(pts)):
        for a, b in skeleton:
            if visible[p, a] and visible[p, b]:
                cv2.line(
                    canvas,
                    tuple(map(int, pts[p, a])),
                    tuple(map(int, pts[p, b])),
                    LINK_COLOUR_BGR,
                    thickness,
                    cv2.LINE_AA,
                )
    for p, k in zip(*np.nonzero(visible)):
        cv2.circle(
            canvas, tuple(map(int, pts[p, k])), radius, score_colour(scores[p, k]), -1, cv2.LINE_AA
        )
    return canvas


def render_poses_png(
    image_bgr: np.ndarray,
    keypoints: np.ndarray,
    keypoint_scores: np.ndarray,
    skeleton: Sequence[Sequence[int]],
    boxes_xyxy: np.ndarray | None = None,
) -> bytes:
    """PNG bytes of :func:`draw_poses` (3-channel; decodes to the drawn BGR array)."""
    ok, buf = cv2.imencode(
        ".png", draw_poses(image_bgr, keypoints, keypoint_scores, skeleton, boxes_xyxy)
    )
    if not ok:  # pragma: no cover - cv2 encodes any uint8 (H, W, 3) array
        raise ValueError("PNG encoding failed")
    return buf.tobytes()
