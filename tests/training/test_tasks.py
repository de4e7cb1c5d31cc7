"""The per-task parts of hrnet-train (training.tasks.build_task -> TopdownTask /
SegmentationTask): which task a recipe gets, its data, loss, optimiser, schedule length,
intervals and checkpoint names, as the Trainer calls them."""

from __future__ import annotations

import math

import pytest
import torch

from tests.train_fixtures import DLC_SMALL, small_rows, tiny_dlc_recipe
from tests.training.test_train_loop import dlc_small
from tests.training.test_train_seg import SEG_SMALL, cityscapes_root, seg_row
from training.data import TopdownDataset
from training.losses import KeypointMSELoss
from training.optim import PolyFactor, WarmupMultiStep
from training.pose_tasks import TopdownTask
from training.seg_data import SegDataset
from training.seg_losses import SegCrossEntropyLoss
from training.seg_recipes import SegTrainRecipe
from training.seg_task import SegmentationTask
from training.tasks import build_task

pytestmark = pytest.mark.usefixtures("small_rows")


def test_topdown_task(dlc_small):
    recipe = tiny_dlc_recipe(val_interval=4, checkpoint_interval=6)
    task = build_task(recipe, dlc_small, augment=False, seed=3)
    assert isinstance(task, TopdownTask) and isinstance(task.dataset, TopdownDataset)
    assert len(task.dataset) == 19 and task.dataset.augment is None and task.dataset.seed == 3
    assert task.card.name == DLC_SMALL and task.layout == "mmpose1"
    assert task.target_keys == ("heatmaps", "weights")
    assert task.has_validation and task.validation_source == dlc_small / "annotations/test.json"
    assert (task.recipe_epochs, task.recipe_iters) == (3, None)
    assert task.intervals(10) == (4, 6)  # epochs, whatever the epoch length
    assert isinstance(task.loss(), KeypointMSELoss)
    opt = task.optimisation([torch.nn.Parameter(torch.zeros(2))], 8, 30, 10)
    assert opt.lr == pytest.approx(1e-3 * 8 / 2)  # auto_scale_lr: global batch 8, base 2
    assert isinstance(opt.optimizer, torch.optim.Adam) and isinstance(
        opt.lr_factor, WarmupMultiStep
    )
    assert task.checkpoint_name(3, 30, True) == "epoch_3.pth"
    assert task.checkpoint_name(3, 25, False) == "iter_25.pth"
    assert task.best_name("PCK@0.2", 2, 20) == "best_PCK0.2_epoch_2.pth"


def test_segmentation_task(seg_row, cityscapes_root):
    recipe = SegTrainRecipe(model=SEG_SMALL, max_iters=40, val_interval=7, checkpoint_interval=9)
    task = build_task(recipe, cityscapes_root)
    assert isinstance(task, SegmentationTask) and isinstance(task.dataset, SegDataset)
    assert len(task.dataset) == 1 and len(task.val_pairs) == 1 and task.has_validation
    assert task.layout == "mmseg" and task.target_keys == ("labels",)
    assert (task.recipe_epochs, task.recipe_iters) == (None, 40)
    assert task.intervals(4) == (math.ceil(7 / 4), math.ceil(9 / 4)) == (2, 3)
    assert isinstance(task.loss(), SegCrossEntropyLoss)
    opt = task.optimisation([torch.nn.Parameter(torch.zeros(2))], 8, 40, 4)
    assert opt.lr == 0.01  # MMSeg: no batch scaling
    assert isinstance(opt.optimizer, torch.optim.SGD) and isinstance(opt.lr_factor, PolyFactor)
    assert opt.optimizer.param_groups[0]["momentum"] == 0.9
    assert task.checkpoint_name(3, 12, True) == "iter_12.pth"  # MMEngine: by iteration
    assert task.best_name("mIoU", 3, 12) == "best_mIoU_iter_12.pth"
