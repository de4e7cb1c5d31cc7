"""Bottom-up (HigherHRNet) training augmentation: whole image -> square input + per-stage masks and
joints, numpy + OpenCV.

Follows MMPose 0.x ``mmpose/datasets/pipelines/bottom_up_transform.py`` (non-UDP), in the order of
the HigherHRNet COCO configs::

    BottomUpRandomAffine(rot_factor=30, scale_factor=[0.75, 1.5], scale_type='short',
                         trans_factor=40)                     -> random_affine
    BottomUpRandomFlip(flip_prob=0.5)                          -> random_flip
    BottomUpGenerateTarget(sigma=2, max_num_people=30)         -> service.codecs.
                                                                  associative_embedding_targets

The random draws follow upstream's distributions (scale and rotation uniform, translation a
uniform integer in ``[int(-t), int(t))``, flip with ``flip_prob``) from a
``numpy.random.Generator`` passed in (:func:`training.data.sample_rng`), not upstream's global
``np.random`` stream. Matrices are :func:`service.geometry.get_bottomup_warp_matrix` (upstream's
``get_affine_transform`` point triple, rotation included).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from service.geometry import affine_transform_points, get_bottomup_warp_matrix

__all__ = [
    "BottomUpAugment",
    "bottomup_scale",
    "AffineDraw",
    "draw_affine",
    "warp_sample",
    "random_flip",
    "BottomUpSample",
]


@dataclass(frozen=True)
class BottomUpAugment:
    """Parameters of the bottom-up random steps (defaults: MMPose 0.x HigherHRNet COCO configs).

    Attributes:
        rot_factor: rotation uniform in ``[-rot_factor, rot_factor]`` degrees.
        scale_factor: ``(min, max)`` of the uniform zoom-out factor of the region taken.
        scale_type: ``'short'`` (the region's short side fits the output) or ``'long'``.
        trans_factor: translation of the center, uniform integer pixels in
            ``[int(-t * s / 200), int(t * s / 200))`` per axis for a region of size ``s``.
        flip_prob: ``BottomUpRandomFlip`` probability; 0 disables.
    """

    rot_factor: float = 30.0
    scale_factor: tuple[float, float] = (0.75, 1.5)
    scale_type: str = "short"
    trans_factor: float = 40.0
    flip_prob: float = 0.5

    def __post_init__(self) -> None:
        if self.scale_type not in ("short", "long"):
            raise ValueError(f"scale_type must be 'short' or 'long', got {self.scale_type!r}")
        lo, hi = self.scale_factor
        if not 0 < lo <= hi:
            raise ValueError(
                f"scale_factor must be (min, max) with 0 < min <= max, got {self.scale_factor!r}"
            )


@dataclass
class BottomUpSample:
    """One image as it moves through the pipeline.

    Attributes:
        image: ``(H, W, 3)`` uint8 (BGR as read; the warp is per channel).
        masks: per stage ``(H_s, W_s)`` float32, 1 = supervised (before :func:`warp_sample`: one
            ``(H, W)`` image-size mask per stage).
        joints: per stage ``(N, K, 3)`` float32 ``x, y`` (image pixels, then stage heatmap
            pixels) and the COCO visibility.
    """

    image: np.ndarray
    masks: list[np.ndarray]
    joints: list[np.ndarray]


def bottomup_scale(
    region_wh: Sequence[float], output_wh: Sequence[int], scale_type: str = "short"
) -> np.ndarray:
    """``BottomUpRandomAffine._get_scale``: the region ``(w, h)`` padded to the output's aspect
    ratio along its long (``'short'``: the short side fits) or short side. Returns ``(2,)``
    float32 image pixels. Raises ``ValueError`` for an unknown ``scale_type``."""
    w, h = float(region_wh[0]), float(region_wh[1])
    ow, oh = float(output_wh[0]), float(output_wh[1])
    if scale_type not in ("short", "long"):
        raise ValueError(f"unknown scale type {scale_type!r}")
    if (w / ow < h / oh) == (scale_type == "short"):
        size = (w, w / ow * oh)
    else:
        size = (h / oh * ow, h)
    return np.array(size, dtype=np.float32)


@dataclass(frozen=True)
class AffineDraw:
    """The random numbers of one ``BottomUpRandomAffine`` call: zoom ``aug_scale``, rotation
    ``aug_rot`` (degrees) and the integer center shift ``(dx, dy)`` (image pixels)."""

    aug_scale: float
    aug_rot: float
    dx: int
    dy: int


def draw_affine(
    cfg: BottomUpAugment, image_wh: Sequence[int], rng: np.random.Generator
) -> AffineDraw:
    """Draw scale, rotation and translation in upstream's order. The translation bound
    ``trans_factor * size * aug_scale / 200`` is truncated toward zero at both ends (what
    ``np.random.randint`` does with float bounds); an empty range gives 0 (upstream raises)."""
    lo, hi = cfg.scale_factor
    aug_scale = rng.random() * (hi - lo) + lo
    region = np.array(image_wh, dtype=np.float32) * aug_scale
    aug_rot = (rng.random() * 2 - 1) * cfg.rot_factor
    shift = [0, 0]
    if cfg.trans_factor > 0:
        for i in range(2):
            bound = float(np.float32(cfg.trans_factor) * region[i] / np.float32(200.0))
            a, b = int(-bound), int(bound)
            shift[i] = int(rng.integers(a, b)) if b > a else 0
    return AffineDraw(float(aug_scale), float(aug_rot), shift[0], shift[1])


def warp_sample(
    sample: BottomUpSample,
    draw: AffineDraw,
    input_size: int,
    heatmap_sizes: Sequence[int],
    scale_type: str = "short",
) -> BottomUpSample:
    """``BottomUpRandomAffine`` (non-UDP) with given random numbers.

    The region is the image size times ``aug_scale`` around the image center ``(w/2, h/2)``
    shifted by ``(dx, dy)``, padded by :func:`bottomup_scale`, rotated by ``aug_rot``. The image
    is warped to ``input_size`` squared (``cv2.warpAffine``, bilinear, black border); each
    stage's mask (as uint8 0/255, bilinear, border 0 = unsupervised, then ``> 0.5``) and joints
    to that stage's square heatmap size. The scale goes through upstream's ``/ 200 * 200`` in
    float32 so the matrices are bit-identical. Modifies and returns ``sample``.
    """
    h, w = sample.image.shape[:2]
    center = np.array((w / 2, h / 2)) + np.array((draw.dx, draw.dy))
    region = np.array([w, h], dtype=np.float32) * np.float32(draw.aug_scale)

    def matrix(size: int) -> np.ndarray:
        scale = bottomup_scale(region, (size, size), scale_type)
        scale = (scale / 200.0) * 200.0  # float32 round trip, as upstream
        return get_bottomup_warp_matrix(center, scale, (size, size), rot=draw.aug_rot)

    masks, joints = [], []
    for size, mask, j in zip(heatmap_sizes, sample.masks, sample.joints):
        m = matrix(int(size))
        warped = cv2.warpAffine((mask * 255).astype(np.uint8), m, (int(size), int(size)))
        masks.append((warped / 255 > 0.5).astype(np.float32))
        j = j.copy()
        j[:, :, :2] = affine_transform_points(j[:, :, :2], m)
        joints.append(j)
    sample.image = cv2.warpAffine(
        sample.image, matrix(int(input_size)), (int(input_size), int(input_size))
    )
    sample.masks, sample.joints = masks, joints
    return sample


def random_flip(
    sample: BottomUpSample, flip_indices: Sequence[int], prob: float, rng: np.random.Generator
) -> BottomUpSample:
    """``BottomUpRandomFlip``: with probability ``prob`` mirror the image and every stage's mask,
    swap the joints by ``flip_indices`` and map ``x -> W_s - 1 - x`` in each stage's heatmap
    pixels. Nothing is drawn when ``prob`` is 0. Modifies and returns ``sample``."""
    if prob <= 0 or not rng.random() < prob:
        return sample
    idx = np.asarray(flip_indices, dtype=np.int64)
    sample.image = np.ascontiguousarray(sample.image[:, ::-1])
    joints = []
    for mask, j in zip(sample.masks, sample.joints):
        j = j[:, idx].copy()
        j[:, :, 0] = mask.shape[1] - j[:, :, 0] - 1
        joints.append(j)
    sample.masks = [np.ascontiguousarray(m[:, ::-1]) for m in sample.masks]
    sample.joints = joints
    return sample
