"""MSRA Gaussian-heatmap codec (MMPose 1.x ``mmpose.codecs.MSRAHeatmap``), numpy only.

Encoding (training targets) follows ``generate_gaussian_heatmaps`` /
``generate_unbiased_gaussian_heatmaps``; decoding is argmax + quarter-pixel refinement
(``refine_keypoints``) or DARK (``refine_keypoints_dark``), vectorised over the batch and the
keypoints (see :mod:`service.codecs.refine`). Coordinates are ``(x, y)`` pixels: "input space" is the
model input crop (``input_size``), "heatmap space" the network output (``heatmap_size``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .refine import as_batch, get_heatmap_maximum, refine_keypoints, refine_keypoints_dark

__all__ = ["MSRAHeatmap", "generate_gaussian_heatmaps"]


def _check_size(size, name: str) -> tuple[int, int]:
    if len(size) != 2:
        raise ValueError(f"{name} must be (width, height), got {size!r}")
    w, h = (int(v) for v in size)
    if w < 1 or h < 1 or w != size[0] or h != size[1]:
        raise ValueError(f"{name} must be two positive integers, got {size!r}")
    return w, h


def _check_sigma_and_blur(sigma, blur_kernel_size) -> tuple[float, int]:
    """``(sigma, blur_kernel_size)`` as ``(float, int)``; ValueError unless sigma > 0 and the
    kernel size is a positive odd integer (both heatmap codecs' rule)."""
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma!r}")
    if (
        int(blur_kernel_size) != blur_kernel_size
        or blur_kernel_size < 1
        or blur_kernel_size % 2 != 1
    ):
        raise ValueError(
            f"blur_kernel_size must be a positive odd integer, got {blur_kernel_size!r}"
        )
    return float(sigma), int(blur_kernel_size)


def _prepare_keypoints(keypoints, keypoints_visible) -> tuple[np.ndarray, np.ndarray]:
    kpts = np.asarray(keypoints, dtype=np.float64)
    if kpts.ndim != 3 or kpts.shape[2] < 2:
        raise ValueError(f"keypoints must have shape (N, K, 2), got {kpts.shape}")
    if kpts.shape[0] != 1:
        raise ValueError(
            f"top-down heatmap encoding is single-instance (N == 1), got N = {kpts.shape[0]}"
        )
    if keypoints_visible is None:
        vis = np.ones(kpts.shape[:2], dtype=np.float32)
    else:
        vis = np.asarray(keypoints_visible, dtype=np.float32)
        if vis.shape != kpts.shape[:2]:
            raise ValueError(f"keypoints_visible must have shape {kpts.shape[:2]}, got {vis.shape}")
    return kpts[..., :2], vis


def generate_gaussian_heatmaps(
    heatmap_size: Sequence[int],
    keypoints: np.ndarray,
    keypoints_visible: np.ndarray,
    sigma: float,
    mode: str = "msra",
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian target heatmaps for keypoints given in *heatmap* pixels, vectorised over N and K.

    ``mode``:

    * ``"msra"`` (``generate_gaussian_heatmaps``): an unnormalised Gaussian (peak 1) centred on
      the integer pixel ``mu = int(kp + 0.5)`` (``int`` truncates toward zero, as upstream's
      ``astype``), drawn only inside the window ``[int(mu - 3 sigma), int(mu + 3 sigma + 1))``;
    * ``"udp"`` (``generate_udp_gaussian_heatmaps``): same window, but the Gaussian is centred on
      the exact sub-pixel ``kp``;
    * ``"unbiased"`` (``generate_unbiased_gaussian_heatmaps``, DARK): centred on the exact ``kp``,
      drawn over the whole map.

    A keypoint with visibility ``< 0.5`` draws nothing (its weight stays its visibility); one whose
    window (``[kp - 3 sigma, kp + 3 sigma + 1)`` in unbiased mode) misses the map entirely draws
    nothing and gets weight 0. Several instances are merged with a pixel-wise max.

    Args:
        heatmap_size: ``(W, H)``.
        keypoints: ``(N, K, 2)`` heatmap pixels.
        keypoints_visible: ``(N, K)`` visibilities.
        sigma: Gaussian sigma in heatmap pixels.
        mode: ``"msra"``, ``"udp"`` or ``"unbiased"``.

    Returns:
        ``heatmaps`` ``(K, H, W)`` float32 and ``keypoint_weights`` ``(N, K)`` float32.

    Raises:
        ValueError: unknown ``mode`` or non-positive ``sigma``.
    """
    if mode not in ("msra", "udp", "unbiased"):
        raise ValueError(f"unknown heatmap mode {mode!r}")
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma!r}")
    w, h = heatmap_size
    kp = np.asarray(keypoints, dtype=np.float64)[..., :2]
    vis = np.asarray(keypoints_visible, dtype=np.float32)
    n, k = kp.shape[:2]
    weights = vis.copy()
    radius = 3.0 * sigma
    xs = np.arange(w, dtype=np.float64)
    ys = np.arange(h, dtype=np.float64)
    two_s2 = 2.0 * sigma * sigma

    if mode == "unbiased":
        lo = kp - radius
        hi = kp + radius + 1
        miss = (lo[..., 0] >= w) | (lo[..., 1] >= h) | (hi[..., 0] < 0) | (hi[..., 1] < 0)
        ex = (xs - kp[..., 0:1]) ** 2  # (N, K, W)
        ey = (ys - kp[..., 1:2]) ** 2  # (N, K, H)
        mask_x = np.ones_like(ex, dtype=bool)
        mask_y = np.ones_like(ey, dtype=bool)
    else:
        size = 2.0 * radius + 1.0
        length = math.ceil(size)  # len(np.arange(0, size))
        g0 = size // 2
        mu = np.trunc(kp + 0.5)
        left = np.trunc(mu - radius)
        right = np.trunc(mu + radius + 1)
        miss = (left[..., 0] >= w) | (left[..., 1] >= h) | (right[..., 0] < 0) | (right[..., 1] < 0)
        centre = left + g0  # heatmap pixel of the Gaussian's centre index
        if mode == "udp":
            centre = centre + (kp - mu)
        ex = (xs - centre[..., 0:1]) ** 2
        ey = (ys - centre[..., 1:2]) ** 2

        def window(coord, lo, hi):
            return (coord >= lo) & (coord < hi) & (coord - lo < length)

        mask_x = window(xs, left[..., 0:1], right[..., 0:1])
        mask_y = window(ys, left[..., 1:2], right[..., 1:2])

    draw = (vis >= 0.5) & ~miss
    weights[(vis >= 0.5) & miss] = 0
    g = np.exp(-(ey[..., :, None] + ex[..., None, :]) / two_s2)  # (N, K, H, W)
    g = np.where(mask_y[..., :, None] & mask_x[..., None, :] & draw[..., None, None], g, 0.0)
    heatmaps = g.max(axis=0) if n > 0 else np.zeros((k, h, w))
    return heatmaps.astype(np.float32), weights


class MSRAHeatmap:
    """MSRA heatmap codec (MMPose 1.x ``MSRAHeatmap``; Xiao et al. 2018, DARK when ``unbiased``).

    Args:
        input_size: model input ``(w, h)`` pixels.
        heatmap_size: heatmap ``(W, H)`` pixels.
        sigma: target Gaussian sigma in heatmap pixels.
        unbiased: DARK encoding (exact sub-pixel Gaussian) and decoding (``refine_keypoints_dark``).
        blur_kernel_size: DARK modulation kernel (odd; 11 for sigma 2, 17 for sigma 3).

    Attributes:
        scale_factor: ``(2,)`` float32 ``input_size / heatmap_size`` (e.g. 4, 4); heatmap pixel
            ``x`` is input pixel ``x * scale_factor``.

    Raises:
        ValueError: bad sizes, sigma or kernel size.
    """

    def __init__(
        self,
        input_size: Sequence[int],
        heatmap_size: Sequence[int],
        sigma: float,
        unbiased: bool = False,
        blur_kernel_size: int = 11,
    ) -> None:
        self.input_size = _check_size(input_size, "input_size")
        self.heatmap_size = _check_size(heatmap_size, "heatmap_size")
        self.sigma, self.blur_kernel_size = _check_sigma_and_blur(sigma, blur_kernel_size)
        self.unbiased = bool(unbiased)
        self.scale_factor = (
            np.array(self.input_size, dtype=np.float64)
            / np.array(self.heatmap_size, dtype=np.float64)
        ).astype(np.float32)

    def __repr__(self) -> str:
        return (
            f"MSRAHeatmap(input_size={self.input_size}, heatmap_size={self.heatmap_size}, "
            f"sigma={self.sigma}, unbiased={self.unbiased}, blur_kernel_size={self.blur_kernel_size})"
        )

    def encode(self, keypoints: np.ndarray, keypoints_visible: np.ndarray | None = None) -> dict:
        """Training targets for one instance (MMPose ``MSRAHeatmap.encode``).

        Args:
            keypoints: ``(1, K, 2)`` input-space pixels (``N`` must be 1, as upstream).
            keypoints_visible: ``(1, K)`` visibilities, or None for all visible.

        Returns:
            ``dict(heatmaps=(K, H, W) float32, keypoint_weights=(1, K) float32)``; see
            :func:`generate_gaussian_heatmaps` (mode ``"unbiased"`` if ``unbiased`` else ``"msra"``)
            for the drawing and weight rules.

        Raises:
            ValueError: bad shapes or ``N != 1``.
        """
        kpts, vis = _prepare_keypoints(keypoints, keypoints_visible)
        heatmaps, weights = generate_gaussian_heatmaps(
            self.heatmap_size,
            kpts / self.scale_factor.astype(np.float64),
            vis,
            self.sigma,
            mode="unbiased" if self.unbiased else "msra",
        )
        return dict(heatmaps=heatmaps, keypoint_weights=weights)

    def decode(self, heatmaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Heatmaps -> input-space keypoints and scores (MMPose ``MSRAHeatmap.decode``), batched.

        Per channel: argmax (score = the maximum value; location ``-1`` when it is ``<= 0``), then
        ``refine_keypoints`` (quarter pixel toward the higher neighbour) or, if ``unbiased``,
        ``refine_keypoints_dark``; finally ``* scale_factor``. A ``-1`` location therefore comes out
        as ``-scale_factor`` (e.g. ``-4``) in input space, exactly as upstream: use the score.

        Args:
            heatmaps: ``(K, H, W)`` or ``(B, K, H, W)``, ``(W, H) == heatmap_size``; converted to
                float32 (the input is not modified).

        Returns:
            ``keypoints`` ``(B, K, 2)`` float32 input-space pixels (``B = 1`` for a 3-D input) and
            ``scores`` ``(B, K)`` float32.

        Raises:
            ValueError: wrong rank or a spatial size other than ``heatmap_size``.
        """
        hm = as_batch(heatmaps, self.heatmap_size)
        locs, scores = get_heatmap_maximum(hm)
        if self.unbiased:
            locs = refine_keypoints_dark(locs, hm, self.blur_kernel_size)
        else:
            locs = refine_keypoints(locs, hm)
        return (locs * self.scale_factor).astype(np.float32), scores.astype(np.float32)
