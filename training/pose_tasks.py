"""The pose training tasks (:class:`~training.task_base.TrainTask`): top-down heatmaps and
bottom-up HigherHRNet, both from a :class:`~training.recipes.TrainRecipe`.

Shared (:class:`PoseTask`, MMPose's schedule): Adam at ``lr`` scaled by the global batch
(``auto_scale_lr``), linear warm-up then step decay by epoch (:class:`~training.optim.
WarmupMultiStep`); COCO-style validation from the recipe's ``data.val_ann`` / ``val_images``;
checkpoints ``epoch_N.pth`` (``iter_N.pth`` when a run stops inside an epoch) and
``best_<metric without @>_epoch_N.pth``.

Top-down: :class:`~training.data.TopdownDataset`, :class:`~training.losses.KeypointMSELoss`,
:func:`training.validate.evaluate_model`, MMPose 1.x checkpoint layout. Bottom-up:
:class:`~training.bottomup_data.BottomUpDataset`, :class:`~training.ae_loss.BottomUpLoss`,
:func:`training.bottomup_validate.evaluate_bottomup`, MMPose 0.x layout (the only upstream with
HigherHRNet).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from export.cards import bottomup_card, pose_card
from service.cards import BottomUpCard, TopDownCard
from service.codecs import build_codec
from service.codecs.associative_embedding_targets import AssociativeEmbeddingTargets

from .ae_loss import BottomUpLoss
from .bottomup_data import BottomUpDataset, load_bottomup_records, stage_sizes
from .data import TopdownDataset, load_sources
from .losses import BatchLoss, KeypointMSELoss
from .optim import WarmupMultiStep, build_optimizer, scaled_lr
from .recipes import BottomUpTrainConfig, DataSource, TrainRecipe
from .task_base import Optimisation, TrainTask

__all__ = ["PoseTask", "TopdownTask", "BottomUpTask"]


class PoseTask(TrainTask):
    """What the pose tasks share (see the module doc); ``recipe``'s validation split is looked
    for under ``root``."""

    def __init__(self, recipe: TrainRecipe, root: Path) -> None:
        self.recipe = recipe
        self.val_ann = root / recipe.data.val_ann
        self.val_images = root / recipe.data.val_images
        self.has_validation = self.val_ann.is_file()
        self.validation_source = self.val_ann
        self.recipe_epochs, self.recipe_iters = recipe.max_epochs, None

    def intervals(self, iters_per_epoch: int) -> tuple[int, int]:
        return self.recipe.val_interval, self.recipe.checkpoint_interval

    def optimisation(
        self,
        params: Iterable[nn.Parameter],
        global_batch: int,
        max_iters: int,
        iters_per_epoch: int,
    ) -> Optimisation:
        r = self.recipe
        lr = scaled_lr(r.lr, global_batch, r.base_batch_size)
        factor = WarmupMultiStep(
            iters_per_epoch,
            r.warmup_iters,
            r.warmup_factor,
            r.milestones,
            r.gamma,
            style=r.warmup_style,
        )
        return Optimisation(lr, build_optimizer(params, lr, r.weight_decay), factor)

    def checkpoint_name(self, epoch: int, iteration: int, whole_epoch: bool) -> str:
        return f"epoch_{epoch}.pth" if whole_epoch else f"iter_{iteration}.pth"

    def best_name(self, metric: str, epoch: int, iteration: int) -> str:
        return f"best_{metric.replace('@', '')}_epoch_{epoch}.pth"


class TopdownTask(PoseTask):
    """Top-down heatmap training: the card and codec of ``recipe``'s registry entry, the
    persons of the recipe's sources (``data.sources``, else ``train_ann`` / ``train_images``)
    under ``root``, augmented by ``recipe.augment`` when ``augment``, drawn from ``seed``.

    Raises ``FileNotFoundError`` / :class:`benchmarks.eval_data.DataError` from
    :func:`training.data.load_sources` for missing or malformed annotations.
    """

    card: TopDownCard

    def __init__(self, recipe: TrainRecipe, root: Path, augment: bool, seed: int) -> None:
        entry = recipe.entry
        self.card = pose_card(entry, entry.name)
        codec = build_codec(self.card.codec)
        data = recipe.data
        sources = data.sources or (DataSource(data.train_ann, data.train_images, entry.dataset),)
        records = load_sources(root, sources, entry.num_outputs)
        self.dataset = TopdownDataset(
            records,
            codec,
            self.card.normalization,
            self.card.flip_indices,
            augment=recipe.augment if augment else None,
            padding=recipe.bbox_padding,
            use_udp=entry.use_udp,
            seed=seed,
        )
        self.layout, self.target_keys = "mmpose1", ("heatmaps", "weights")
        super().__init__(recipe, root)

    def loss(self) -> nn.Module:
        return KeypointMSELoss(use_target_weight=True)

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, Any]:
        from .validate import evaluate_model

        card = self.card
        return evaluate_model(model, card, self.val_ann, self.val_images, card.flip_test, device)


class BottomUpTask(PoseTask):
    """Bottom-up (HigherHRNet) training: the card of ``recipe``'s registry entry with its short
    side set to the training input size (``recipe.bottomup.input_size``, else the card's), the
    associative-embedding targets of its stages, and the images of ``data.train_ann`` under
    ``root`` (augmented by ``recipe.bottomup.augment`` when ``augment``, drawn from ``seed``).

    Raises ``FileNotFoundError`` when the training annotations are missing, ``ValueError`` for a
    recipe without a ``bottomup`` config.
    """

    card: BottomUpCard

    def __init__(self, recipe: TrainRecipe, root: Path, augment: bool, seed: int) -> None:
        train_ann = root / recipe.data.train_ann
        if not train_ann.is_file():
            raise FileNotFoundError(f"training annotations not found: {train_ann}")
        if recipe.bottomup is None:
            raise ValueError(f"recipe {recipe.model}: a bottom-up model needs a bottomup config")
        self.config: BottomUpTrainConfig = recipe.bottomup
        entry = recipe.entry
        card = bottomup_card(entry, entry.name)
        size = int(self.config.input_size or card.bottomup.input_size)
        self.card = card.model_copy(
            update={"bottomup": card.bottomup.model_copy(update={"input_size": size})}
        )
        sizes = stage_sizes(size, len(self.card.bottomup.with_ae))
        targets = AssociativeEmbeddingTargets(
            tuple((s, s) for s in sizes),
            sigma=self.config.sigma,
            max_num_people=self.config.max_num_people,
            tag_per_joint=self.card.bottomup.tag_per_joint,
        )
        records = load_bottomup_records(
            train_ann, root / recipe.data.train_images, entry.num_outputs
        )
        self.dataset = BottomUpDataset(
            records,
            size,
            targets,
            self.card.normalization,
            self.card.flip_indices,
            augment=self.config.augment if augment else None,
            seed=seed,
        )
        # the loss takes the per-stage heatmaps, masks and joints itself (batch_loss)
        self.layout, self.target_keys = "mmpose0", ()
        super().__init__(recipe, root)

    def batch_loss(self) -> BatchLoss:
        """:meth:`training.ae_loss.BottomUpLoss.batch_loss` of :meth:`loss`."""
        return self.loss().batch_loss

    def loss(self) -> BottomUpLoss:
        cfg, spec = self.config, self.card.bottomup
        return BottomUpLoss(
            spec.num_joints,
            with_heatmaps_loss=spec.with_heatmaps,
            heatmaps_loss_factor=cfg.heatmaps_loss_factor,
            with_ae_loss=spec.with_ae,
            push_loss_factor=cfg.push_loss_factor,
            pull_loss_factor=cfg.pull_loss_factor,
            ae_loss_type=cfg.ae_loss_type,
            supervise_empty=cfg.supervise_empty,
        )

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, Any]:
        from .bottomup_validate import evaluate_bottomup

        card = self.card
        return evaluate_bottomup(model, card, self.val_ann, self.val_images, card.flip_test, device)
