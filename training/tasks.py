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
    """The task of ``recipe``'s registry entry (``segmentation``, ``bottomup_pose``, else
    top-down) with its data under ``root`` (random augmentation when ``augment``, drawn from
    ``seed``). Raises ``TypeError`` when the recipe's kind does not fit the entry's task (a
    segmentation model needs a :class:`SegTrainRecipe`, a pose model a :class:`TrainRecipe`),
    and what the task's constructor raises for missing data."""
    task = recipe.entry.task
    if isinstance(recipe, SegTrainRecipe) != (task == "segmentation"):
        raise TypeError(
            f"{recipe.model}: a {task} model cannot train from a {type(recipe).__name__}"
        )
    if isinstance(recipe, SegTrainRecipe):
        return SegmentationTask(recipe, root, augment, seed)
    if task == "bottomup_pose":
        return BottomUpTask(recipe, root, augment, seed)
    return TopdownTask(recipe, root, augment, seed)
