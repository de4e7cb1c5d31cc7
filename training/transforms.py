"""Top-down training pipeline (MMPose 1.x ``configs/body_2d_keypoint/topdown_heatmap`` train
pipeline), one instance at a time, numpy + OpenCV.

The steps of the HRNet COCO configs, in order::

    GetBBoxCenterScale(padding=1.25)        -> service.geometry.bbox_xyxy2cs
    RandomFlip(direction='horizontal')      -> random_flip
    RandomHalfBody()                        -> random_half_body
    RandomBBoxTransform()                   -> random_bbox_transform
    TopdownAffine(input_size, use_udp)      -> topdown_affine (service.geometry warp matrices)
    GenerateTarget(encoder=codec)           -> codec.encode (service.codecs, shared with decode)

Randomness comes from a ``numpy.random.Generator`` passed in (the dataset seeds one per
``(seed, epoch, index)``), so a sample is the same whatever worker or process draws it: this is
what makes ``--resume`` and multi-process runs reproducible. The draws follow upstream's
distributions (uniform flips, truncated normals on [-1, 1] for the box jitter), not its
``np.random`` global stream.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from service.geometry import (
    affine_transform_points,
    bbox_xyxy2cs,
    fix_aspect_ratio,
    get_udp_warp_matrix,
    get_warp_matrix,
)

from .augment import apply_pixel_augment, pixel_augment

__all__ = [
    "Instance",
    "AugmentConfig",
    "get_bbox_center_scale",
    "random_flip",
    "random_half_body",
    "random_bbox_transform",
    "topdown_affine",
    "truncnorm",
    "apply_train_pipeline",
]


@dataclass
class Instance:
    """One person/animal as it moves through the pipeline.

    Attributes:
        image: ``(H, W, 3)`` uint8 BGR (the crop after :func:`topdown_affine`).
        keypoints: ``(K, 2)`` float32 pixels (image, then input-crop space after the affine).
        visible: ``(K,)`` float32, ``min(1, v)`` of the COCO visibility flag (MMPose).
        center: ``(2,)`` float32 box center, image pixels.
        scale: ``(2,)`` float32 box size ``(w, h)``, image pixels.
        rotation: degrees (``RandomBBoxTransform``), 0 if none.
        flipped: whether :func:`random_flip` mirrored it.
    """

    image: np.ndarray
    keypoints: np.ndarray
    visible: np.ndarray
    center: np.ndarray
    scale: np.ndarray
    rotation: float = 0.0
    flipped: bool = False


@dataclass(frozen=True)
class AugmentConfig:
    """Parameters of the random steps (defaults: MMPose 1.x HRNet COCO configs).

    Attributes:
        flip_prob: ``RandomFlip(prob)``; 0 disables.
        half_body_prob: ``RandomHalfBody(prob)``; 0 disables (also disabled when
            ``upper_body_ids`` is empty).
        upper_body_ids: keypoint indices of the upper body (``dataset_meta['upper_body_ids']``;
            COCO: 0..10); the rest are the lower body.
        half_body_min_total: ``min_total_keypoints`` (9).
        half_body_min_upper: ``min_upper_keypoints`` (2).
        half_body_min_lower: ``min_lower_keypoints`` (3).
        half_body_padding: ``padding`` (1.5).
        half_body_upper_prob: ``upper_prioritized_prob`` (0.7).
        shift_factor, shift_prob: ``RandomBBoxTransform`` shift (fraction of the box size).
        scale_factor, scale_prob: box scale range ``(min, max)`` and its probability.
        rotate_factor, rotate_prob: rotation in degrees and its probability.
        pixel_variants: seed-000 variant steps after ``TopdownAffine``, names of
            :data:`training.augment.PIXEL_VARIANTS` (``"coarsedropout"``, ``"gridmask"``,
            ``"photometric"``); ``()`` = none (the plain recipes).
    """

    flip_prob: float = 0.5
    half_body_prob: float = 0.3
    upper_body_ids: tuple[int, ...] = ()
    half_body_min_total: int = 9
    half_body_min_upper: int = 2
    half_body_min_lower: int = 3
    half_body_padding: float = 1.5
    half_body_upper_prob: float = 0.7
    shift_factor: float = 0.16
    shift_prob: float = 0.3
    scale_factor: tuple[float, float] = (0.5, 1.5)
    scale_prob: float = 1.0
    rotate_factor: float = 80.0
    rotate_prob: float = 0.6
    pixel_variants: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        pixel_augment(self.pixel_variants)  # ValueError for an unknown name


def truncnorm(rng: np.random.Generator, size: Sequence[int] | int = ()) -> np.ndarray:
    """Standard normal samples truncated to [-1, 1] (``scipy.stats.truncnorm.rvs(-1, 1)``, as
    ``RandomBBoxTransform._truncnorm``), by rejection; float32 of shape ``size``."""
    shape = (size,) if isinstance(size, int) else tuple(size)
    n = int(np.prod(shape)) if shape else 1
    out = np.empty(0)
    while out.size < n:
        draw = rng.standard_normal(2 * n + 4)
        out = np.concatenate([out, draw[np.abs(draw) <= 1.0]])
    return out[:n].reshape(shape).astype(np.float32)


def get_bbox_center_scale(
    bbox_xyxy: np.ndarray, padding: float = 1.25
) -> tuple[np.ndarray, np.ndarray]:
    """``GetBBoxCenterScale``: ``(4,)`` xyxy box -> float32 ``center (2,)``, ``scale (2,)``
    (box size times ``padding``), image pixels (:func:`service.geometry.bbox_xyxy2cs`)."""
    c, s = bbox_xyxy2cs(np.asarray(bbox_xyxy, np.float32)[:4], padding=padding)
    return c.astype(np.float32), s.astype(np.float32)


def random_flip(
    inst: Instance, flip_indices: Sequence[int], prob: float, rng: np.random.Generator
) -> Instance:
    """``RandomFlip(direction='horizontal', prob)``: with probability ``prob`` mirror the image,
    the keypoints (``x -> W - 1 - x``, channels swapped by ``flip_indices``, visibilities with
    them) and the box center (``cx -> W - 1 - cx``, upstream's ``flip_bbox(format='center')``).
    Modifies and returns ``inst``."""
    if prob <= 0 or not rng.random() < prob:
        return inst
    w = inst.image.shape[1]
    idx = np.asarray(flip_indices, dtype=np.int64)
    inst.image = np.ascontiguousarray(inst.image[:, ::-1])
    kp = inst.keypoints[idx].copy()
    kp[:, 0] = w - 1 - kp[:, 0]
    inst.keypoints = kp
    inst.visible = inst.visible[idx].copy()
    inst.center = np.array([w - 1 - inst.center[0], inst.center[1]], dtype=np.float32)
    inst.flipped = True
    return inst


def random_half_body(inst: Instance, cfg: AugmentConfig, rng: np.random.Generator) -> Instance:
    """``RandomHalfBody``: with ``cfg.half_body_prob`` (when at least ``half_body_min_total``
    keypoints are visible) replace the box by the box of the visible upper- or lower-body
    keypoints (upper preferred with ``half_body_upper_prob``, subject to the per-half minimums):
    center = their mean, scale = their extent times ``half_body_padding``. Modifies and returns
    ``inst``."""
    if cfg.half_body_prob <= 0 or not cfg.upper_body_ids:
        return inst
    vis = inst.visible
    if vis.sum() < cfg.half_body_min_total:
        return inst
    if rng.random() > cfg.half_body_prob:
        return inst
    k = len(vis)
    upper_set = set(cfg.upper_body_ids)
    upper = [i for i in cfg.upper_body_ids if vis[i] > 0]
    lower = [i for i in range(k) if i not in upper_set and vis[i] > 0]
    prefer_upper = rng.random() < cfg.half_body_upper_prob
    few_upper = len(upper) < cfg.half_body_min_upper
    few_lower = len(lower) < cfg.half_body_min_lower
    if few_upper and few_lower:
        return inst
    ids = upper if few_lower else lower if few_upper else (upper if prefer_upper else lower)
    sel = inst.keypoints[ids]
    inst.center = sel.mean(axis=0).astype(np.float32)
    inst.scale = ((sel.max(axis=0) - sel.min(axis=0)) * cfg.half_body_padding).astype(np.float32)
    return inst


def random_bbox_transform(inst: Instance, cfg: AugmentConfig, rng: np.random.Generator) -> Instance:
    """``RandomBBoxTransform``: center ``+= truncnorm * shift_factor * scale`` (with
    ``shift_prob``), scale ``*= truncnorm * (max - min) / 2 + (max + min) / 2`` (with
    ``scale_prob``), rotation ``= truncnorm * rotate_factor`` degrees (with ``rotate_prob``).
    Modifies and returns ``inst``."""
    offset = truncnorm(rng, 2) * cfg.shift_factor
    if not rng.random() < cfg.shift_prob:
        offset = np.zeros(2, np.float32)
    lo, hi = cfg.scale_factor
    scale = float(truncnorm(rng) * (hi - lo) * 0.5 + (hi + lo) * 0.5)
    if not rng.random() < cfg.scale_prob:
        scale = 1.0
    rot = float(truncnorm(rng) * cfg.rotate_factor)
    if not rng.random() < cfg.rotate_prob:
        rot = 0.0
    inst.center = (inst.center + offset * inst.scale).astype(np.float32)
    inst.scale = (inst.scale * scale).astype(np.float32)
    inst.rotation = rot
    return inst


def topdown_affine(inst: Instance, input_size: Sequence[int], use_udp: bool = False) -> Instance:
    """``TopdownAffine``: fix the box's aspect ratio to ``input_size`` ``(w, h)``, warp the image
    with the (UDP) warp matrix of center/scale/rotation (``cv2.warpAffine``, bilinear, zero
    border) and move the keypoints into input-crop pixels with the same matrix. Keypoints
    leaving the crop keep their visibility (the codec drops them). Modifies and returns
    ``inst``."""
    w, h = (int(v) for v in input_size)
    inst.scale = fix_aspect_ratio(inst.scale[None].astype(np.float32), w / h)[0].astype(np.float32)
    if use_udp:
        mat = get_udp_warp_matrix(inst.center, inst.scale, inst.rotation, (w, h))
    else:
        mat = get_warp_matrix(inst.center, inst.scale, inst.rotation, (w, h))
    inst.image = cv2.warpAffine(inst.image, mat, (w, h), flags=cv2.INTER_LINEAR)
    inst.keypoints = affine_transform_points(inst.keypoints, mat).astype(np.float32)
    return inst


def apply_train_pipeline(
    inst: Instance,
    cfg: AugmentConfig,
    flip_indices: Sequence[int],
    input_size: Sequence[int],
    use_udp: bool,
    rng: np.random.Generator | None,
) -> Instance:
    """The whole random part plus the affine: flip, half-body, box jitter, affine, then the
    recipe's pixel variants (``cfg.pixel_variants``, :func:`training.augment.apply_pixel_augment`:
    the crop's pixels only, keypoints untouched). With ``rng=None`` only the affine runs
    (validation-style crop, rotation 0)."""
    if rng is not None:
        random_flip(inst, flip_indices, cfg.flip_prob, rng)
        random_half_body(inst, cfg, rng)
        random_bbox_transform(inst, cfg, rng)
    topdown_affine(inst, input_size, use_udp)
    if rng is not None and cfg.pixel_variants:
        inst.image = apply_pixel_augment(inst.image, pixel_augment(cfg.pixel_variants), rng)
    return inst
