"""Bottom-up pose (HigherHRNet, associative embedding): whole image -> people, no boxes needed.

Follows the HigherHRNet repo's test loop (``tools/valid.py``), which MMPose 0.x's
``AssociativeEmbedding.forward_test`` re-implements:

1. per test scale, largest first: ``resize_align_multi_scale`` (short side ``input_size * scale``,
   sides multiples of 64 at the smallest scale; :mod:`service.geometry`), then the card's
   normalisation (HigherHRNet: RGB, ImageNet mean/std on 0..1);
2. one backend call per scale; with flip test the mirrored image rides in the same batch (2);
3. :func:`service.codecs.associative_embedding.aggregate_outputs`: stages, flip and scales
   aggregated at the resized image's size (``project2image``);
4. :func:`~service.codecs.associative_embedding.group_people`: peaks, top-k, tag grouping,
   adjust, person scores, refine;
5. back to image pixels through the smallest scale's center/scale (the ones upstream's loop ends
   with), and a box around each person's found keypoints.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..backends.base import Backend
from ..cards import BottomUpCard
from ..codecs.associative_embedding import (
    ScaleOutputs,
    aggregate_outputs,
    group_people,
    people_to_image,
)
from ..forms import validate_ratios
from ..geometry import get_multi_scale_size, resize_align_multi_scale
from .common import StageTimer, to_input_tensor
from .topdown import PoseResult

__all__ = ["BottomUpResult", "BottomUpScales", "estimate_poses_bottomup", "check_scales"]


@dataclass
class BottomUpResult(PoseResult):
    """:class:`PoseResult` of a bottom-up model plus ``boxes`` ``(P, 4)`` float32 xyxy image pixels
    around each person's found keypoints (score > 0). ``person_scores`` is upstream's: the mean of
    the K keypoint values before refinement (missing joints count 0); ``keypoint_scores`` are the
    heatmap values (0 where a joint was found neither by grouping nor by refine)."""

    boxes: np.ndarray


@dataclass(frozen=True)
class BottomUpScales:
    """Checked test scales of one request, largest first (upstream's processing order); made by
    :func:`check_scales`, taken as is by :func:`estimate_poses_bottomup` (validated once)."""

    values: tuple[float, ...]


def check_scales(scales: Sequence[float] | None, default: Sequence[float]) -> BottomUpScales:
    """The test scales of a request, largest first (upstream's processing order).

    ``None`` or empty -> the card's ``scale_factor``. The numbers follow the gateway's one rule for
    test-time ratios (:func:`service.forms.validate_ratios`: at most 8, finite, in (0, 4]); on top,
    several scales must include 1 (upstream takes the tags at scale 1 only). Raises ValueError
    naming the problem.
    """
    values = validate_ratios(list(scales) if scales else list(default), {}) or ()
    if len(values) > 1 and 1 not in values:
        raise ValueError(
            f"multi-scale testing needs scale 1 among the scales (tags come from "
            f"scale 1), got {list(values)}"
        )
    return BottomUpScales(tuple(sorted(values, reverse=True)))


async def estimate_poses_bottomup(
    image_bgr: np.ndarray,
    card: BottomUpCard,
    backend: Backend,
    *,
    flip_test: bool,
    scales: BottomUpScales | None = None,
    timer: StageTimer | None = None,
) -> BottomUpResult:
    """All people of one image with a bottom-up (associative-embedding) model.

    Args:
        image_bgr: ``(H, W, 3)`` uint8 BGR image, as the top-down pipeline takes it.
        card: a ``bottomup_pose`` card (``card.bottomup`` holds the test parameters; its
            ``outputs`` are the stages, lowest resolution first).
        backend: runs ``card.name``.
        flip_test: add the mirrored image to each scale's batch (needs ``card.flip_indices``).
        scales: the request's checked test scales (:func:`check_scales`, e.g. of ``[2, 1, 0.5]``);
            None = the card's ``scale_factor``.
        timer: collects ``preprocess``, ``inference``, ``aggregate`` and ``group`` ms.

    Returns:
        :class:`BottomUpResult`: ``keypoints`` ``(P, K, 2)`` float32 image pixels,
        ``keypoint_scores`` ``(P, K)``, ``person_scores`` ``(P,)``, ``boxes`` ``(P, 4)``; people in
        upstream's order (creation order of the grouping).

    Raises:
        ValueError: a bad ``scale_factor`` on the card, ``use_udp`` (not implemented), flip
            test without flip indices, or outputs that do not fit the card.
        BackendError / BackendUnavailable: from the backend.
    """
    timer = timer or StageTimer()
    spec = card.bottomup
    if spec.use_udp:
        raise ValueError("UDP bottom-up decoding (use_udp) is not implemented")
    if flip_test and not card.flip_indices:
        raise ValueError(f"model {card.name!r} has no flip_indices; flip test is not possible")
    test_scales = list((scales or check_scales(None, spec.scale_factor)).values)
    min_scale = min(test_scales)
    h, w = image_bgr.shape[:2]
    out_names = [o.name for o in card.outputs]

    per_scale = []
    for s in test_scales:
        with timer("preprocess"):
            x, center, scale = await asyncio.to_thread(
                _preprocess, image_bgr, card, s, min_scale, flip_test
            )
        with timer("inference"):
            out = await backend.infer(card.name, {card.inputs[0].name: x}, out_names)
        stages = [np.asarray(out[n], dtype=np.float32) for n in out_names]
        per_scale.append(
            ScaleOutputs(s, [a[0] for a in stages], [a[1] for a in stages] if flip_test else None)
        )

    base_size, _, _ = get_multi_scale_size(
        (w, h), spec.input_size, 1.0, min_scale, spec.size_divisor
    )
    with timer("aggregate"):
        heatmaps, tags = await asyncio.to_thread(
            aggregate_outputs,
            per_scale,
            num_joints=spec.num_joints,
            flip_indices=card.flip_indices,
            with_heatmaps=spec.with_heatmaps,
            with_ae=spec.with_ae,
            tag_per_joint=spec.tag_per_joint,
            project2image=spec.project2image,
            base_size=base_size,
            align_corners=spec.align_corners,
        )
    with timer("group"):
        return await asyncio.to_thread(_group, heatmaps, tags, spec, center, scale)


def _preprocess(
    image_bgr: np.ndarray, card: BottomUpCard, s: float, min_scale: float, flip_test: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Network input ``(1 or 2, 3, h, w)`` of one scale, with that scale's center/scale."""
    spec = card.bottomup
    resized, center, scale = resize_align_multi_scale(
        image_bgr, spec.input_size, s, min_scale, spec.size_divisor
    )
    x = to_input_tensor(resized[None], card.normalization, with_flipped=flip_test)
    return x, center, scale


def _group(
    heatmaps: np.ndarray, tags: np.ndarray, spec, center: np.ndarray, scale: np.ndarray
) -> BottomUpResult:
    grouped = group_people(heatmaps, tags, spec)
    people = grouped.people
    kpts = people_to_image(people[..., :2], center, scale, (heatmaps.shape[2], heatmaps.shape[1]))
    scores = people[..., 2].astype(np.float32)
    found = scores > 0
    big = np.float32(np.inf)
    boxes = np.concatenate(
        [
            np.where(found[..., None], kpts, big).min(axis=1),
            np.where(found[..., None], kpts, -big).max(axis=1),
        ],
        axis=1,
    )
    return BottomUpResult(
        kpts, scores, grouped.scores.astype(np.float32), boxes.astype(np.float32).reshape(-1, 4)
    )
