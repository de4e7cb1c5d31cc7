"""The one interface :class:`training.trainer.Trainer` calls for what differs per task (top-down
pose, bottom-up pose, segmentation): the training set, the loss, the optimiser and LR schedule,
the validation and the checkpoint layout and names. Implementations:
:class:`training.pose_tasks.TopdownTask`, :class:`training.pose_tasks.BottomUpTask`,
:class:`training.seg_task.SegmentationTask`; :func:`training.tasks.build_task` picks one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from service.cards import BottomUpCard, SegmentationCard, TopDownCard

from .data import EpochDataset
from .losses import BatchLoss, targets_loss


@dataclass
class Optimisation:
    """A task's optimiser and LR schedule: ``lr`` (base LR after any batch scaling),
    ``optimizer`` over the model's parameters and ``lr_factor`` (iteration -> factor of ``lr``,
    picklable: ``LambdaLR`` state)."""

    lr: float
    optimizer: torch.optim.Optimizer
    lr_factor: Callable[[int], float]


class TrainTask(ABC):
    """What one task contributes to a training run.

    Attributes (set by the constructor):
        card: the model card the data and validation use.
        dataset: the training set (``dataset[i]`` is a dict with ``inputs`` and the targets).
        layout: the checkpoint layout (:func:`training.checkpoint.to_layout`).
        target_keys: the batch keys the loss takes after the prediction (see
            :meth:`batch_loss`).
        has_validation: whether the validation split exists.
        validation_source: where the validation split is (or was expected).
        recipe_epochs, recipe_iters: the recipe's length, in epochs or in iterations (the other
            is None).
    """

    card: TopDownCard | BottomUpCard | SegmentationCard
    dataset: EpochDataset
    layout: str
    target_keys: tuple[str, ...]
    has_validation: bool
    validation_source: Path
    recipe_epochs: int | None
    recipe_iters: int | None

    @abstractmethod
    def intervals(self, iters_per_epoch: int) -> tuple[int, int]:
        """The recipe's validation and checkpoint intervals in whole epochs of
        ``iters_per_epoch`` iterations."""

    @abstractmethod
    def loss(self) -> nn.Module:
        """The training loss module."""

    def batch_loss(self) -> BatchLoss:
        """The loss :func:`training.trainer.train_step` calls on a batch: :meth:`loss` on the
        prediction and ``batch[target_keys]`` (:func:`training.losses.targets_loss`)."""
        return targets_loss(self.loss(), self.target_keys)

    @abstractmethod
    def optimisation(
        self,
        params: Iterable[nn.Parameter],
        global_batch: int,
        max_iters: int,
        iters_per_epoch: int,
    ) -> Optimisation:
        """Optimiser over ``params`` and LR schedule for a run of ``max_iters`` iterations of
        ``global_batch`` samples (all ranks), ``iters_per_epoch`` an epoch."""

    @abstractmethod
    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, Any]:
        """Metrics of ``model`` (unwrapped, not DDP) on ``device`` over the validation split
        (the recipe's ``best_metric`` among them)."""

    @abstractmethod
    def checkpoint_name(self, epoch: int, iteration: int, whole_epoch: bool) -> str:
        """File name of the periodic checkpoint after ``iteration`` (global, 1-based) in
        ``epoch`` (1-based); ``whole_epoch``: the iteration ends an epoch."""

    @abstractmethod
    def best_name(self, metric: str, epoch: int, iteration: int) -> str:
        """File name of the best-``metric`` checkpoint at ``epoch`` / ``iteration``."""
