"""Validation during training: the served top-down path, in process, scored like ``hrnet-eval``.

Boxes are the ground-truth instances (:func:`benchmarks.eval_data.build_pose_items`); crops,
normalisation, flip test, decoding and the mapping back to the image are the gateway's own
functions (:mod:`service.pipelines.topdown`) driven by the model's card
(:func:`export.cards.pose_card`); only the network runs in PyTorch instead of ONNX Runtime.
Metrics are the eval job's: COCO AP/AR (MMPose ``CocoMetric``) for datasets with OKS sigmas,
Horse-10 PCK/NME, and EPE/RMSE/PCK@0.2 for pixel-error datasets (the DeepLabCut example).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from benchmarks.eval_data import (
    PIXEL_ERROR_DATASETS,
    build_pose_items,
    evaluate_coco_style,
    evaluate_horse10,
    evaluate_pixel_error,
    load_json,
)
from service.cards import TopDownCard
from service.datasets import get_pose_dataset
from service.pipelines.topdown import decode_outputs, prepare_inputs

__all__ = ["predict_images", "predict_records", "evaluate_model"]


def predict_images(
    model: nn.Module, items: Sequence[Any], persons_of: Callable[[np.ndarray, Any], list[dict]]
) -> list[dict]:
    """``hrnet-eval`` records (``{"key", "image_id", "persons"}``) of ``items``
    (:class:`benchmarks.eval_data.PoseItem`): each image is read (BGR) and
    ``persons_of(image, item)`` gives its persons, with ``model`` in eval mode (its mode is
    restored afterwards). Raises ``FileNotFoundError`` for an unreadable image."""
    was_training = model.training
    model.eval()
    records = []
    try:
        for it in items:
            img = cv2.imread(str(it.path), cv2.IMREAD_COLOR)
            if img is None:
                raise FileNotFoundError(f"cannot read image {it.path}")
            records.append({"key": it.key, "image_id": it.image_id, "persons": persons_of(img, it)})
    finally:
        model.train(was_training)
    return records


@torch.no_grad()
def predict_records(
    model: nn.Module,
    card: TopDownCard,
    coco: dict,
    images_dir: str | Path,
    dataset: str,
    flip_test: bool = True,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
) -> list[dict]:
    """Predictions for every ground-truth box, in ``hrnet-eval``'s record format
    (``{"key", "image_id", "persons": [{"id", "bbox_xyxy", "bbox_score", "keypoints"}]}``,
    keypoints ``[x, y, score]`` image pixels). The model is put in eval mode and back.
    Raises ``FileNotFoundError`` for an unreadable image."""
    items, _, _ = build_pose_items(coco, images_dir, dataset, box_source="gt")

    def persons_of(img: np.ndarray, it: Any) -> list[dict]:
        boxes = np.asarray(it.boxes, dtype=np.float32)
        centers, scales, x = prepare_inputs(img, boxes[:, :4], card, flip_test)
        outs = [
            model(torch.from_numpy(x[i : i + batch_size]).to(device)).float().cpu().numpy()
            for i in range(0, len(x), batch_size)
        ]
        kpts, kscores, _ = decode_outputs(
            np.concatenate(outs), len(boxes), centers, scales, boxes[:, 4], card, flip_test
        )
        return [
            {
                "id": aid,
                "bbox_xyxy": boxes[j, :4].tolist(),
                "bbox_score": float(boxes[j, 4]),
                "keypoints": np.concatenate([kpts[j], kscores[j, :, None]], 1).tolist(),
            }
            for j, aid in enumerate(it.box_ids)
        ]

    return predict_images(model, items, persons_of)


def evaluate_model(
    model: nn.Module,
    card: TopDownCard,
    ann_file: str | Path,
    images_dir: str | Path,
    flip_test: bool = True,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Metrics of ``model`` on a COCO-style keypoint file with ground-truth boxes.

    Only the card's served keypoints (``output_keypoint_indices``) are predicted and scored, so
    the COCO-AIC combine model is validated on a COCO file's 17 keypoints.
    Returns the metric dict of the dataset's kind: COCO ``AP``..``ARl`` (+ ``meanOKS``),
    Horse-10 ``PCK``/``NME``, or ``EPE``/``RMSE`` (pixels) and ``PCK@0.2``. Raises
    :class:`benchmarks.eval_data.DataError` for bad files or no predictions.
    """
    dataset = card.dataset
    w, h = card.input_size
    if dataset is None or w is None or h is None:
        raise ValueError(f"card {card.name!r} needs a dataset and a fixed input_size")
    coco = load_json(ann_file)
    records = predict_records(model, card, coco, images_dir, dataset, flip_test, device=device)
    if dataset in PIXEL_ERROR_DATASETS:
        return evaluate_pixel_error(records, coco)[0]
    if dataset == "horse10":
        return evaluate_horse10(records, coco)[0]
    # OKS sigmas of the served keypoints (the COCO 17 of the COCO-AIC combine head's 19)
    sigmas = np.asarray(get_pose_dataset(dataset).sigmas)[card.output_keypoints].tolist()
    return evaluate_coco_style(
        records, coco, sigmas, input_size=(w, h), padding=card.bbox_padding, gt_boxes=True
    )[0]
