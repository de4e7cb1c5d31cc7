"""Validation of a bottom-up model during training: the gateway's own bottom-up path, in process,
scored like ``hrnet-eval --dataset coco`` against a bottom-up model.

Every image of the annotation file (``build_pose_items(box_source="bottomup")``) goes through
:func:`service.pipelines.bottomup.estimate_poses_bottomup` (resize to the card's short side,
flip test, stage/flip aggregation, grouping, adjust, refine, back to the image) with the network
run in PyTorch by :class:`TorchBackend` instead of ONNX Runtime; the people are scored by
:func:`benchmarks.eval_data.evaluate_coco_bottomup` (MMPose 0.x ``BottomUpCocoDataset.evaluate``:
grouping scores, no OKS-NMS).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from benchmarks.eval_data import build_pose_items, evaluate_coco_bottomup, load_json
from service.cards import BottomUpCard
from service.datasets import get_pose_dataset
from service.pipelines.bottomup import estimate_poses_bottomup

from .torch_backend import TorchBackend
from .validate import predict_images

__all__ = ["predict_bottomup", "evaluate_bottomup"]


def predict_bottomup(
    model: nn.Module,
    card: BottomUpCard,
    coco: dict,
    images_dir: str | Path,
    flip_test: bool = True,
    device: str | torch.device = "cpu",
) -> list[dict]:
    """Predictions for every image of ``coco``, in ``hrnet-eval``'s record format (``persons``
    with ``id``, ``bbox_xyxy``, ``bbox_score``, ``score``, ``keypoints [x, y, value]`` image
    pixels). The model is put in eval mode and back. Raises ``FileNotFoundError`` for an
    unreadable image."""
    if card.dataset is None:
        raise ValueError(f"card {card.name!r} names no dataset")
    items, _, _ = build_pose_items(coco, images_dir, card.dataset, box_source="bottomup")
    backend = TorchBackend(model, [o.name for o in card.outputs], device)

    def persons_of(img: np.ndarray, it: Any) -> list[dict]:
        res = asyncio.run(estimate_poses_bottomup(img, card, backend, flip_test=flip_test))
        return [
            {
                "id": j,
                "bbox_xyxy": res.boxes[j].tolist(),
                "bbox_score": float(res.person_scores[j]),
                "score": float(res.person_scores[j]),
                "keypoints": np.concatenate(
                    [res.keypoints[j], res.keypoint_scores[j][:, None]], 1
                ).tolist(),
            }
            for j in range(len(res.person_scores))
        ]

    return predict_images(model, items, persons_of)


def evaluate_bottomup(
    model: nn.Module,
    card: BottomUpCard,
    ann_file: str | Path,
    images_dir: str | Path,
    flip_test: bool = True,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """COCO ``AP``..``ARl`` of ``model`` on a keypoint file, bottom-up (no boxes). When no
    person was found at all (an early model: no peak above ``detection_threshold``) it returns
    ``{"AP": 0.0, "AR": 0.0}``, what COCOeval gives for no predictions. Raises
    :class:`benchmarks.eval_data.DataError` for bad files."""
    from benchmarks.eval_data import DataError

    coco = load_json(ann_file)
    if card.dataset is None:
        raise ValueError(f"card {card.name!r} names no dataset")
    records = predict_bottomup(model, card, coco, images_dir, flip_test, device)
    try:
        return evaluate_coco_bottomup(records, coco, get_pose_dataset(card.dataset).sigmas)[0]
    except DataError:
        if any(r["persons"] for r in records):
            raise
        return {"AP": 0.0, "AR": 0.0}
