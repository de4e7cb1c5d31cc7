"""Torch-free box / affine geometry for top-down pose (MMPose 1.x semantics).

Coordinates are image pixels ``(x, y)`` unless stated otherwise. Sizes are ``(width, height)``.
A person box goes through the same steps as MMPose's top-down test pipeline:

1. ``bbox_xyxy2cs`` (``GetBBoxCenterScale``, padding 1.25): center and scale (w, h) in pixels;
2. ``fix_aspect_ratio`` (``TopdownAffine._fix_aspect_ratio``): grow w or h to the input aspect;
3. ``get_warp_matrix`` / ``get_udp_warp_matrix`` + ``cv2.warpAffine(INTER_LINEAR)``
   (``TopdownAffine``): the input crop (``crop_persons``);
4. after decoding, ``keypoints_to_image`` (``TopdownPoseEstimator.add_pred_to_datasample``) maps
   input-space keypoints back to the image.

Everything here is numpy + OpenCV; no torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

__all__ = [
    "bbox_xywh2xyxy",
    "bbox_xyxy2xywh",
    "bbox_xyxy2cs",
    "fix_aspect_ratio",
    "get_warp_matrix",
    "get_udp_warp_matrix",
    "warp_matrices",
    "crop_persons",
    "keypoints_to_image",
    "affine_transform_points",
    "get_multi_scale_size",
    "get_bottomup_warp_matrix",
    "resize_align_multi_scale",
]


def _as_float(a) -> np.ndarray:
    """Array view of ``a``; floating dtypes are kept, anything else becomes float64."""
    arr = np.asarray(a)
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    return arr


def _boxes(b, name: str = "bboxes") -> np.ndarray:
    arr = _as_float(b)
    if arr.ndim != 2 or arr.shape[1] < 4:
        raise ValueError(
            f"{name} must have shape (N, 4) (extra columns such as a score are kept), "
            f"got {arr.shape}"
        )
    return arr


def _size2(size, name: str) -> tuple[float, float]:
    if len(size) != 2:
        raise ValueError(f"{name} must be (width, height), got {size!r}")
    w, h = size
    if not (w > 0 and h > 0):
        raise ValueError(f"{name} must be positive, got {size!r}")
    return w, h


def _check_scales(s: np.ndarray) -> None:
    """Raise ValueError unless every box scale ``(w, h)`` is finite and > 0 (pixels)."""
    bad = ~(np.isfinite(s) & (s > 0)).all(axis=-1)
    if bad.any():
        i = int(np.flatnonzero(np.atleast_1d(bad))[0])
        row = s.reshape(-1, 2)[i]
        raise ValueError(
            f"box scale must be finite and positive, got (w, h) = "
            f"({row[0]:g}, {row[1]:g}) for box {i}"
        )


def bbox_xywh2xyxy(b) -> np.ndarray:
    """Boxes ``(x, y, w, h)`` -> ``(x1, y1, x2, y2)``.

    Args:
        b: ``(N, 4)`` (or ``(N, 4+)``, extra columns such as a score are copied through) array of
            image pixels. Integer input is converted to float64; float dtypes are kept.

    Returns:
        New ``(N, 4+)`` float array; ``x2 = x + w``, ``y2 = y + h`` (no ``-1``), as MMPose's
        ``mmpose.structures.bbox.bbox_xywh2xyxy``.

    Raises:
        ValueError: wrong shape.
    """
    out = _boxes(b).copy()
    out[:, 2] += out[:, 0]
    out[:, 3] += out[:, 1]
    return out


def bbox_xyxy2xywh(b) -> np.ndarray:
    """Boxes ``(x1, y1, x2, y2)`` -> ``(x, y, w, h)`` with ``w = x2 - x1``, ``h = y2 - y1``.

    Shapes/dtypes as :func:`bbox_xywh2xyxy` (MMPose ``bbox_xyxy2xywh``). Raises ValueError on a
    wrong shape.
    """
    out = _boxes(b).copy()
    out[:, 2] -= out[:, 0]
    out[:, 3] -= out[:, 1]
    return out


def bbox_xyxy2cs(bboxes, padding: float = 1.25) -> tuple[np.ndarray, np.ndarray]:
    """Boxes ``(x1, y1, x2, y2)`` -> ``(centers, scales)`` as MMPose's ``bbox_xyxy2cs`` /
    ``GetBBoxCenterScale(padding=1.25)``.

    Args:
        bboxes: ``(N, 4)`` (extra columns ignored) or a single ``(4,)`` box, image pixels.
        padding: factor multiplied into the scale (MMPose's top-down default is 1.25).

    Returns:
        ``centers`` ``(N, 2)`` = ``(x1 + x2) / 2, (y1 + y2) / 2`` and ``scales`` ``(N, 2)`` =
        ``(x2 - x1, y2 - y1) * padding``, both in image pixels (``(2,)`` each for a ``(4,)`` box).
        Float dtype of the input is kept (integers become float64).

    Raises:
        ValueError: wrong shape.
    """
    arr = _as_float(bboxes)
    single = arr.ndim == 1
    if single:
        arr = arr[None]
    arr = _boxes(arr)
    xy1, xy2 = arr[:, 0:2], arr[:, 2:4]
    centers = (xy1 + xy2) * 0.5
    scales = (xy2 - xy1) * padding
    if single:
        return centers[0], scales[0]
    return centers, scales


def fix_aspect_ratio(scales, aspect_ratio: float) -> np.ndarray:
    """Grow each box scale to the model's aspect ratio, as ``TopdownAffine._fix_aspect_ratio``.

    Args:
        scales: ``(N, 2)`` box scales ``(w, h)`` in pixels.
        aspect_ratio: model input ``width / height`` (e.g. 192/256 = 0.75).

    Returns:
        ``(N, 2)``: ``(w, w / aspect_ratio)`` where ``w > h * aspect_ratio``, else
        ``(h * aspect_ratio, h)``; the box only ever grows.

    Raises:
        ValueError: wrong shape or non-positive ``aspect_ratio``.
    """
    s = _as_float(scales)
    if s.ndim != 2 or s.shape[1] != 2:
        raise ValueError(f"scales must have shape (N, 2), got {s.shape}")
    if not aspect_ratio > 0:
        raise ValueError(f"aspect_ratio must be positive, got {aspect_ratio!r}")
    w, h = s[:, 0:1], s[:, 1:2]
    return np.where(
        w > h * aspect_ratio,
        np.concatenate([w, w / aspect_ratio], axis=1),
        np.concatenate([h * aspect_ratio, h], axis=1),
    )


def _rotate(vec: np.ndarray, rot_rad: float) -> np.ndarray:
    c, s = math.cos(rot_rad), math.sin(rot_rad)
    return np.array([c * vec[0] - s * vec[1], s * vec[0] + c * vec[1]])


def _perp_third_point(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``b`` plus ``a - b`` turned by 90 degrees: ``b + (-(a-b)_y, (a-b)_x)`` (works on (..., 2))."""
    d = a - b
    return b + np.stack([-d[..., 1], d[..., 0]], axis=-1)


def get_warp_matrix(
    center,
    scale,
    rot: float,
    output_size: Sequence[float],
    shift: Sequence[float] = (0.0, 0.0),
    inv: bool = False,
) -> np.ndarray:
    """The (non-UDP) top-down affine matrix, MMPose ``get_warp_matrix`` (fix_aspect_ratio=True).

    Three point pairs (float32, as upstream) are solved with ``cv2.getAffineTransform``: the box
    center ``c + scale * shift`` -> crop center ``(w/2, h/2)``; the point half a box *width* to the
    left of it (rotated by ``rot``) -> ``(0, h/2)``; and the third point perpendicular to those.
    Only the box width sets the zoom (``w / scale_w`` on both axes), so call
    :func:`fix_aspect_ratio` first.

    Args:
        center: ``(2,)`` box center, image pixels.
        scale: ``(2,)`` box size ``(w, h)``, image pixels.
        rot: rotation in degrees (counter-clockwise in image axes as upstream).
        output_size: crop size ``(w, h)`` in pixels.
        shift: translation as a fraction of the scale.
        inv: False -> image-to-crop matrix; True -> crop-to-image.

    Returns:
        ``(2, 3)`` float64 matrix ``M`` with ``[x', y'] = M @ [x, y, 1]``.

    Raises:
        ValueError: wrong lengths, a non-positive output size, or a scale that is not finite and
            positive (a zero-size box has no affine crop; upstream would hand OpenCV a degenerate
            point triple).
    """
    center = np.asarray(center, dtype=np.float64).reshape(-1)
    scale = np.asarray(scale, dtype=np.float64).reshape(-1)
    shift = np.asarray(shift, dtype=np.float64).reshape(-1)
    if center.shape != (2,) or scale.shape != (2,) or shift.shape != (2,):
        raise ValueError("center, scale and shift must each have 2 values")
    _check_scales(scale)
    dst_w, dst_h = _size2(output_size, "output_size")
    rot_rad = math.radians(rot)

    src_dir = _rotate(np.array([-0.5 * scale[0], 0.0]), rot_rad)
    return _triple_transform(
        center + scale * shift,
        center + src_dir + scale * shift,
        (0.5 * dst_w, 0.5 * dst_h),
        (0.0, 0.5 * dst_h),
        inv,
    )


def _triple_transform(src0, src1, dst0, dst1, inv: bool) -> np.ndarray:
    """``cv2.getAffineTransform`` of two point pairs plus the third points perpendicular to them,
    every point rounded to float32 first, as upstream's ``get_affine_transform`` /
    ``get_warp_matrix`` do (the rounding decides the matrix's last bits). ``(2, 3)`` float64;
    ``inv`` swaps source and destination."""
    src = np.zeros((3, 2), dtype=np.float32)
    src[0], src[1] = src0, src1
    src[2] = _perp_third_point(src[0], src[1])
    dst = np.zeros((3, 2), dtype=np.float32)
    dst[0], dst[1] = dst0, dst1
    dst[2] = _perp_third_point(dst[0], dst[1])
    if inv:
        return cv2.getAffineTransform(dst, src)
    return cv2.getAffineTransform(src, dst)


def get_udp_warp_matrix(center, scale, rot: float, output_size: Sequence[float]) -> np.ndarray:
    """The UDP (unbiased data processing) affine matrix, MMPose ``get_udp_warp_matrix``.

    With ``sx = (w - 1) / scale_w`` and ``sy = (h - 1) / scale_h`` (separate zooms per axis) and
    rotation ``rot``: ``x' = sx * (cos r (x - cx) - sin r (y - cy) + scale_w / 2)``,
    ``y' = sy * (sin r (x - cx) + cos r (y - cy) + scale_h / 2)``. The box center lands on the
    crop's center *pixel* ``((w - 1) / 2, (h - 1) / 2)`` and the box edges on pixel centers 0 and
    ``w - 1``.

    Args:
        center: ``(2,)`` box center, image pixels.
        scale: ``(2,)`` box size ``(w, h)``, image pixels.
        rot: rotation in degrees.
        output_size: crop size ``(w, h)`` in pixels.

    Returns:
        ``(2, 3)`` float32 image-to-crop matrix (float32 as upstream).

    Raises:
        ValueError: wrong lengths, a non-positive output size, or a scale that is not finite and
            positive.
    """
    center = np.asarray(center, dtype=np.float64).reshape(-1)
    scale = np.asarray(scale, dtype=np.float64).reshape(-1)
    if center.shape != (2,) or scale.shape != (2,):
        raise ValueError("center and scale must each have 2 values")
    _check_scales(scale)
    out_w, out_h = _size2(output_size, "output_size")
    r = math.radians(rot)
    c, s = math.cos(r), math.sin(r)
    sx = (out_w - 1) / scale[0]
    sy = (out_h - 1) / scale[1]
    cx, cy = center
    m = np.zeros((2, 3), dtype=np.float32)
    m[0] = (c * sx, -s * sx, sx * (-c * cx + s * cy + 0.5 * scale[0]))
    m[1] = (s * sy, c * sy, sy * (-s * cx - c * cy + 0.5 * scale[1]))
    return m


def warp_matrices(
    centers, scales, output_size: Sequence[float], use_udp: bool = False
) -> np.ndarray:
    """Image-to-crop matrices for many boxes at once (rotation 0).

    Bit-identical to :func:`get_warp_matrix` (``use_udp=False``; it is called box by box) or
    :func:`get_udp_warp_matrix` (``use_udp=True``, vectorised with the same float64 operations in
    the same order) applied box by box.

    Args:
        centers: ``(N, 2)`` box centers, image pixels.
        scales: ``(N, 2)`` box sizes ``(w, h)`` (normally after :func:`fix_aspect_ratio`).
        output_size: crop size ``(w, h)``.
        use_udp: UDP matrix (``TopdownAffine(use_udp=True)``).

    Returns:
        ``(N, 2, 3)`` float64 (standard, from ``cv2.getAffineTransform``) or float32 (UDP)
        matrices.

    Raises:
        ValueError: wrong shapes, a non-positive output size, or a box scale that is not finite
            and positive (for the standard matrix a zero scale makes the point system singular;
            callers validate boxes to at least 1 pixel a side first).
    """
    c = np.asarray(centers, dtype=np.float64)
    s = np.asarray(scales, dtype=np.float64)
    if c.ndim != 2 or c.shape[1] != 2 or s.shape != c.shape:
        raise ValueError(
            f"centers and scales must both have shape (N, 2), got {c.shape} and {s.shape}"
        )
    _check_scales(s)
    out_w, out_h = _size2(output_size, "output_size")
    n = c.shape[0]
    if use_udp:
        m = np.zeros((n, 2, 3), dtype=np.float64)
        sx = (out_w - 1) / s[:, 0]
        sy = (out_h - 1) / s[:, 1]
        m[:, 0, 0] = sx
        m[:, 0, 2] = sx * (0.5 * s[:, 0] - c[:, 0])
        m[:, 1, 1] = sy
        m[:, 1, 2] = sy * (0.5 * s[:, 1] - c[:, 1])
        return m.astype(np.float32)

    # Box by box through get_warp_matrix, i.e. cv2.getAffineTransform on upstream's float32 point
    # triples: a closed-form float64 solve differs from OpenCV's in the last bits, which moves
    # warpAffine's fixed-point rounding for about 2% of crops.
    m = np.zeros((n, 2, 3), dtype=np.float64)
    for i in range(n):
        m[i] = get_warp_matrix(c[i], s[i], 0.0, (out_w, out_h))
    return m


def crop_persons(
    image: np.ndarray, centers, scales, output_size: Sequence[int], use_udp: bool = False
) -> np.ndarray:
    """Cut the model-input crops out of one image, as ``TopdownAffine`` does per instance.

    Each crop is ``cv2.warpAffine(image, M, (w, h), flags=cv2.INTER_LINEAR)`` (constant 0
    border) with ``M`` from :func:`warp_matrices` (rotation 0). No aspect-ratio fixing happens
    here: pass scales through :func:`fix_aspect_ratio` first.

    Args:
        image: ``(H, W, 3)`` uint8 image (channel order untouched).
        centers: ``(N, 2)`` box centers, image pixels.
        scales: ``(N, 2)`` box sizes ``(w, h)``, image pixels.
        output_size: crop size ``(w, h)``, ints.
        use_udp: UDP matrix instead of the standard one.

    Returns:
        ``(N, h, w, 3)`` uint8 (``(0, h, w, 3)`` when there are no boxes).

    Raises:
        ValueError: image not ``(H, W, 3)`` uint8, bad box shapes/size, or a scale that is not
            finite and positive.
    """
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"image must be an (H, W, 3) uint8 array, got {img.shape} {img.dtype}")
    out_w, out_h = (int(v) for v in output_size)
    mats = warp_matrices(centers, scales, (out_w, out_h), use_udp=use_udp)
    out = np.empty((mats.shape[0], out_h, out_w, 3), dtype=np.uint8)
    for i, m in enumerate(mats):
        cv2.warpAffine(img, m, (out_w, out_h), dst=out[i], flags=cv2.INTER_LINEAR)
    return out


def keypoints_to_image(keypoints, centers, scales, input_size: Sequence[float]) -> np.ndarray:
    """Input-crop keypoints -> image pixels, as ``TopdownPoseEstimator.add_pred_to_datasample``.

    ``kpt_image = kpt_input / input_size * scale + center - 0.5 * scale`` per box. For the
    standard warp this inverts :func:`get_warp_matrix` exactly (given aspect-fixed scales); for UDP
    it inverts the chain warp -> :class:`~service.codecs.udp_heatmap.UDPHeatmap` decode, whose
    "input space" is scaled by ``w / (W_heatmap - 1)`` for this reason.

    Args:
        keypoints: ``(N, K, 2)`` (or ``(N, K, D>=2)``, extra columns copied) in input-crop pixels.
        centers: ``(N, 2)`` box centers; scales: ``(N, 2)`` box sizes (after aspect fixing).
        input_size: model input ``(w, h)``.

    Returns:
        New ``(N, K, 2)`` float array in image pixels.

    Raises:
        ValueError: inconsistent shapes.
    """
    k = _as_float(keypoints)
    c = np.asarray(centers, dtype=np.float64)
    s = np.asarray(scales, dtype=np.float64)
    if k.ndim != 3 or k.shape[2] < 2:
        raise ValueError(f"keypoints must have shape (N, K, 2), got {k.shape}")
    if c.shape != (k.shape[0], 2) or s.shape != (k.shape[0], 2):
        raise ValueError(
            f"centers/scales must have shape ({k.shape[0]}, 2), got {c.shape} and {s.shape}"
        )
    size = np.asarray(_size2(input_size, "input_size"), dtype=np.float64)
    out = k.astype(np.result_type(k.dtype, np.float64), copy=True)
    out[..., :2] = k[..., :2] / size * s[:, None, :] + c[:, None, :] - 0.5 * s[:, None, :]
    return out


def affine_transform_points(points, matrix) -> np.ndarray:
    """Apply a 2x3 affine matrix to points: ``[x', y'] = M[:, :2] @ [x, y] + M[:, 2]``.

    Args:
        points: ``(..., 2)`` points.
        matrix: ``(2, 3)``, or ``(N, 2, 3)`` with ``points`` shaped ``(N, ..., 2)`` (one matrix per
            leading index, e.g. per box).

    Returns:
        float64 array shaped like ``points`` (what ``cv2.transform`` gives, without its dtype
        restrictions).

    Raises:
        ValueError: bad shapes.
    """
    p = np.asarray(points, dtype=np.float64)
    m = np.asarray(matrix, dtype=np.float64)
    if p.shape[-1:] != (2,):
        raise ValueError(f"points must have shape (..., 2), got {p.shape}")
    if m.shape == (2, 3):
        return p @ m[:, :2].T + m[:, 2]
    if m.ndim == 3 and m.shape[1:] == (2, 3) and p.ndim >= 2 and p.shape[0] == m.shape[0]:
        lin = m[:, :2, :2].reshape((m.shape[0],) + (1,) * (p.ndim - 2) + (2, 2))
        off = m[:, :, 2].reshape((m.shape[0],) + (1,) * (p.ndim - 2) + (2,))
        return np.einsum("...ij,...j->...i", lin, p) + off
    raise ValueError(
        f"matrix must be (2, 3) or (N, 2, 3) matching points (N, ..., 2); "
        f"got {m.shape} for points {p.shape}"
    )


# ------------------------------------------------------------------ keep-ratio resize sizes


def scale_size(size_wh: tuple[int, int], factor: float | tuple[float, float]) -> tuple[int, int]:
    """``(w, h)`` scaled by ``factor`` and rounded half up: ``int(w * f + 0.5)``.

    Follows ``mmcv.image.geometric._scale_size``. ``factor`` is one number or ``(fw, fh)``.
    """
    fw, fh = (factor, factor) if isinstance(factor, (int, float)) else factor
    w, h = size_wh
    return int(w * float(fw) + 0.5), int(h * float(fh) + 0.5)


def rescale_size(
    size_wh: tuple[int, int], scale: float | tuple[int, int]
) -> tuple[tuple[int, int], float]:
    """New ``(w, h)`` and the factor for a keep-ratio resize (``mmcv.rescale_size``).

    ``scale`` is either a positive factor, or a ``(long, short)``-agnostic pair of edge limits:
    the factor is ``min(max(scale) / max(w, h), min(scale) / min(w, h))``, i.e. the image becomes
    as large as possible with its long edge <= ``max(scale)`` and short edge <= ``min(scale)``.
    The size is then :func:`scale_size` of the factor (pixels, rounded half up), each side clamped
    to at least 1 pixel. mmcv does not clamp: for an extreme aspect ratio (a 1x20000 image to
    (2048, 1024): factor 0.1024, ``int(1 * 0.1024 + 0.5) = 0``) it produces a 0-pixel side that
    ``cv2.resize`` then refuses, so MMSeg fails on such an image; we resize to 1 pixel instead.
    Raises ValueError for a non-positive factor or image size.
    """
    w, h = size_wh
    if w <= 0 or h <= 0:
        raise ValueError(f"image size must be positive, got {size_wh}")
    if isinstance(scale, (int, float)):
        if scale <= 0:
            raise ValueError(f"invalid scale factor {scale}, must be positive")
        factor = float(scale)
    else:
        long_edge, short_edge = max(scale), min(scale)
        factor = min(long_edge / max(h, w), short_edge / min(h, w))
    new_w, new_h = scale_size((w, h), factor)
    return (max(new_w, 1), max(new_h, 1)), factor


# ------------------------------------------------------------------ bottom-up (whole-image) resize


def _ceil_to_multiple(x: float, divisor: int) -> int:
    """``int((x + divisor - 1) // divisor * divisor)``: the HigherHRNet repo's rounding up.

    For a non-integer ``x`` whose fraction above a multiple is below 1 this rounds *down*
    (``x = 768.5`` -> 768 with divisor 64), as upstream's ``(x + 63) // 64 * 64`` does; MMPose 0.x's
    ``_ceil_to_multiples_of`` (``ceil(x / 64) * 64``) would give 832 there.
    """
    return int((x + divisor - 1) // divisor * divisor)


def get_multi_scale_size(
    image_wh: tuple[int, int],
    input_size: int,
    current_scale: float,
    min_scale: float,
    size_divisor: int = 64,
) -> tuple[tuple[int, int], np.ndarray, np.ndarray]:
    """Network input size, center and scale of one test scale of a bottom-up (whole-image) model.

    Follows ``get_multi_scale_size`` of the HigherHRNet repo (``lib/utils/transforms.py``): at the
    smallest test scale the short side becomes ``min_input = ceil64(min_scale * input_size)`` and
    the long side ``ceil64(min_input / short * long)`` (``ceil64`` = :func:`_ceil_to_multiple` with
    ``size_divisor``); other scales multiply both by ``current_scale / min_scale`` (``int()``
    truncation). So at scale 1 with one test scale, a 640x425 photo at ``input_size`` 512 becomes
    832x512 (``512 / 425 * 640 = 770.8`` -> 832).

    Args:
        image_wh: image ``(width, height)`` in pixels.
        input_size: short side at scale 1 (the card's ``bottomup.input_size``, 512 or 640).
        current_scale: this test scale (e.g. 2, 1 or 0.5).
        min_scale: the smallest of the request's test scales.
        size_divisor: both sides are multiples of it at ``min_scale`` (64 upstream).

    Returns:
        ``((w_resized, h_resized), center, scale)``: ``center`` ``(2,)`` float64 image pixels,
        ``(int(w / 2 + 0.5), int(h / 2 + 0.5))`` (rounded half up; MMPose 0.x uses Python's
        half-to-even ``round``, which differs for odd sides such as 425 -> 212 vs ours 213);
        ``scale`` ``(2,)`` float64 image pixels covered by the resized image, ``(w, h_r / w_r * w)``
        for a portrait image and ``(w_r / h_r * h, h)`` otherwise -- upstream's scale (units of 200
        px) times 200, computed in upstream's order so the float values match.

    Raises:
        ValueError: non-positive image size, scales or input size.
    """
    w, h = (int(v) for v in image_wh)
    if w <= 0 or h <= 0:
        raise ValueError(f"image size must be positive, got {image_wh}")
    if not (current_scale > 0 and min_scale > 0 and input_size > 0 and size_divisor > 0):
        raise ValueError(
            f"input_size, scales and size_divisor must be positive, got input_size="
            f"{input_size}, current_scale={current_scale}, min_scale={min_scale}, "
            f"size_divisor={size_divisor}"
        )
    center = np.array([int(w / 2.0 + 0.5), int(h / 2.0 + 0.5)], dtype=np.float64)
    min_input = _ceil_to_multiple(min_scale * input_size, size_divisor)
    ratio = current_scale / min_scale
    if w < h:
        w_r = int(min_input * ratio)
        h_r = int(_ceil_to_multiple(min_input / w * h, size_divisor) * ratio)
        scale = np.array([w / 200.0, h_r / w_r * w / 200.0]) * 200.0
    else:
        h_r = int(min_input * ratio)
        w_r = int(_ceil_to_multiple(min_input / h * w, size_divisor) * ratio)
        scale = np.array([w_r / h_r * h / 200.0, h / 200.0]) * 200.0
    if w_r <= 0 or h_r <= 0:
        raise ValueError(f"scale {current_scale} gives an empty input ({w_r}x{h_r})")
    return (w_r, h_r), center, scale


def get_bottomup_warp_matrix(
    center, scale, output_size: Sequence[float], inv: bool = False, rot: float = 0.0
) -> np.ndarray:
    """The whole-image affine matrix of the HigherHRNet repo (``get_affine_transform``).

    The same similarity transform as :func:`get_warp_matrix` (zoom ``output_w / scale_w`` on both
    axes, ``center`` -> output center), but built from upstream's point triple: the second point
    lies half a *width* above the center (``center + (0, -scale_w / 2)`` -> ``(w/2, h/2 - w/2)``)
    instead of to its left. The float32 points then round as upstream's do, so the matrix equals
    upstream's exactly (the MMPose 1.x triple differs by up to 5e-4 px for some sizes).

    Args:
        center: ``(2,)`` image pixels. scale: ``(2,)`` image pixels covered (``(w, h)``).
        output_size: ``(w, h)`` of the resized image / heatmap in pixels.
        inv: False -> image-to-output; True -> output-to-image (``transform_preds``).
        rot: rotation in degrees (training's ``BottomUpRandomAffine``; 0 at test time): the
            second source point is turned by ``rot`` about the center as upstream's
            ``rotate_point`` (angle ``pi * rot / 180``).

    Returns:
        ``(2, 3)`` float64 matrix.

    Raises:
        ValueError: wrong lengths, non-positive output size or scale.
    """
    center = np.asarray(center, dtype=np.float64).reshape(-1)
    scale = np.asarray(scale, dtype=np.float64).reshape(-1)
    if center.shape != (2,) or scale.shape != (2,):
        raise ValueError("center and scale must each have 2 values")
    _check_scales(scale)
    dst_w, dst_h = _size2(output_size, "output_size")
    rot_rad = np.pi * rot / 180
    half = -0.5 * scale[0]  # upstream rotates (0, -scale_w / 2)
    src_dir = np.array(
        [
            0.0 * np.cos(rot_rad) - half * np.sin(rot_rad),
            0.0 * np.sin(rot_rad) + half * np.cos(rot_rad),
        ]
    )
    return _triple_transform(
        center,
        center + src_dir,
        (0.5 * dst_w, 0.5 * dst_h),
        np.array([0.5 * dst_w, 0.5 * dst_h]) + np.array([0.0, -0.5 * dst_w]),
        inv,
    )


def resize_align_multi_scale(
    image: np.ndarray,
    input_size: int,
    current_scale: float,
    min_scale: float,
    size_divisor: int = 64,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Resize a whole image for one bottom-up test scale (HigherHRNet ``resize_align_multi_scale``).

    The image is warped with :func:`get_bottomup_warp_matrix` (center/scale from
    :func:`get_multi_scale_size`, rotation 0) by ``cv2.warpAffine`` with bilinear interpolation
    and a constant 0 border, as upstream; the resized image keeps the aspect ratio, so the part
    beyond the photo's long side (the rounding up to ``size_divisor``) is black.

    Args:
        image: ``(H, W, C)`` uint8 image (channel order untouched).
        input_size, current_scale, min_scale, size_divisor: see :func:`get_multi_scale_size`.

    Returns:
        ``(resized (h_r, w_r, C) uint8, center (2,), scale (2,))``, center/scale in image pixels.

    Raises:
        ValueError: not an ``(H, W, C)`` image, or invalid sizes/scales.
    """
    img = np.asarray(image)
    if img.ndim != 3:
        raise ValueError(f"image must have shape (H, W, C), got {img.shape}")
    size, center, scale = get_multi_scale_size(
        (img.shape[1], img.shape[0]), input_size, current_scale, min_scale, size_divisor
    )
    m = get_bottomup_warp_matrix(center, scale, size)
    return cv2.warpAffine(img, m, size, flags=cv2.INTER_LINEAR), center, scale
