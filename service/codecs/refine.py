"""Heatmap argmax and sub-pixel refinement, vectorised over batch and keypoints (numpy + OpenCV).

Semantics follow MMPose 1.x ``mmpose/codecs/utils/post_processing.py`` (``get_heatmap_maximum``,
``gaussian_blur``) and ``refinement.py`` (``refine_keypoints``, ``refine_keypoints_dark``,
``refine_keypoints_dark_udp``), which loop over instances/keypoints; here every function works on a
whole ``(B, K, H, W)`` batch at once. All coordinates in this module are *heatmap* pixels
``(x, y)`` (column, row).

Deliberate differences from upstream, all confined to degenerate channels whose maximum is <= 0
(those keypoints are reported at ``-1`` with score <= 0 either way):

* ``gaussian_blur`` leaves a channel un-rescaled when its blurred maximum is 0 (upstream divides
  0/0 and fills the channel with NaN);
* ``refine_keypoints_dark_udp`` leaves ``-1`` locations at ``-1`` (upstream's flat indexing reads
  neighbouring channels / wraps around the array for them and returns an arbitrary value).
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = [
    "as_batch",
    "get_heatmap_maximum",
    "gaussian_blur",
    "refine_keypoints",
    "refine_keypoints_dark",
    "refine_keypoints_dark_udp",
]


def as_batch(heatmaps, heatmap_size: tuple[int, int] | None = None) -> np.ndarray:
    """Return heatmaps as a float32 ``(B, K, H, W)`` array (a ``(K, H, W)`` input gets ``B = 1``).

    ``heatmap_size``: the codec's ``(W, H)``; when given, the maps must have exactly that size.

    Raises:
        ValueError: not 3-D or 4-D, an empty spatial size, or a size other than ``heatmap_size``.
    """
    hm = np.asarray(heatmaps)
    if hm.ndim == 3:
        hm = hm[None]
    if hm.ndim != 4:
        raise ValueError(f"heatmaps must have shape (K, H, W) or (B, K, H, W), got {hm.shape}")
    if hm.shape[2] < 1 or hm.shape[3] < 1:
        raise ValueError(f"heatmaps have an empty spatial size: {hm.shape}")
    if heatmap_size is not None and (hm.shape[3], hm.shape[2]) != tuple(heatmap_size):
        raise ValueError(
            f"heatmaps are {hm.shape[3]}x{hm.shape[2]} (WxH), codec expects "
            f"{heatmap_size[0]}x{heatmap_size[1]}"
        )
    return hm.astype(np.float32, copy=False)


def get_heatmap_maximum(heatmaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel argmax location and value (MMPose ``get_heatmap_maximum``).

    Args:
        heatmaps: ``(B, K, H, W)`` float array.

    Returns:
        ``locs`` ``(B, K, 2)`` float32 integer heatmap pixels ``(x, y)`` of the first maximum in
        row-major order, set to ``-1`` where the maximum is ``<= 0``; ``vals`` ``(B, K)`` the
        maxima (heatmap dtype).
    """
    b, k, h, w = heatmaps.shape
    flat = heatmaps.reshape(b, k, h * w)
    idx = np.argmax(flat, axis=2)
    vals = np.take_along_axis(flat, idx[..., None], axis=2)[..., 0]
    locs = np.stack([idx % w, idx // w], axis=-1).astype(np.float32)
    locs[vals <= 0] = -1
    return locs, vals


def gaussian_blur(heatmaps: np.ndarray, kernel: int = 11) -> np.ndarray:
    """DARK heatmap modulation (MMPose ``gaussian_blur``), on a copy.

    Each channel is zero-padded by ``(kernel - 1) // 2``, blurred with
    ``cv2.GaussianBlur((kernel, kernel), sigma=0)`` (OpenCV's sigma for that size, e.g. 2.0 for 11),
    cropped back and rescaled so its maximum equals the channel's original maximum. All channels
    go through one OpenCV call (padded channels stacked vertically; the zero padding keeps them
    apart), which reproduces the per-channel result bit for bit.

    Args:
        heatmaps: ``(B, K, H, W)`` float32.
        kernel: odd kernel size.

    Returns:
        New ``(B, K, H, W)`` float32 array.

    Raises:
        ValueError: even or non-positive ``kernel``.
    """
    b, k, h, w = heatmaps.shape
    padded, ratio, border = _blurred_padded(heatmaps, kernel)
    out = padded[:, border : border + h, border : border + w].copy()
    out *= ratio[:, None, None]
    return out.reshape(b, k, h, w)


def _blurred_padded(heatmaps: np.ndarray, kernel: int) -> tuple[np.ndarray, np.ndarray, int]:
    """:func:`gaussian_blur` before its crop and rescale: ``(padded (B*K, H + 2p, W + 2p) float32
    blurred planes, ratio (B*K,) float32 = original max / blurred max over the unpadded area (1
    where the blurred max is 0), p)``; a value of the modulated heatmap is
    ``padded[i, y + p, x + p] * ratio[i]``. Raises ValueError for an even or non-positive
    ``kernel``."""
    if kernel < 1 or kernel % 2 != 1:
        raise ValueError(f"blur kernel size must be a positive odd integer, got {kernel}")
    b, k, h, w = heatmaps.shape
    hm = heatmaps.astype(np.float32, copy=False).reshape(b * k, h, w)
    border = (kernel - 1) // 2
    padded = np.zeros((b * k, h + 2 * border, w + 2 * border), dtype=np.float32)
    if b * k == 0:
        return padded, np.ones(0, np.float32), border
    padded[:, border : border + h, border : border + w] = hm
    blurred = cv2.GaussianBlur(padded.reshape(-1, w + 2 * border), (kernel, kernel), 0)
    blurred = blurred.reshape(b * k, h + 2 * border, w + 2 * border)
    orig_max = hm.reshape(b * k, -1).max(axis=1)
    new_max = blurred[:, border : border + h, border : border + w].max(axis=(1, 2))
    ok = new_max != 0
    ratio = np.ones_like(orig_max)
    ratio[ok] = orig_max[ok] / new_max[ok]
    return blurred, ratio, border


def _gather(hm_flat: np.ndarray, w: int, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """``hm[b, k, ys, xs]`` for (B, K) index arrays; ``hm_flat`` is ``(B, K, H*W)``."""
    return np.take_along_axis(hm_flat, (ys * w + xs)[..., None], axis=2)[..., 0]


def refine_keypoints(keypoints: np.ndarray, heatmaps: np.ndarray) -> np.ndarray:
    """Quarter-pixel shift toward the higher neighbour (MMPose ``refine_keypoints``).

    For integer location ``(x, y)``: ``x += 0.25 * sign(hm[y, x+1] - hm[y, x-1])`` only when
    ``1 < x < W - 1`` and ``0 < y < H``, and ``y += 0.25 * sign(hm[y+1, x] - hm[y-1, x])`` only when
    ``1 < y < H - 1`` and ``0 < x < W`` -- upstream's exact bounds (note ``x = 1`` / row 0 are
    excluded for the x step, though a neighbour exists there). ``-1`` locations stay put.

    Args:
        keypoints: ``(B, K, 2)`` float32 integer locations from :func:`get_heatmap_maximum`.
        heatmaps: ``(B, K, H, W)``.

    Returns:
        New ``(B, K, 2)`` float32 array in heatmap pixels.
    """
    b, k, h, w = heatmaps.shape
    x = keypoints[..., 0].astype(np.int64)
    y = keypoints[..., 1].astype(np.int64)
    flat = heatmaps.reshape(b, k, h * w)

    ok_x = (x > 1) & (x < w - 1) & (y > 0) & (y < h)
    ok_y = (y > 1) & (y < h - 1) & (x > 0) & (x < w)
    xc = np.clip(x, 1, max(w - 2, 1))
    yc = np.clip(y, 1, max(h - 2, 1))
    xs, ys = np.clip(x, 0, w - 1), np.clip(y, 0, h - 1)

    dx = np.where(
        ok_x,
        _gather(flat, w, np.minimum(xc + 1, w - 1), ys)
        - _gather(flat, w, np.maximum(xc - 1, 0), ys),
        0.0,
    )
    dy = np.where(
        ok_y,
        _gather(flat, w, xs, np.minimum(yc + 1, h - 1))
        - _gather(flat, w, xs, np.maximum(yc - 1, 0)),
        0.0,
    )
    out = keypoints.astype(np.float32, copy=True)
    out[..., 0] += np.sign(dx).astype(np.float32) * np.float32(0.25)
    out[..., 1] += np.sign(dy).astype(np.float32) * np.float32(0.25)
    return out


def refine_keypoints_dark(
    keypoints: np.ndarray, heatmaps: np.ndarray, blur_kernel_size: int
) -> np.ndarray:
    """DARK refinement (MMPose ``refine_keypoints_dark``; Zhang et al., CVPR 2020).

    The heatmaps are modulated with :func:`gaussian_blur`, floored at ``1e-10`` and log-ed; then
    at each integer location ``(x, y)`` with ``1 < x < W - 2`` and ``1 < y < H - 2`` one Newton
    step ``-H^-1 g`` is taken, with ``g = ((L[x+1]-L[x-1]) / 2, (L[y+1]-L[y-1]) / 2)`` and the
    Hessian from step-2 differences ``dxx = (L[x+2] - 2L + L[x-2]) / 4``,
    ``dyy`` likewise, ``dxy = (L[x+1,y+1] - L[x+1,y-1] - L[x-1,y+1] + L[x-1,y-1]) / 4``; locations
    where ``dxx*dyy - dxy^2 == 0`` or outside those bounds are left unchanged.

    Args:
        keypoints: ``(B, K, 2)`` float32 integer locations (heatmap pixels).
        heatmaps: ``(B, K, H, W)`` float32 (not modified).
        blur_kernel_size: odd Gaussian kernel size (11 for sigma 2, 17 for sigma 3).

    Returns:
        New ``(B, K, 2)`` float32 array in heatmap pixels.
    """
    b, k, h, w = heatmaps.shape
    padded, ratio, border = _blurred_padded(heatmaps, blur_kernel_size)
    if w < 5 or h < 5:  # no location can be inside; avoid out-of-range gathers
        return keypoints.astype(np.float32, copy=True)
    wp = w + 2 * border
    flat = padded.reshape(b, k, -1)
    scale = ratio.reshape(b, k)
    x = keypoints[..., 0].astype(np.int64)
    y = keypoints[..., 1].astype(np.int64)
    inside = (x > 1) & (x < w - 2) & (y > 1) & (y < h - 2)
    x = np.where(inside, x, 2) + border  # padded coordinates
    y = np.where(inside, y, 2) + border

    def at(dx_: int, dy_: int) -> np.ndarray:
        # the log-modulated heatmap at 13 points per channel only (elementwise the same float32
        # operations as on the whole map: rescale, floor at 1e-10, log)
        v = _gather(flat, wp, x + dx_, y + dy_) * scale
        return np.log(np.maximum(v, np.float32(1e-10))).astype(np.float64)

    c = at(0, 0)
    dx = 0.5 * (at(1, 0) - at(-1, 0))
    dy = 0.5 * (at(0, 1) - at(0, -1))
    dxx = 0.25 * (at(2, 0) - 2 * c + at(-2, 0))
    dyy = 0.25 * (at(0, 2) - 2 * c + at(0, -2))
    dxy = 0.25 * (at(1, 1) - at(1, -1) - at(-1, 1) + at(-1, -1))
    det = dxx * dyy - dxy**2
    use = inside & (det != 0)
    safe = np.where(use, det, 1.0)
    # offset = -H^-1 g with H^-1 = [[dyy, -dxy], [-dxy, dxx]] / det
    off_x = -(dyy * dx - dxy * dy) / safe
    off_y = -(-dxy * dx + dxx * dy) / safe
    out = keypoints.astype(np.float32, copy=True)
    out[..., 0] += np.where(use, off_x, 0.0).astype(np.float32)
    out[..., 1] += np.where(use, off_y, 0.0).astype(np.float32)
    return out


def refine_keypoints_dark_udp(
    keypoints: np.ndarray, heatmaps: np.ndarray, blur_kernel_size: int
) -> np.ndarray:
    """DARK refinement as used by UDP (MMPose ``refine_keypoints_dark_udp``).

    The heatmaps are modulated with :func:`gaussian_blur`, clipped to ``[1e-3, 50]``, log-ed and
    edge-padded by one pixel; at every integer location one Newton step
    ``-(H + eps I)^-1 g`` is taken (``eps`` = float32 machine epsilon) with step-1 differences
    ``g = ((L[x+1]-L[x-1]) / 2, (L[y+1]-L[y-1]) / 2)``, ``dxx = L[x+1] - 2L + L[x-1]``, ``dyy``
    likewise, ``dxy = (L[x+1,y+1] - L[x+1] - L[y+1] + 2L - L[x-1] - L[y-1] + L[x-1,y-1]) / 2``.
    Unlike :func:`refine_keypoints_dark` there is no border test (the edge padding stands in for
    missing neighbours). ``-1`` locations (maximum <= 0) are left at ``-1`` (see module notes).

    Args:
        keypoints: ``(B, K, 2)`` float32 integer locations (heatmap pixels).
        heatmaps: ``(B, K, H, W)`` float32 (not modified).
        blur_kernel_size: odd Gaussian kernel size.

    Returns:
        New ``(B, K, 2)`` float32 array in heatmap pixels.
    """
    b, k, h, w = heatmaps.shape
    logs = np.log(
        np.clip(gaussian_blur(heatmaps, blur_kernel_size), np.float32(1e-3), np.float32(50.0))
    )
    padded = np.pad(logs, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge")
    wp = w + 2
    flat = padded.reshape(b, k, -1)
    valid = (keypoints[..., 0] >= 0) & (keypoints[..., 1] >= 0)
    # padded coordinates of the location
    x = np.where(valid, keypoints[..., 0], 0).astype(np.int64) + 1
    y = np.where(valid, keypoints[..., 1], 0).astype(np.int64) + 1

    def at(dx_: int, dy_: int) -> np.ndarray:
        return _gather(flat, wp, x + dx_, y + dy_).astype(np.float64)

    c = at(0, 0)
    xp, xm, yp, ym = at(1, 0), at(-1, 0), at(0, 1), at(0, -1)
    dx = 0.5 * (xp - xm)
    dy = 0.5 * (yp - ym)
    dxx = xp - 2 * c + xm
    dyy = yp - 2 * c + ym
    dxy = 0.5 * (at(1, 1) - xp - yp + 2 * c - xm - ym + at(-1, -1))
    eps = float(np.finfo(np.float32).eps)
    a11, a22 = dxx + eps, dyy + eps
    det = a11 * a22 - dxy * dxy
    use = valid & (det != 0)
    safe = np.where(use, det, 1.0)
    off_x = (a22 * dx - dxy * dy) / safe
    off_y = (-dxy * dx + a11 * dy) / safe
    out = keypoints.astype(np.float32, copy=True)
    out[..., 0] -= np.where(use, off_x, 0.0).astype(np.float32)
    out[..., 1] -= np.where(use, off_y, 0.0).astype(np.float32)
    return out
