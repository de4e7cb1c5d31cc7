"""Segmentation training recipes: MMSeg 1.x ``configs/hrnet/fcn_hr{18s,18,48}_*`` (FCN head on
HRNetV2), one per segmentation row of :mod:`training.registry`.

From the configs and their bases (``_base_/models/fcn_hr18.py``, ``_base_/datasets/*.py``,
``_base_/schedules/schedule_{20k,40k,80k,160k}.py``):

* SGD lr 0.01, momentum 0.9, weight decay 5e-4 (Pascal Context and Context-59 rows: lr 0.004,
  weight decay 1e-4); no LR scaling with the batch (MMSeg configs set no ``auto_scale_lr``);
* ``PolyLR(eta_min=1e-4, power=0.9, begin=0, end=max_iters, by_epoch=False)``;
* ``<gpus>xb<batch>`` of the name: batch per GPU (Cityscapes 2, the others 4) on 4 GPUs;
* iterations from the name (20k .. 160k); checkpoints and validation every tenth of them
  (``CheckpointHook(interval)``, ``val_interval``: 2k / 4k / 8k / 16k);
* ``RandomResize(scale, ratio_range=(0.5, 2.0), keep_ratio=True)`` with the dataset's scale (the
  registry row's ``test_scale``), ``RandomCrop(crop_size, cat_max_ratio=0.75)``,
  ``RandomFlip(0.5)``, ``PhotoMetricDistortion``, padding to the crop (0 / 255);
* ``CrossEntropyLoss`` (``avg_non_ignore=False``), ignore index 255, logits resized to the
  label size first; best checkpoint by ``mIoU``;
* SyncBN in the configs (``--sync-bn`` on CUDA) and ImageNet-pretrained backbones
  (``open-mmlab://msra/hrnetv2_w18``...), which ``--load-from`` cannot take (it loads whole
  checkpoints strictly): training starts from MMSeg's initialisation
  (:func:`training.models.init_weights`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .registry import get_entry, list_entries
from .seg_data import SegDataLayout, SegSplit
from .seg_transforms import SegAugmentConfig

__all__ = ["SegTrainRecipe", "SEG_LAYOUTS", "seg_recipes"]

_ADE = SegDataLayout(
    train=(SegSplit("images/training", "annotations/training"),),
    val=SegSplit("images/validation", "annotations/validation"),
    reduce_zero_label=True,
)
_VOC = SegDataLayout(
    train=(
        SegSplit("JPEGImages", "SegmentationClass", split="ImageSets/Segmentation/train.txt"),
        SegSplit("JPEGImages", "SegmentationClassAug", split="ImageSets/Segmentation/aug.txt"),
    ),
    val=SegSplit("JPEGImages", "SegmentationClass", split="ImageSets/Segmentation/val.txt"),
)
_CONTEXT_TRAIN = SegSplit(
    "JPEGImages", "SegmentationClassContext", split="ImageSets/SegmentationContext/train.txt"
)
_CONTEXT_VAL = SegSplit(
    "JPEGImages", "SegmentationClassContext", split="ImageSets/SegmentationContext/val.txt"
)

#: Registry dataset -> MMSeg data layout under ``--data-root`` (the configs' ``data_root``:
#: ``data/cityscapes``, ``data/ade/ADEChallengeData2016``, ``data/VOCdevkit/VOC2012``,
#: ``data/VOCdevkit/VOC2010``).
SEG_LAYOUTS: dict[str, SegDataLayout] = {
    "cityscapes": SegDataLayout(),
    "ade20k": _ADE,
    "voc": _VOC,
    "pascal_context": SegDataLayout(train=(_CONTEXT_TRAIN,), val=_CONTEXT_VAL),
    "pascal_context_59": SegDataLayout(
        train=(_CONTEXT_TRAIN,), val=_CONTEXT_VAL, reduce_zero_label=True
    ),
}


@dataclass(frozen=True)
class SegTrainRecipe:
    """How to train one segmentation registry model (iteration-based, MMSeg).

    Attributes:
        model: registry name (task ``segmentation``): arch, classes, crop, test settings.
        lr, momentum, weight_decay: ``SGD``.
        eta_min, power: ``PolyLR`` (by iteration, ending at the run's last iteration).
        batch_size: samples per process per step (upstream: per GPU).
        gpus: the upstream GPU count (documentation: the global batch is ``gpus * batch_size``).
        max_iters: training length (``--max-iters`` overrides).
        val_interval, checkpoint_interval: in iterations (rounded up to whole epochs of the
            data, as the trainer validates and saves at epoch ends).
        best_metric, best_rule: ``save_best``.
        scale: ``RandomResize`` scale ``(w, h)``; None: the registry row's ``test_scale``.
        crop_size: ``(h, w)``; None: the registry row's ``crop_size``.
        ignore_index, avg_non_ignore: the loss (:class:`training.seg_losses.SegCrossEntropyLoss`).
        augment: pipeline parameters (:class:`training.seg_transforms.SegAugmentConfig`).
        data: file layout under ``--data-root``.
        num_workers: DataLoader workers per process.
    """

    model: str
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    eta_min: float = 1e-4
    power: float = 0.9
    batch_size: int = 2
    gpus: int = 4
    max_iters: int = 40000
    val_interval: int = 4000
    checkpoint_interval: int = 4000
    best_metric: str = "mIoU"
    best_rule: str = "greater"
    scale: tuple[int, int] | None = None
    crop_size: tuple[int, int] | None = None
    ignore_index: int = 255
    avg_non_ignore: bool = False
    augment: SegAugmentConfig = field(default_factory=SegAugmentConfig)
    data: SegDataLayout = field(default_factory=SegDataLayout)
    num_workers: int = 2

    def __post_init__(self) -> None:
        entry = get_entry(self.model)
        if entry.task != "segmentation":
            raise ValueError(f"{self.model} is a {entry.task} model, not segmentation")
        if self.best_rule not in ("greater", "less"):
            raise ValueError(f"best_rule must be 'greater' or 'less', got {self.best_rule!r}")
        if min(self.batch_size, self.max_iters, self.val_interval, self.checkpoint_interval) < 1:
            raise ValueError("batch_size, max_iters and the intervals must be positive")
        if not self.lr > 0 or not 0 <= self.eta_min < self.lr:
            raise ValueError("lr must be positive and eta_min in [0, lr)")

    @property
    def entry(self):
        """The registry :class:`~training.registry.ModelEntry` of :attr:`model`."""
        return get_entry(self.model)

    @property
    def train_scale(self) -> tuple[int, int]:
        """``RandomResize`` scale ``(w, h)``."""
        w, h = self.scale or self.entry.test_scale
        return int(w), int(h)

    @property
    def train_crop(self) -> tuple[int, int]:
        """Crop ``(h, w)``."""
        h, w = self.crop_size or self.entry.crop_size
        return int(h), int(w)


_NAME = re.compile(r"^fcn_hr\w+_(\d+)xb(\d+)-(\d+)k_")


def _seg_recipe(name: str) -> SegTrainRecipe:
    """The recipe of MMSeg row ``name`` (``fcn_<arch>_<gpus>xb<batch>-<N>k_<dataset>-<crop>``)."""
    entry = get_entry(name)
    m = _NAME.match(name)
    if m is None:
        raise ValueError(f"{name}: not an MMSeg fcn_hr* config name")
    gpus, batch, kilo = (int(g) for g in m.groups())
    context = entry.dataset.startswith("pascal_context")
    iters = kilo * 1000
    return SegTrainRecipe(
        model=name,
        lr=0.004 if context else 0.01,
        weight_decay=1e-4 if context else 5e-4,
        batch_size=batch,
        gpus=gpus,
        max_iters=iters,
        val_interval=iters // 10,
        checkpoint_interval=iters // 10,
        data=SEG_LAYOUTS[entry.dataset],
    )


def seg_recipes() -> dict[str, SegTrainRecipe]:
    """Registry name -> recipe for every MMSeg ``fcn_hr*`` segmentation row."""
    return {
        e.name: _seg_recipe(e.name)
        for e in list_entries(task="segmentation")
        if e.upstream == "mmseg-1.x" and _NAME.match(e.name)
    }
