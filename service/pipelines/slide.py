"""Slide-window geometry of MMSeg 1.x's ``EncoderDecoder.slide_inference`` (numpy, no torch).

The windows over a network input, the window crops sent to the backend, and the canvas their
logits are averaged into (sum over the windows covering a pixel / their number, MMSeg's
``count_mat``). Sizes are pixels of the network input (after the test resize); ``crop`` and
``stride`` are ``(h, w)`` as in MMSeg's ``test_cfg``; windows are ``[x1, y1, x2, y2]`` rows, end
exclusive.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ..cards import SegTestPipeline
from ..interpolate import STRIP_ELEMENTS, ArrayRows, ResizedRows

#: Slide window used when slide inference is needed but the card names no crop (h, w): the
#: Cityscapes slide configs' 1024x1024 crop with a 768 stride.
DEFAULT_CROP = (1024, 1024)
DEFAULT_STRIDE = (768, 768)


def slide_windows(
    height: int, width: int, crop: tuple[int, int], stride: tuple[int, int]
) -> np.ndarray:
    """Windows of MMSeg's ``slide_inference`` over an ``height x width`` network input.

    ``crop`` and ``stride`` are ``(h, w)`` in pixels (as in ``test_cfg``). There are
    ``max(H - crop_h + stride_h - 1, 0) // stride_h + 1`` window rows (likewise columns); a window
    starts at ``idx * stride``, ends at ``min(start + crop, H)`` and is then moved back to start at
    ``max(end - crop, 0)``, so every window has size ``min(crop, image)``.
    Returns ``(M, 4)`` int64 rows ``[x1, y1, x2, y2]`` (end exclusive), row-major (top row first),
    the order MMSeg visits them: a new array each call, from the geometry cached per
    ``(height, width, crop, stride)`` (:func:`window_grid`). Raises ValueError for non-positive
    sizes.
    """
    grid = window_grid(
        int(height), int(width), (int(crop[0]), int(crop[1])), (int(stride[0]), int(stride[1]))
    )
    return np.array(grid, dtype=np.int64)


@lru_cache(maxsize=256)
def window_grid(
    height: int, width: int, crop: tuple[int, int], stride: tuple[int, int]
) -> tuple[tuple[int, int, int, int], ...]:
    """:func:`slide_windows` as immutable ``(x1, y1, x2, y2)`` tuples; a pure function of its
    (int) arguments, cached (the last 256 geometries). Raises ValueError for non-positive sizes."""
    ch, cw = crop
    sh, sw = stride
    if min(height, width, ch, cw, sh, sw) <= 0:
        raise ValueError(
            f"sizes must be positive: image {height}x{width}, crop {crop}, stride {stride}"
        )

    def axis(n: int, c: int, s: int) -> tuple[np.ndarray, np.ndarray]:
        grids = max(n - c + s - 1, 0) // s + 1
        end = np.minimum(np.arange(grids, dtype=np.int64) * s + c, n)
        return np.maximum(end - c, 0), end

    y1, y2 = axis(height, ch, sh)
    x1, x2 = axis(width, cw, sw)
    gy = np.repeat(np.arange(len(y1)), len(x1))
    gx = np.tile(np.arange(len(x1)), len(y1))
    rows = np.stack([x1[gx], y1[gy], x2[gx], y2[gy]], axis=1).tolist()
    return tuple((a, b, c, d) for a, b, c, d in rows)


def window_counts(height: int, width: int, windows: np.ndarray) -> np.ndarray:
    """``(H, W)`` float32: how many windows cover each pixel (MMSeg's ``count_mat``)."""
    count = np.zeros((height, width), np.float32)
    for x1, y1, x2, y2 in np.asarray(windows, np.int64):
        count[y1:y2, x1:x2] += 1.0
    return count


def _divide_by_counts(preds: np.ndarray, windows: np.ndarray) -> np.ndarray:
    """``preds`` (``(H, W, C)`` window sums) divided in place by :func:`window_counts`.
    Raises ValueError when a pixel is covered by no window."""
    count = window_counts(preds.shape[0], preds.shape[1], windows)
    if (count == 0).any():
        raise ValueError("some pixels are covered by no window")
    preds /= count[..., None]
    return preds


def slide_geometry(spec: SegTestPipeline | None) -> tuple[tuple[int, int], tuple[int, int]]:
    """Slide ``(crop, stride)`` as ``(h, w)`` pixels of the network input for a card's test pipeline
    ``spec`` (None: the defaults): its ``crop_size`` / ``stride``; a crop without stride strides
    3/4 of it; no crop: :data:`DEFAULT_CROP` / :data:`DEFAULT_STRIDE`."""
    spec = spec or SegTestPipeline()
    crop = tuple(spec.crop_size) if spec.crop_size else DEFAULT_CROP
    stride = (
        tuple(spec.stride)
        if spec.stride
        else (DEFAULT_STRIDE if not spec.crop_size else tuple(max(1, (3 * c) // 4) for c in crop))
    )
    return crop, stride  # type: ignore[return-value]


def cut_windows(
    x: np.ndarray, windows: np.ndarray, lo: int = 0, hi: int | None = None
) -> np.ndarray:
    """Window crops ``lo..hi-1`` of the image-major sequence "every window of image 0, then of
    image 1, ...": ``(hi - lo, 3, h_c, w_c)`` contiguous float32 (``x``: ``(N, 3, h, w)``)."""
    m = len(windows)
    hi = len(x) * m if hi is None else hi
    parts = []
    for k in range(lo, hi):
        x1, y1, x2, y2 = windows[k % m]
        parts.append(x[k // m, :, y1:y2, x1:x2])
    return np.stack(parts)


def merge_windows(
    head: np.ndarray, windows: np.ndarray, h: int, w: int, align_corners: bool
) -> np.ndarray:
    """Slide canvas ``(h, w, C)`` from per-window head outputs ``(M, h', w', C)``.

    MMSeg's ``slide_inference`` canvas: each window's logits resized bilinearly to the window's
    size (torch semantics, :class:`service.interpolate.ResizedRows`) and added in window order,
    then divided by the window count; each window's resize is added strip by strip, so no
    full-size window logit map is materialised. Raises ValueError when a pixel is covered by no
    window.
    """
    windows = np.asarray(windows, np.int64)
    n_cls = head.shape[-1]
    preds = np.zeros((h, w, n_cls), np.float32)
    for k, (x1, y1, x2, y2) in enumerate(windows):
        wh, ww = int(y2 - y1), int(x2 - x1)
        resized = ResizedRows(ArrayRows(head[k]), wh, ww, align_corners)
        step = max(1, STRIP_ELEMENTS // (max(ww, head.shape[2]) * n_cls))
        for lo in range(0, wh, step):
            hi = min(wh, lo + step)
            preds[y1 + lo : y1 + hi, x1:x2] += resized.rows(lo, hi)
    return _divide_by_counts(preds, windows)
