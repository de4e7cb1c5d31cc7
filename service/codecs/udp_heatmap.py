"""UDP Gaussian-heatmap codec (MMPose 1.x ``mmpose.codecs.UDPHeatmap``, ``heatmap_type='gaussian'``).

UDP (Huang et al., CVPR 2020) measures sizes in pixel *intervals*: heatmap pixel ``x`` is input
pixel ``x * (w - 1) / (W - 1)`` when encoding, so the first and last pixel centres of the crop and
of the heatmap coincide. Decoding is argmax + ``refine_keypoints_dark_udp``, then -- as upstream --
``keypoints / (W - 1, H - 1) * input_size``, i.e. a factor ``w / (W - 1)``, not ``(w - 1) / (W - 1)``.
That is deliberate upstream: ``add_pred_to_datasample`` (:func:`service.geometry.keypoints_to_image`)
then divides by ``w`` and multiplies by the box scale, so image -> UDP warp -> encode -> decode ->
image is the identity, while encode -> decode alone returns ``kp * w / (w - 1)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .msra_heatmap import (
    _check_sigma_and_blur,
    _check_size,
    _prepare_keypoints,
    generate_gaussian_heatmaps,
)
from .refine import as_batch, get_heatmap_maximum, refine_keypoints_dark_udp

__all__ = ["UDPHeatmap"]


class UDPHeatmap:
    """UDP heatmap codec (MMPose 1.x ``UDPHeatmap``), Gaussian targets only.

    Args:
        input_size: model input ``(w, h)`` pixels.
        heatmap_size: heatmap ``(W, H)`` pixels (each at least 2).
        sigma: target Gaussian sigma in heatmap pixels.
        heatmap_type: only ``"gaussian"`` (upstream's ``"combined"`` offset maps are not supported).
        blur_kernel_size: DARK-UDP modulation kernel (odd).

    Attributes:
        scale_factor: ``(2,)`` float32 ``(input_size - 1) / (heatmap_size - 1)``, used by
            :meth:`encode` (input -> heatmap pixels).
        decode_factor: ``(2,)`` float64 ``input_size / (heatmap_size - 1)``, used by :meth:`decode`.

    Raises:
        ValueError: bad sizes, sigma, kernel size or ``heatmap_type``.
    """

    def __init__(
        self,
        input_size: Sequence[int],
        heatmap_size: Sequence[int],
        sigma: float = 2.0,
        heatmap_type: str = "gaussian",
        blur_kernel_size: int = 11,
    ) -> None:
        self.input_size = _check_size(input_size, "input_size")
        self.heatmap_size = _check_size(heatmap_size, "heatmap_size")
        if min(self.heatmap_size) < 2:
            raise ValueError(f"UDP needs a heatmap of at least 2x2 pixels, got {self.heatmap_size}")
        if heatmap_type != "gaussian":
            raise ValueError(
                f"UDPHeatmap supports heatmap_type='gaussian' only, got {heatmap_type!r}"
            )
        self.sigma, self.blur_kernel_size = _check_sigma_and_blur(sigma, blur_kernel_size)
        self.heatmap_type = heatmap_type
        in_wh = np.array(self.input_size, dtype=np.float64)
        hm_wh = np.array(self.heatmap_size, dtype=np.float64)
        self.scale_factor = ((in_wh - 1) / (hm_wh - 1)).astype(np.float32)
        self.decode_factor = in_wh / (hm_wh - 1)

    def __repr__(self) -> str:
        return (
            f"UDPHeatmap(input_size={self.input_size}, heatmap_size={self.heatmap_size}, "
            f"sigma={self.sigma}, heatmap_type={self.heatmap_type!r}, "
            f"blur_kernel_size={self.blur_kernel_size})"
        )

    def encode(self, keypoints: np.ndarray, keypoints_visible: np.ndarray | None = None) -> dict:
        """Training targets for one instance (MMPose ``UDPHeatmap.encode``, Gaussian type).

        Keypoints are mapped to heatmap pixels by ``/ scale_factor`` and drawn with
        :func:`~service.codecs.msra_heatmap.generate_gaussian_heatmaps` in ``"udp"`` mode (exact
        sub-pixel centre, window of radius ``3 sigma`` around the rounded pixel).

        Args:
            keypoints: ``(1, K, 2)`` input-space pixels (``N`` must be 1, as upstream).
            keypoints_visible: ``(1, K)`` visibilities, or None for all visible.

        Returns:
            ``dict(heatmaps=(K, H, W) float32, keypoint_weights=(1, K) float32)``.

        Raises:
            ValueError: bad shapes or ``N != 1``.
        """
        kpts, vis = _prepare_keypoints(keypoints, keypoints_visible)
        heatmaps, weights = generate_gaussian_heatmaps(
            self.heatmap_size,
            kpts / self.scale_factor.astype(np.float64),
            vis,
            self.sigma,
            mode="udp",
        )
        return dict(heatmaps=heatmaps, keypoint_weights=weights)

    def decode(self, heatmaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Heatmaps -> keypoints and scores (MMPose ``UDPHeatmap.decode``, Gaussian type), batched.

        Argmax (score = maximum; ``-1`` location when ``<= 0``), ``refine_keypoints_dark_udp``, then
        ``* input_size / (heatmap_size - 1)`` (see the module note: feed the result to
        :func:`service.geometry.keypoints_to_image`). A ``-1`` location comes out as
        ``-input_size / (heatmap_size - 1)``.

        Args:
            heatmaps: ``(K, H, W)`` or ``(B, K, H, W)`` with ``(W, H) == heatmap_size``; converted to
                float32 (the input is not modified).

        Returns:
            ``keypoints`` ``(B, K, 2)`` float32 and ``scores`` ``(B, K)`` float32.

        Raises:
            ValueError: wrong rank or a spatial size other than ``heatmap_size``.
        """
        hm = as_batch(heatmaps, self.heatmap_size)
        locs, scores = get_heatmap_maximum(hm)
        locs = refine_keypoints_dark_udp(locs, hm, self.blur_kernel_size)
        return (locs * self.decode_factor).astype(np.float32), scores.astype(np.float32)
