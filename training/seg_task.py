"""The segmentation training task (:class:`~training.task_base.TrainTask`) of a
:class:`~training.seg_recipes.SegTrainRecipe`, as MMSeg trains FCN-HRNetV2: the MMSeg folder
layout (:mod:`training.seg_data`), :class:`~training.seg_losses.SegCrossEntropyLoss`, SGD + poly LR
by iteration (:func:`~training.optim.build_sgd`, :class:`~training.optim.PolyFactor`; MMSeg
configs have no ``auto_scale_lr``), validation by :func:`training.seg_validate.evaluate_seg_model`,
MMSeg's checkpoint layout and MMEngine's iteration-named files (``iter_N.pth``,
``best_<metric>_iter_N.pth``). The recipe's length and intervals are iterations; the intervals
are rounded up to whole epochs of the data.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from export.cards import seg_card
from service.cards import SegmentationCard

from .optim import PolyFactor, build_sgd
from .seg_data import SegDataset, list_pairs
from .seg_losses import SegCrossEntropyLoss
from .seg_recipes import SegTrainRecipe
from .task_base import Optimisation, TrainTask

__all__ = ["SegmentationTask"]


class SegmentationTask(TrainTask):
    """Segmentation training on ``recipe``'s training splits under ``root`` (augmented by
    ``recipe.augment`` when ``augment``, drawn from ``seed``); ``val_pairs`` are the (image,
    label) paths of its validation split, empty (validation skipped) when that folder is missing.

    Raises ``FileNotFoundError`` when there is no training image.
    """

    card: SegmentationCard

    def __init__(self, recipe: SegTrainRecipe, root: Path, augment: bool, seed: int) -> None:
        self.recipe = recipe
        self.card = seg_card(recipe.entry, recipe.entry.name)
        layout = recipe.data
        pairs = [p for split in layout.train for p in list_pairs(root, split)]
        if not pairs:
            raise FileNotFoundError(f"no training images under {root} for {recipe.model}")
        self.dataset = SegDataset(
            pairs,
            self.card.normalization,
            recipe.train_scale,
            recipe.train_crop,
            recipe.augment if augment else None,
            layout.reduce_zero_label,
            seed=seed,
        )
        self.val_pairs: list[tuple[Path, Path]] = []
        if layout.val is not None and (root / layout.val.img_dir).is_dir():
            self.val_pairs = list_pairs(root, layout.val)
        self.has_validation = bool(self.val_pairs)
        self.validation_source = root / layout.val.img_dir if layout.val is not None else root
        self.layout, self.target_keys = "mmseg", ("labels",)
        self.recipe_epochs, self.recipe_iters = None, recipe.max_iters

    def intervals(self, iters_per_epoch: int) -> tuple[int, int]:
        r = self.recipe
        return (
            math.ceil(r.val_interval / iters_per_epoch),
            math.ceil(r.checkpoint_interval / iters_per_epoch),
        )

    def loss(self) -> nn.Module:
        r = self.recipe
        return SegCrossEntropyLoss(
            r.ignore_index, r.avg_non_ignore, align_corners=bool(r.entry.align_corners)
        )

    def optimisation(
        self,
        params: Iterable[nn.Parameter],
        global_batch: int,
        max_iters: int,
        iters_per_epoch: int,
    ) -> Optimisation:
        r = self.recipe
        lr = float(r.lr)
        factor = PolyFactor(lr, max_iters, r.eta_min, r.power)
        return Optimisation(lr, build_sgd(params, lr, r.momentum, r.weight_decay), factor)

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, Any]:
        from .seg_validate import evaluate_seg_model

        return evaluate_seg_model(
            model, self.card, self.val_pairs, self.recipe.data.reduce_zero_label, device
        )

    def checkpoint_name(self, epoch: int, iteration: int, whole_epoch: bool) -> str:
        return f"iter_{iteration}.pth"

    def best_name(self, metric: str, epoch: int, iteration: int) -> str:
        return f"best_{metric}_iter_{iteration}.pth"
