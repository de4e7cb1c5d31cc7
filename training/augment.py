"""Pixel-only augmentations shared by the pose and segmentation training pipelines.

* :func:`photometric_distortion`: the photometric distortion (brightness, contrast, saturation
  and hue in OpenCV's 8-bit HSV) of MMSeg 1.x ``PhotoMetricDistortion`` or, with
  ``upstream="mmpose"``, of MMPose 1.x ``PhotometricDistortion`` (its draw order, its quirks and
  its random channel swap). One implementation for the segmentation recipes and the top-down
  ``photometric`` variant.
* :func:`build_dropout`: MMPose 1.x's ``Albumentation`` wrapper of the seed-000 variants
  (``td-hm_hrnet-w32_{coarsedropout,gridmask}-8xb64-210e_coco-256x192``): albumentations
  ``CoarseDropout`` / ``GridDropout`` on the image only (keypoints are not passed, so they never
  move; the targets are unchanged).
* :func:`apply_pixel_augment`: the variant steps of :class:`PixelAugment` on one crop, after
  ``TopdownAffine`` (as in those configs).

Randomness: every draw comes from the ``numpy.random.Generator`` passed in (the trainer's
per-sample generator); albumentations is seeded from it (``Compose(seed=...)`` is rebuilt per
call with a seed drawn from that generator), so a sample's pixels are a pure function of
``(seed, epoch, index)`` and ``--resume`` stays bit-exact. The distributions are upstream's,
not its global ``np.random``/``random`` streams.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import cv2
import numpy as np

__all__ = [
    "PhotometricConfig",
    "PixelAugment",
    "photometric_distortion",
    "build_dropout",
    "apply_pixel_augment",
    "pixel_augment",
    "PIXEL_VARIANTS",
]


@dataclass(frozen=True)
class PhotometricConfig:
    """Parameters of :func:`photometric_distortion` (defaults: the MMSeg/MMPose defaults).

    Attributes:
        brightness_delta: brightness offset drawn from ``U(-delta, delta)`` grey levels (32).
        contrast_range: contrast factor range ``(lo, hi)`` (0.5, 1.5).
        saturation_range: HSV saturation factor range (0.5, 1.5).
        hue_delta: hue offset drawn from the integers ``[-delta, delta)`` in OpenCV hue units
            (degrees / 2; 18 = 36 degrees); at least 1.
        upstream: whose step order and draws to follow: ``"mmseg"`` (MMSeg 1.x
            ``PhotoMetricDistortion``, the segmentation recipes) or ``"mmpose"`` (MMPose 1.x
            ``PhotometricDistortion``, the top-down ``photometric`` variant), see
            :func:`photometric_distortion`.
    """

    brightness_delta: float = 32.0
    contrast_range: tuple[float, float] = (0.5, 1.5)
    saturation_range: tuple[float, float] = (0.5, 1.5)
    hue_delta: int = 18
    upstream: str = "mmseg"

    def __post_init__(self) -> None:
        if self.upstream not in ("mmseg", "mmpose"):
            raise ValueError(f"upstream must be 'mmseg' or 'mmpose', got {self.upstream!r}")
        if self.hue_delta < 1:
            raise ValueError("hue_delta must be >= 1")


def _convert(img: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    """``uint8(clip(float32(img) * alpha + beta, 0, 255))`` (upstream ``convert``; truncation)."""
    out = img.astype(np.float32) * alpha + beta
    return np.clip(out, 0, 255).astype(np.uint8)


def _hsv(
    img: np.ndarray, saturation: float | None, hue: int | None, hue_mod: int | None
) -> np.ndarray:
    """One BGR -> HSV -> BGR round trip (OpenCV 8-bit HSV, H in 0..179): S times
    ``saturation`` (clipped), H plus ``hue`` (modulo ``hue_mod``, or wrapped to uint8 when
    None, as a numpy assignment does)."""
    hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
    if saturation is not None:
        hsv[:, :, 1] = _convert(hsv[:, :, 1], alpha=saturation)
    if hue is not None:
        h = hsv[:, :, 0].astype(np.int64) + hue
        hsv[:, :, 0] = (h % hue_mod if hue_mod else h & 0xFF).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)


def photometric_distortion(
    img: np.ndarray, rng: np.random.Generator, cfg: PhotometricConfig = PhotometricConfig()
) -> np.ndarray:
    """Random photometric distortion of one uint8 BGR image ``(H, W, 3)``; returns a new uint8
    ``(H, W, 3)`` array (the input is not modified). Each step has probability 1/2.

    ``cfg.upstream == "mmseg"`` (MMSeg 1.x ``mmseg/datasets/transforms/transforms.py``
    ``PhotoMetricDistortion``), draws taken step by step: brightness ``+ U(-d, d)``; a coin
    puts contrast ``* U(lo, hi)`` right after it or last; saturation (S of OpenCV HSV times
    ``U(lo, hi)``) and hue (H ``+ randint(-d, d)`` modulo 180), each in its own HSV round trip.

    ``cfg.upstream == "mmpose"`` (MMPose 1.x ``mmpose/datasets/transforms/common_transforms.py``
    ``PhotometricDistortion``), every draw first in upstream's order (contrast mode, brightness
    flag, contrast flag, HSV mode 0..3, swap flag, beta, alpha, saturation, hue, channel
    permutation); brightness; contrast only in mode 1, where upstream applies it both before
    and after the HSV step (its code tests ``mode == 1`` twice: kept as is); one HSV round trip
    with saturation (modes 1, 3) and/or hue (modes 2, 3; the sum wrapped to uint8, not modulo
    180, as upstream's assignment does); then the channel permutation with the swap flag.

    Driven by ``rng``, the numbers equal upstream's when its ``np.random`` draws are the same
    (checked outside the repository against MMSeg 1.2.2 / MMPose 1.3.2). Raises ``ValueError``
    for a non-uint8 or non-3-channel image.
    """
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {img.shape} {img.dtype}")
    lo_c, hi_c = cfg.contrast_range
    lo_s, hi_s = cfg.saturation_range
    d_b, d_h = cfg.brightness_delta, int(cfg.hue_delta)
    out = img
    if cfg.upstream == "mmpose":
        contrast_mode, b_flag, c_flag = rng.integers(2), rng.integers(2), rng.integers(2)
        hsv_mode, swap_flag = rng.integers(4), rng.integers(2)
        beta, alpha = rng.uniform(-d_b, d_b), rng.uniform(lo_c, hi_c)
        sat, hue, order = rng.uniform(lo_s, hi_s), int(rng.integers(-d_h, d_h)), rng.permutation(3)
        if b_flag:
            out = _convert(out, beta=beta)
        if contrast_mode == 1 and c_flag:
            out = _convert(out, alpha=alpha)
        if hsv_mode:
            out = _hsv(
                out, sat if hsv_mode in (1, 3) else None, hue if hsv_mode in (2, 3) else None, None
            )
        if contrast_mode == 1 and c_flag:
            out = _convert(out, alpha=alpha)
        if swap_flag:
            out = np.ascontiguousarray(out[..., order])
        return out if out is not img else img.copy()
    if rng.integers(2):
        out = _convert(out, beta=rng.uniform(-d_b, d_b))
    contrast_last = rng.integers(2) == 0

    def contrast(x: np.ndarray) -> np.ndarray:
        return _convert(x, alpha=rng.uniform(lo_c, hi_c)) if rng.integers(2) else x

    if not contrast_last:
        out = contrast(out)
    if rng.integers(2):
        out = _hsv(out, rng.uniform(lo_s, hi_s), None, None)
    if rng.integers(2):
        out = _hsv(out, None, int(rng.integers(-d_h, d_h)), 180)
    if contrast_last:
        out = contrast(out)
    return out if out is not img else img.copy()


@dataclass(frozen=True)
class PixelAugment:
    """The seed-000 pixel variants applied after ``TopdownAffine`` (all off by default).

    Attributes:
        coarse_dropout: albumentations ``CoarseDropout`` with ``coarse_holes`` holes, each
            ``coarse_size`` pixels high and wide (independently), filled with 0, with
            probability ``coarse_prob`` (MMPose: 1-8 holes, 10-40 px, p 0.5).
        grid_dropout: albumentations ``GridDropout(ratio=grid_ratio, unit_size_range=grid_unit,
            random_offset=grid_random_offset)`` with probability ``grid_prob`` (MMPose: unit
            10-40 px, random offset, ratio 0.5 (the default), p 0.5).
        photometric: :func:`photometric_distortion` with ``photometric_cfg`` (MMPose's
            semantics and defaults).
    """

    coarse_dropout: bool = False
    coarse_holes: tuple[int, int] = (1, 8)
    coarse_size: tuple[int, int] = (10, 40)
    coarse_prob: float = 0.5
    grid_dropout: bool = False
    grid_unit: tuple[int, int] = (10, 40)
    grid_ratio: float = 0.5
    grid_random_offset: bool = True
    grid_prob: float = 0.5
    photometric: bool = False
    photometric_cfg: PhotometricConfig = PhotometricConfig(upstream="mmpose")

    @property
    def any(self) -> bool:
        """Whether any variant step is on."""
        return self.coarse_dropout or self.grid_dropout or self.photometric


#: MMPose 1.x config tag -> the :class:`PixelAugment` of that variant.
PIXEL_VARIANTS: dict[str, PixelAugment] = {
    "coarsedropout": PixelAugment(coarse_dropout=True),
    "gridmask": PixelAugment(grid_dropout=True),
    "photometric": PixelAugment(photometric=True),
}


def pixel_augment(names: tuple[str, ...] | list[str]) -> PixelAugment:
    """The :class:`PixelAugment` with the steps of every variant in ``names`` (keys of
    :data:`PIXEL_VARIANTS`) switched on; ``()`` = none. Raises ``ValueError`` naming the known
    variants for an unknown name."""
    unknown = sorted(set(names) - set(PIXEL_VARIANTS))
    if unknown:
        raise ValueError(
            f"unknown pixel variant(s) {', '.join(unknown)}; expected some of "
            f"{', '.join(PIXEL_VARIANTS)}"
        )
    on = [PIXEL_VARIANTS[n] for n in names]
    return PixelAugment(
        coarse_dropout=any(v.coarse_dropout for v in on),
        grid_dropout=any(v.grid_dropout for v in on),
        photometric=any(v.photometric for v in on),
    )


def build_dropout(cfg: PixelAugment, seed: int | None = None):
    """The albumentations ``Compose`` of the dropout steps of ``cfg`` (image only), seeded with
    ``seed``; None when no dropout step is on. Raises ``ImportError`` naming the ``[train]``
    extra when albumentations is missing."""
    if not (cfg.coarse_dropout or cfg.grid_dropout):
        return None
    # albumentations asks PyPI for a newer version on import unless told not to: training
    # (and the tests) never reach the network for that
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    try:
        import albumentations as A
    except ImportError as exc:  # pragma: no cover - the [train] extra installs it
        raise ImportError(
            "the dropout variants need albumentations (pip install 'hrnet-serving[train]')"
        ) from exc
    steps = []
    if cfg.coarse_dropout:
        steps.append(
            A.CoarseDropout(
                num_holes_range=tuple(cfg.coarse_holes),
                hole_height_range=tuple(cfg.coarse_size),
                hole_width_range=tuple(cfg.coarse_size),
                fill=0,
                p=cfg.coarse_prob,
            )
        )
    if cfg.grid_dropout:
        steps.append(
            A.GridDropout(
                ratio=cfg.grid_ratio,
                unit_size_range=tuple(cfg.grid_unit),
                random_offset=cfg.grid_random_offset,
                fill=0,
                p=cfg.grid_prob,
            )
        )
    return A.Compose(steps, seed=seed)


def apply_pixel_augment(img: np.ndarray, cfg: PixelAugment, rng: np.random.Generator) -> np.ndarray:
    """The variant steps of ``cfg`` on one uint8 BGR crop ``(h, w, 3)``: dropout(s) through
    albumentations (seeded from ``rng``), then the photometric distortion. Draws nothing from
    ``rng`` when ``cfg`` has no step on (so existing recipes' random streams are unchanged).
    Returns the new crop (uint8, same shape)."""
    if not cfg.any:
        return img
    if cfg.coarse_dropout or cfg.grid_dropout:
        seed = int(rng.integers(0, 2**31 - 1))
        img = build_dropout(cfg, seed)(image=img)["image"]
    if cfg.photometric:
        img = photometric_distortion(img, rng, cfg.photometric_cfg)
    return np.ascontiguousarray(img)
