"""Top-down pose: boxes -> affine crops -> one batched inference (+ flip) -> heatmap decoding.

Follows MMPose 1.x's top-down test path step for step:

1. ``GetBBoxCenterScale(padding=1.25)`` then ``TopdownAffine``'s aspect-ratio fix to the input's
   w/h, the three-point warp matrix (or the UDP one) and ``cv2.warpAffine(INTER_LINEAR)``;
2. ``PoseDataPreprocessor``: BGR->RGB, mean/std;
3. flip test (``test_cfg.flip_test``): the horizontally flipped crops go through the network in the
   same batch; their heatmaps are flipped back, channels swapped by the flip pairs, shifted by one
   pixel when ``shift_heatmap`` is set, and averaged with the plain ones (``flip_heatmaps``);
4. the card's codec decodes heatmaps to input-space keypoints (MSRA plain/DARK, or UDP);
5. ``add_pred_to_datasample``: back to image pixels through center/scale, then only the
   ``test_cfg.output_keypoint_indices`` keypoints (the card's ``output_keypoint_indices``; e.g.
   the COCO 17 of the 19-keypoint COCO-AIC "combine" head) are kept, and rescored.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np

from ..backends.base import Backend
from ..cards import TopDownCard
from ..codecs import build_codec
from ..codecs.flip import flip_heatmaps
from ..geometry import bbox_xyxy2cs, crop_persons, fix_aspect_ratio, keypoints_to_image
from ..metrics.coco_keypoints import rescore
from .common import StageTimer, to_input_tensor


@dataclass
class PoseResult:
    """Per person: ``keypoints`` (N, K, 2) float32 image pixels, ``keypoint_scores`` (N, K) with
    ``K`` the served keypoints (``card.output_keypoints``), ``person_scores`` (N,) = box score x
    mean keypoint score above 0.2 (MMPose's COCO rescoring)."""

    keypoints: np.ndarray
    keypoint_scores: np.ndarray
    person_scores: np.ndarray


async def estimate_poses(
    image_bgr: np.ndarray,
    boxes_xyxy: np.ndarray,
    box_scores: np.ndarray,
    card: TopDownCard,
    backend: Backend,
    *,
    flip_test: bool,
    timer: StageTimer | None = None,
) -> PoseResult:
    """Keypoints for every box of one image, all crops in one backend call.

    ``image_bgr``: (H, W, 3) uint8. ``boxes_xyxy``: (N, 4) float image pixels (validated by the
    caller: finite, sides of at least 1 pixel). ``box_scores``: (N,). Returns one person per box,
    in order. Cropping/normalisation and heatmap decoding run in worker threads, so the event loop
    stays free for other requests. Raises ValueError for a box with a non-positive scale
    (:func:`service.geometry.warp_matrices`), BackendError / BackendUnavailable from the backend.
    """
    timer = timer or StageTimer()
    n = len(boxes_xyxy)
    k = len(card.output_keypoints)
    if n == 0:
        z = np.zeros((0, k), np.float32)
        return PoseResult(np.zeros((0, k, 2), np.float32), z, np.zeros((0,), np.float32))

    with timer("preprocess"):  # crops + normalisation off the event loop
        centers, scales, x = await asyncio.to_thread(
            prepare_inputs, image_bgr, boxes_xyxy, card, flip_test
        )

    with timer("inference"):
        out = await backend.infer(card.name, {card.inputs[0].name: x}, [card.outputs[0].name])
        heatmaps = np.asarray(out[card.outputs[0].name], dtype=np.float32)

    with timer("decode_heatmaps"):
        kpts, kpt_scores, person_scores = await asyncio.to_thread(
            decode_outputs, heatmaps, n, centers, scales, box_scores, card, flip_test
        )
    return PoseResult(kpts, kpt_scores, person_scores)


def crop_inputs(
    image_bgr: np.ndarray, boxes_xyxy: np.ndarray, card: TopDownCard
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The model-input crops of the boxes, as MMPose's ``GetBBoxCenterScale`` + ``TopdownAffine``.

    ``image_bgr``: (H, W, 3) uint8; ``boxes_xyxy``: (N, 4) image pixels, cast to float32 (the
    dtype of MMPose's ``bbox``; :func:`service.boxes.parse_boxes` already returns float32).
    Returns ``(centers (N, 2) float32, scales (N, 2) float32 aspect-fixed, crops (N, h, w, 3)
    uint8)``, all float arithmetic in upstream's dtypes and order, so the crops are bit-identical
    to MMPose 1.x's for the same image and box. Raises ValueError for a non-positive box scale.
    """
    in_w, in_h = card.codec.input_size
    centers, scales = bbox_xyxy2cs(np.asarray(boxes_xyxy, np.float32), padding=card.bbox_padding)
    scales = fix_aspect_ratio(scales, aspect_ratio=in_w / in_h)
    crops = crop_persons(image_bgr, centers, scales, (in_w, in_h), use_udp=card.use_udp)
    return centers, scales, crops


def prepare_inputs(
    image_bgr: np.ndarray, boxes_xyxy: np.ndarray, card: TopDownCard, flip_test: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centers/scales ``(N, 2)`` float32 (aspect-fixed, image pixels) and the network input
    ``(N or 2N, 3, h, w)`` float32 (the flipped crops after the plain ones with ``flip_test``):
    :func:`crop_inputs` then the card's normalisation. Shared by :func:`estimate_poses` and the
    trainer's validation (``training.validate``). Raises ValueError for a non-positive box scale."""
    centers, scales, crops = crop_inputs(image_bgr, boxes_xyxy, card)
    return centers, scales, to_input_tensor(crops, card.normalization, with_flipped=flip_test)


def decode_outputs(
    heatmaps: np.ndarray,
    n: int,
    centers: np.ndarray,
    scales: np.ndarray,
    box_scores: np.ndarray,
    card: TopDownCard,
    flip_test: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Heatmaps ``(N or 2N, K_head, h, w)`` -> ``(keypoints (N, K, 2) float32 image pixels,
    keypoint scores (N, K), person scores (N,))``: MMPose's ``flip_heatmaps`` merge (the head's
    flip indices, one-pixel shift), the card's codec, back through center/scale, then the
    ``output_keypoint_indices`` selection and COCO rescoring (``box score x mean(score > 0.2)``).
    ``n`` is the number of boxes; ``K`` the served keypoints. Shared with ``training.validate``."""
    codec_spec = card.codec
    if flip_test:
        # (plain + flipped) * 0.5 as upstream, in place in the new flipped array
        merged = flip_heatmaps(heatmaps[n:], card.flip_indices, shift_heatmap=card.shift_heatmap)
        merged += heatmaps[:n]
        merged *= np.float32(0.5)
        heatmaps = merged
    kpts_input, kpt_scores = build_codec(codec_spec).decode(heatmaps)
    kpts = keypoints_to_image(kpts_input, centers, scales, codec_spec.input_size)
    if card.output_keypoint_indices is not None:  # after the flip with the head's flip indices
        sel = card.output_keypoint_indices
        kpts, kpt_scores = kpts[:, sel], kpt_scores[:, sel]
    person_scores = rescore(np.asarray(box_scores, np.float32), kpt_scores, thr=0.2)
    return (
        kpts.astype(np.float32),
        kpt_scores.astype(np.float32),
        np.asarray(person_scores, np.float32),
    )
