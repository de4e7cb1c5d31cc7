"""Segmentation training pipeline (MMSeg 1.x ``configs/_base_/datasets/*.py`` train pipeline),
one image at a time, numpy + OpenCV::

    RandomResize(scale, ratio_range=(0.5, 2.0), keep_ratio=True)  -> random_resize
    RandomCrop(crop_size, cat_max_ratio=0.75)                      -> random_crop
    RandomFlip(prob=0.5)                                            -> random_flip
    PhotoMetricDistortion()                                         -> training.augment
    SegDataPreProcessor(size=crop_size, pad_val=0, seg_pad_val=255) -> pad_to (after normalising)

Randomness comes from the ``numpy.random.Generator`` passed in (one per ``(seed, epoch,
index)``, :func:`training.data.sample_rng`); the distributions are upstream's (``np.random``
uniform ratio, ``randint`` crop offsets with up to 10 re-draws, fair-coin flip).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from service.geometry import rescale_size

from .augment import PhotometricConfig, photometric_distortion

__all__ = [
    "SegAugmentConfig",
    "random_resize",
    "random_crop",
    "random_flip",
    "pad_to",
    "apply_seg_pipeline",
]


@dataclass(frozen=True)
class SegAugmentConfig:
    """Parameters of the segmentation train pipeline (defaults: MMSeg's HRNet configs).

    Attributes:
        ratio_range: ``RandomResize`` ratio range of the recipe's ``scale`` ``(0.5, 2.0)``.
        cat_max_ratio: ``RandomCrop``: re-draw the crop (up to 10 times) while one class covers
            this fraction or more of its labelled pixels (0.75); 1 disables.
        flip_prob: ``RandomFlip(prob)`` (0.5), horizontal.
        photometric: apply ``PhotoMetricDistortion`` (True).
        photometric_cfg: its parameters (MMSeg defaults, no channel swap).
    """

    ratio_range: tuple[float, float] = (0.5, 2.0)
    cat_max_ratio: float = 0.75
    flip_prob: float = 0.5
    photometric: bool = True
    photometric_cfg: PhotometricConfig = field(default_factory=PhotometricConfig)


def random_resize(
    img: np.ndarray,
    label: np.ndarray,
    scale: tuple[int, int],
    ratio_range: tuple[float, float],
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """``RandomResize(scale=(w, h), ratio_range, keep_ratio=True)``: ratio ``r ~ U(lo, hi)``,
    target ``(int(w * r), int(h * r))``, then mmcv ``imrescale`` of the image (bilinear) and
    the label (nearest) to fit it (:func:`service.geometry.rescale_size`).

    ``img`` ``(H, W, 3)`` uint8, ``label`` ``(H, W)`` uint8 class ids. Returns the resized pair
    (sizes in pixels)."""
    lo, hi = ratio_range
    r = rng.random() * (hi - lo) + lo
    target = (int(scale[0] * r), int(scale[1] * r))
    h, w = img.shape[:2]
    size = rescale_size((w, h), target)[0]
    img = cv2.resize(img, size, interpolation=cv2.INTER_LINEAR)
    label = cv2.resize(label, size, interpolation=cv2.INTER_NEAREST)
    return img, label


def random_crop(
    img: np.ndarray,
    label: np.ndarray,
    crop_size: tuple[int, int],
    cat_max_ratio: float,
    rng: np.random.Generator,
    ignore_index: int = 255,
) -> tuple[np.ndarray, np.ndarray]:
    """``RandomCrop(crop_size=(h, w), cat_max_ratio)``: offsets ``randint(0, margin + 1)`` per
    axis (margin = size - crop, at least 0); while ``cat_max_ratio < 1``, up to 10 times, a crop
    whose labelled pixels (not ``ignore_index``) hold fewer than two classes, or one class at
    ``cat_max_ratio`` or more, is re-drawn (after 10 failures the 11th draw is kept). The crop
    is clipped to the image (smaller images are padded later, :func:`pad_to`)."""
    ch, cw = crop_size

    def draw() -> tuple[int, int]:
        y = int(rng.integers(0, max(img.shape[0] - ch, 0) + 1))
        x = int(rng.integers(0, max(img.shape[1] - cw, 0) + 1))
        return y, x

    y, x = draw()
    if cat_max_ratio < 1.0:
        for _ in range(10):
            labels, counts = np.unique(label[y : y + ch, x : x + cw], return_counts=True)
            counts = counts[labels != ignore_index]
            if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
                break
            y, x = draw()
    return img[y : y + ch, x : x + cw], label[y : y + ch, x : x + cw]


def random_flip(
    img: np.ndarray, label: np.ndarray, prob: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """MMCV ``RandomFlip(prob, direction='horizontal')`` (as MMSeg 1.x's train pipeline uses it)
    of ``img`` ``(H, W, 3)`` and ``label`` ``(H, W)`` together; returns contiguous copies when
    flipped, the inputs otherwise. Draws one number from ``rng`` unless ``prob`` is 0."""
    if prob > 0 and rng.random() < prob:
        return np.ascontiguousarray(img[:, ::-1]), np.ascontiguousarray(label[:, ::-1])
    return img, label


def pad_to(
    x: np.ndarray,
    label: np.ndarray,
    size: tuple[int, int],
    pad_val: float = 0.0,
    seg_pad_val: int = 255,
) -> tuple[np.ndarray, np.ndarray]:
    """``SegDataPreProcessor(size=(h, w))``'s ``stack_batch``: pad the normalised input
    ``(3, h0, w0)`` float32 with ``pad_val`` and the label ``(h0, w0)`` with ``seg_pad_val`` at
    the bottom and right up to ``size``. Raises ``ValueError`` when the input is larger."""
    h, w = size
    h0, w0 = label.shape
    if h0 > h or w0 > w:
        raise ValueError(f"sample {h0}x{w0} is larger than the pad size {h}x{w}")
    if (h0, w0) == (h, w):
        return x, label
    xp = np.full((x.shape[0], h, w), pad_val, dtype=x.dtype)
    xp[:, :h0, :w0] = x
    lp = np.full((h, w), seg_pad_val, dtype=label.dtype)
    lp[:h0, :w0] = label
    return xp, lp


def apply_seg_pipeline(
    img: np.ndarray,
    label: np.ndarray,
    scale: tuple[int, int],
    crop_size: tuple[int, int],
    cfg: SegAugmentConfig,
    rng: np.random.Generator | None,
) -> tuple[np.ndarray, np.ndarray]:
    """The random part of the train pipeline on one uint8 BGR image ``(H, W, 3)`` and its uint8
    label ``(H, W)``: resize, crop, flip, photometric distortion. ``rng=None``: no augmentation
    (the pair is returned unchanged; the caller pads). ``scale`` ``(w, h)``, ``crop_size``
    ``(h, w)`` (MMSeg's conventions)."""
    if rng is None:
        return img, label
    img, label = random_resize(img, label, scale, cfg.ratio_range, rng)
    img, label = random_crop(img, label, crop_size, cfg.cat_max_ratio, rng)
    img, label = random_flip(img, label, cfg.flip_prob, rng)
    if cfg.photometric:
        img = photometric_distortion(img, rng, cfg.photometric_cfg)
    return img, label
