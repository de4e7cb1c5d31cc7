"""Pixel-only augmentations shared by the pose and segmentation training pipelines.

* :func:`photometric_distortion`: the photometric distortion of MMSeg 1.x
  ``mmseg/datasets/transforms/transforms.py`` ``PhotoMetricDistortion`` (brightness, contrast
  first or last, saturation and hue in OpenCV's 8-bit HSV), with MMPose 1.x
  ``PhotometricDistortion``'s extra random channel swap as an option. One implementation for the
  segmentation recipes and the top-down ``photometric`` variant.
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
from typing import Optional

import cv2
import numpy as np

__all__ = ["PhotometricConfig", "PixelAugment", "photometric_distortion", "build_dropout",
           "apply_pixel_augment", "pixel_augment", "PIXEL_VARIANTS"]


@dataclass(frozen=True)
class PhotometricConfig:
    """Parameters of :func:`photometric_distortion` (defaults: MMSeg/MMPose defaults).

    Attributes:
        brightness_delta: brightness offset drawn from ``U(-delta, delta)`` grey levels (32).
        contrast_range: contrast factor range ``(lo, hi)`` (0.5, 1.5).
        saturation_range: HSV saturation factor range (0.5, 1.5).
        hue_delta: hue offset drawn from the integers ``[-delta, delta)`` in OpenCV hue units
            (degrees / 2; 18 = 36 degrees).
        channel_swap: MMPose's last step: with probability 0.5 permute the three channels
            (``np.random.permutation(3)``); False for MMSeg.
    """

    brightness_delta: float = 32.0
    contrast_range: tuple[float, float] = (0.5, 1.5)
    saturation_range: tuple[float, float] = (0.5, 1.5)
    hue_delta: int = 18
    channel_swap: bool = False


def _convert(img: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    """``uint8(clip(float32(img) * alpha + beta, 0, 255))`` (upstream ``convert``; truncation)."""
    out = img.astype(np.float32) * np.float32(alpha) + np.float32(beta)
    return np.clip(out, 0, 255).astype(np.uint8)


def photometric_distortion(img: np.ndarray, rng: np.random.Generator,
                           cfg: PhotometricConfig = PhotometricConfig()) -> np.ndarray:
    """MMSeg ``PhotoMetricDistortion`` on one uint8 BGR image ``(H, W, 3)``; returns a new
    uint8 ``(H, W, 3)`` array (the input is not modified).

    Steps, each applied with probability 0.5: brightness (``+ U(-d, d)``, clipped), contrast
    (``* U(lo, hi)``; a fair coin puts it right after brightness or last), saturation (S channel
    of ``cv2.COLOR_BGR2HSV`` times ``U(lo, hi)``, clipped), hue (H channel ``+ randint(-d, d)``
    modulo 180), back with ``cv2.COLOR_HSV2BGR``; with ``cfg.channel_swap`` (MMPose) a random
    channel permutation with probability 0.5. Raises ``ValueError`` for a non-uint8 or
    non-3-channel image.
    """
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {img.shape} {img.dtype}")
    out = img
    if rng.integers(2):
        out = _convert(out, beta=rng.uniform(-cfg.brightness_delta, cfg.brightness_delta))
    contrast_last = rng.integers(2) == 0  # MMSeg: mode 0 -> contrast after hue

    def contrast(x: np.ndarray) -> np.ndarray:
        if rng.integers(2):
            return _convert(x, alpha=rng.uniform(*cfg.contrast_range))
        return x

    if not contrast_last:
        out = contrast(out)
    if rng.integers(2):
        hsv = cv2.cvtColor(out, cv2.COLOR_BGR2HSV)
        hsv[:, :, 1] = _convert(hsv[:, :, 1], alpha=rng.uniform(*cfg.saturation_range))
        out = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    if rng.integers(2):
        hsv = cv2.cvtColor(out, cv2.COLOR_BGR2HSV)
        shift = int(rng.integers(-cfg.hue_delta, cfg.hue_delta))
        hsv[:, :, 0] = (hsv[:, :, 0].astype(np.int64) + shift) % 180
        out = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    if contrast_last:
        out = contrast(out)
    if cfg.channel_swap and rng.integers(2):
        out = np.ascontiguousarray(out[..., rng.permutation(3)])
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
        photometric: :func:`photometric_distortion` with ``photometric_cfg`` (MMPose: the
            defaults plus the channel swap).
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
    photometric_cfg: PhotometricConfig = PhotometricConfig(channel_swap=True)

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
        raise ValueError(f"unknown pixel variant(s) {', '.join(unknown)}; expected some of "
                         f"{', '.join(PIXEL_VARIANTS)}")
    on = [PIXEL_VARIANTS[n] for n in names]
    return PixelAugment(coarse_dropout=any(v.coarse_dropout for v in on),
                        grid_dropout=any(v.grid_dropout for v in on),
                        photometric=any(v.photometric for v in on))


def build_dropout(cfg: PixelAugment, seed: Optional[int] = None):
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
        raise ImportError("the dropout variants need albumentations (pip install "
                          "'hrnet-serving[train]')") from exc
    steps = []
    if cfg.coarse_dropout:
        steps.append(A.CoarseDropout(num_holes_range=tuple(cfg.coarse_holes),
                                     hole_height_range=tuple(cfg.coarse_size),
                                     hole_width_range=tuple(cfg.coarse_size), fill=0,
                                     p=cfg.coarse_prob))
    if cfg.grid_dropout:
        steps.append(A.GridDropout(ratio=cfg.grid_ratio, unit_size_range=tuple(cfg.grid_unit),
                                   random_offset=cfg.grid_random_offset, fill=0,
                                   p=cfg.grid_prob))
    return A.Compose(steps, seed=seed)


def apply_pixel_augment(img: np.ndarray, cfg: PixelAugment,
                        rng: np.random.Generator) -> np.ndarray:
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
