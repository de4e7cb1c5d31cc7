"""Parsing and validating user-given person boxes for ``POST /pose``."""
from __future__ import annotations

import math

import numpy as np

from .errors import InvalidBoxes
from .forms import load_json_field

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


def _show(v: object, limit: int = 120) -> str:
    """``repr(v)`` cut to ``limit`` characters for error messages."""
    r = repr(v)
    return r if len(r) <= limit else r[: limit - 3] + "..."


def parse_boxes(text: str, box_format: str, image_size: tuple[int, int],
                max_boxes: int) -> tuple[np.ndarray, np.ndarray]:
    """Parse the ``boxes`` form field.

    ``text``: JSON list of boxes, each ``[x, y, w, h]`` (``box_format="xywh"``) or
    ``[x1, y1, x2, y2]`` (``"xyxy"``), image pixels, optionally with a 5th value, the box score in
    [0, 1] (default 1.0). ``image_size``: (width, height).

    Returns ``(boxes_xyxy (N, 4) float32, scores (N,) float32)``. Raises :class:`InvalidBoxes`
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
    limit = MAX_CHARS_PER_BOX * max(1, max_boxes)
    if len(text) > limit:
        raise InvalidBoxes(f"'boxes' is {len(text)} characters long; at most {limit} are accepted "
                           f"(at most {max_boxes} boxes per request)")
    try:
        data = load_json_field(text)
    except ValueError as exc:
        raise InvalidBoxes(f"'boxes' is {exc}") from None
    if not isinstance(data, list):
        raise InvalidBoxes("'boxes' must be a JSON list of boxes")
    if len(data) > max_boxes:
        raise InvalidBoxes(f"{len(data)} boxes given; at most {max_boxes} per request")
    rows = []
    for i, box in enumerate(data):
        if not isinstance(box, list) or len(box) not in (4, 5):
            raise InvalidBoxes(f"box {i} must be a list of 4 numbers (or 5 with a score), got {_show(box)}")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box):
            raise InvalidBoxes(f"box {i} has a non-numeric value: {_show(box)}")
        rows.append([_finite_float(v) for v in box] + ([1.0] if len(box) == 4 else []))
    arr = np.asarray(rows, dtype=np.float64).reshape(-1, 5)
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InvalidBoxes(f"box {i} has a non-finite value (or one too large for a float): "
                           f"{_show(data[i])}")
    xyxy = arr[:, :4].copy()
    if box_format == "xywh":
        xyxy[:, 2:] += xyxy[:, :2]
    bad = (np.abs(xyxy) > MAX_COORDINATE).any(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InvalidBoxes(f"box {i} ({box_format} {_show(data[i])}) has a coordinate beyond "
                           f"±{MAX_COORDINATE:g} pixels")
    w, h = xyxy[:, 2] - xyxy[:, 0], xyxy[:, 3] - xyxy[:, 1]
    bad = (w <= 0) | (h <= 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InvalidBoxes(f"box {i} has zero or negative area ({box_format} {_show(data[i])})")
    bad = (w < MIN_BOX_SIDE) | (h < MIN_BOX_SIDE)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InvalidBoxes(f"box {i} ({box_format} {_show(data[i])}) is smaller than "
                           f"{MIN_BOX_SIDE:g} pixel on a side")
    img_w, img_h = image_size
    outside = (xyxy[:, 2] <= 0) | (xyxy[:, 3] <= 0) | (xyxy[:, 0] >= img_w) | (xyxy[:, 1] >= img_h)
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise InvalidBoxes(f"box {i} ({box_format} {_show(data[i])}) lies entirely outside the "
                           f"{img_w}x{img_h} image")
    scores = arr[:, 4]
    bad = (scores < 0) | (scores > 1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InvalidBoxes(f"box {i} has score {scores[i]} outside [0, 1]")
    return xyxy.astype(np.float32), scores.astype(np.float32)
