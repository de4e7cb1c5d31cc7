"""Parsing and validating user-given person boxes for ``POST /pose``."""

from __future__ import annotations

import math

import numpy as np

from .errors import InvalidBoxes, show_value
from .forms import load_json_list_field
from .geometry import bbox_xywh2xyxy

MAX_COORDINATE = 1e6  # pixels; beyond this a box is a client bug, and float32 maths degrades
MIN_BOX_SIDE = 1.0  # pixels
#: characters of the ``boxes`` field allowed per permitted box (a generous bound on a pretty-printed
#: ``[x, y, w, h, score]`` row), checked before the JSON is parsed
MAX_CHARS_PER_BOX = 1000


def _finite_float(v: object) -> float:
    """``float(v)``; an integer too large for a float (``10**400``) becomes ``inf``."""
    try:
        return float(v)  # type: ignore[arg-type]
    except OverflowError:
        return math.inf if v > 0 else -math.inf  # type: ignore[operator]


def parse_boxes(
    text: str, box_format: str, image_size: tuple[int, int], max_boxes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Parse the ``boxes`` form field.

    ``text``: JSON list of boxes, each ``[x, y, w, h]`` (``box_format="xywh"``) or
    ``[x1, y1, x2, y2]`` (``"xyxy"``), image pixels, optionally with a 5th value, the box score in
    [0, 1] (default 1.0). ``image_size``: (width, height).

    Returns ``(boxes_xyxy (N, 4) float32, scores (N,) float32)``. Each number is cast to float32
    first and ``xywh`` boxes are then converted in float32 (``x2 = float32(x) + float32(w)``), the
    dtypes and order of MMPose 1.x ``BaseCocoStyleDataset._load_detection_results`` +
    ``bbox_xywh2xyxy``: a detection file's boxes sent as given give bit-identical crops. Raises :class:`InvalidBoxes`
    (422) naming the offending box for: invalid JSON, wrong nesting or length, non-finite values,
    a coordinate beyond ±``MAX_COORDINATE`` px, zero or negative area, a side shorter than
    ``MIN_BOX_SIDE`` px, a box entirely outside the image, a score outside [0, 1], or more than
    ``max_boxes`` boxes; also for hostile JSON (nesting too deep, integers too long to parse or
    too large for a float, a field longer than ``MAX_CHARS_PER_BOX * max_boxes`` characters).
    Boxes partly outside the image are kept as given (MMPose crops them with zero padding).
    """
    if box_format not in ("xywh", "xyxy"):
        raise InvalidBoxes(f"box_format must be 'xywh' or 'xyxy', got '{box_format}'")
    if not isinstance(text, str):
        raise InvalidBoxes("'boxes' must be a JSON text")
    try:
        data = load_json_list_field(
            text,
            "boxes",
            MAX_CHARS_PER_BOX * max(1, max_boxes),
            "boxes",
            f" (at most {max_boxes} boxes per request)",
        )
    except ValueError as exc:
        raise InvalidBoxes(str(exc)) from None
    if len(data) > max_boxes:
        raise InvalidBoxes(f"{len(data)} boxes given; at most {max_boxes} per request")
    rows = []
    for i, box in enumerate(data):
        if not isinstance(box, list) or len(box) not in (4, 5):
            raise InvalidBoxes(
                f"box {i} must be a list of 4 numbers (or 5 with a score), got {show_value(box)}"
            )
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box):
            raise InvalidBoxes(f"box {i} has a non-numeric value: {show_value(box)}")
        rows.append([_finite_float(v) for v in box] + ([1.0] if len(box) == 4 else []))
    arr = np.asarray(rows, dtype=np.float64).reshape(-1, 5)
    xyxy = arr[:, :4].copy()
    if box_format == "xywh":
        xyxy[:, 2:] += xyxy[:, :2]
    scores = arr[:, 4]
    causes = box_rejections(xyxy, scores, image_size)
    if not any(causes):
        # The box served: float32 first, then xywh -> xyxy in float32, as MMPose's COCO dataset
        # does with a detection file's JSON boxes. Its float64 twin above only names the rule a
        # box breaks; rechecking the float32 box catches the rare box that rounding pushes over.
        xyxy = arr[:, :4].astype(np.float32)
        if box_format == "xywh":
            xyxy = bbox_xywh2xyxy(xyxy)
        causes = box_rejections(xyxy, scores, image_size)
    for i, cause in enumerate(causes):
        if cause is not None:
            img_w, img_h = image_size
            what = f"box {i} ({box_format} {show_value(data[i])})"
            raise InvalidBoxes(
                {
                    "non_finite_box": f"{what} has a non-finite value (or one too large for a float)",
                    "coordinate_too_large": f"{what} has a coordinate beyond ±{MAX_COORDINATE:g} pixels",
                    "degenerate_box": f"{what} has zero or negative area",
                    "box_too_small": f"{what} is smaller than {MIN_BOX_SIDE:g} pixel on a side",
                    "box_outside_image": f"{what} lies entirely outside the {img_w}x{img_h} image",
                    "score_out_of_range": f"{what} has score {scores[i]} outside [0, 1]",
                }[cause]
            )
    return xyxy, scores.astype(np.float32)


def box_rejections(
    xyxy: np.ndarray, scores: np.ndarray, image_size: tuple[int, int]
) -> list[str | None]:
    """Why each box would be refused by ``POST /pose``, or None; the one rule set of the gateway.

    ``xyxy``: ``(N, 4)`` image pixels (any float dtype; checked as float64); ``scores``: ``(N,)``;
    ``image_size``: ``(width, height)``. Rules, first match wins: ``"non_finite_box"`` (NaN/inf
    coordinate or score), ``"coordinate_too_large"`` (beyond ±``MAX_COORDINATE`` px),
    ``"degenerate_box"`` (width or height <= 0), ``"box_too_small"`` (a side under
    ``MIN_BOX_SIDE`` px), ``"box_outside_image"`` (no overlap with ``[0, W) x [0, H)``),
    ``"score_out_of_range"`` (outside [0, 1]). Used by :func:`parse_boxes` and by hrnet-eval to
    skip boxes it would otherwise send in vain.
    """
    b = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
    sc = np.asarray(scores, dtype=np.float64).reshape(-1)
    img_w, img_h = image_size
    with np.errstate(invalid="ignore"):
        w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
        rules = [
            ("non_finite_box", ~(np.isfinite(b).all(axis=1) & np.isfinite(sc))),
            ("coordinate_too_large", (np.abs(b) > MAX_COORDINATE).any(axis=1)),
            ("degenerate_box", (w <= 0) | (h <= 0)),
            ("box_too_small", (w < MIN_BOX_SIDE) | (h < MIN_BOX_SIDE)),
            (
                "box_outside_image",
                (b[:, 2] <= 0) | (b[:, 3] <= 0) | (b[:, 0] >= img_w) | (b[:, 1] >= img_h),
            ),
            ("score_out_of_range", (sc < 0) | (sc > 1)),
        ]
    out: list[str | None] = [None] * len(b)
    for cause, hit in reversed(rules):  # earlier rules overwrite later ones: first match wins
        for i in np.flatnonzero(hit):
            out[i] = cause
    return out
