"""The training task of a recipe (:func:`build_task`): the one place that maps a registry
entry's ``task`` to its :class:`~training.task_base.TrainTask` implementation."""

from __future__ import annotations

from pathlib import Path

from .pose_tasks import BottomUpTask, TopdownTask
from .recipes import TrainRecipe
from .seg_recipes import SegTrainRecipe
from .seg_task import SegmentationTask
from .task_base import TrainTask

__all__ = ["build_task"]


def build_task(
    recipe: TrainRecipe | SegTrainRecipe, root: Path, augment: bool = True, seed: int = 0
) -> TrainTask:
    """The task of ``recipe``: segmentation for a :class:`SegTrainRecipe`, else bottom-up or
    top-down by its registry entry's ``task`` (the recipes check that their model fits them), with
    its data under ``root`` (random augmentation when ``augment``, drawn from ``seed``). Raises
    what the task's constructor raises for missing data."""
    if isinstance(recipe, SegTrainRecipe):
        return SegmentationTask(recipe, root, augment, seed)
    if recipe.entry.task == "bottomup_pose":
        return BottomUpTask(recipe, root, augment, seed)
    return TopdownTask(recipe, root, augment, seed)
