"""Validation of segmentation models during training: the gateway's own test path in process.

Each validation image goes through :func:`service.pipelines.segmentation.segment` (MMSeg's
keep-ratio test resize, whole/slide inference, logits resized back to the image, argmax) driven
by the model's card (:func:`export.cards.seg_card`); only the network runs in PyTorch, behind
:class:`TorchBackend` instead of ONNX Runtime. Scores are the eval job's mIoU
(:class:`service.metrics.segmentation.IoUAccumulator`, MMSeg ``IoUMetric``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import torch
from torch import nn

from service.cards import SegmentationCard
from service.metrics.segmentation import IoUAccumulator
from service.pipelines.segmentation import segment

from .seg_data import read_label
from .torch_backend import TorchBackend

__all__ = ["evaluate_seg_model"]


def evaluate_seg_model(
    model: nn.Module,
    card: SegmentationCard,
    pairs: Sequence[tuple[Path, Path]],
    reduce_zero_label: bool = False,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """mIoU of ``model`` over ``(image, label)`` pairs, through the gateway's segmentation path
    with ``card``'s test settings (no flip, no multi-scale). The model is put in eval mode and
    back. Returns ``aAcc``, ``mIoU``, ``mAcc`` (percent, 2 decimals) and the per-class dicts.
    Raises ``FileNotFoundError`` for an unreadable image."""
    acc = IoUAccumulator(len(card.classes), 255, card.classes)
    backend = TorchBackend(model, [card.outputs[0].name], device)
    was_training = model.training
    model.eval()
    try:
        for img_path, label_path in pairs:
            img = cv2.imread(str(img_path), cv2.IMREAD_COLOR)
            if img is None:
                raise FileNotFoundError(f"cannot read image {img_path}")
            result = asyncio.run(segment(img, card, backend))
            acc.update(result.label_map, read_label(label_path, reduce_zero_label))
    finally:
        model.train(was_training)
    return acc.compute()
