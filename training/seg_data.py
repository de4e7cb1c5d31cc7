"""Segmentation training data: MMSeg 1.x dataset layouts and the training dataset.

A split is an :class:`SegSplit` (MMSeg ``BaseSegDataset``'s ``data_prefix`` + suffixes +
optional ``ann_file``): with a split file, each stripped line ``name`` gives
``img_dir/name + img_suffix`` and ``ann_dir/name + seg_map_suffix``; without one, every file
under ``img_dir`` ending in ``img_suffix`` (recursively, sorted) pairs with the same relative
path under ``ann_dir`` with ``seg_map_suffix``. Labels are read with pillow (palette PNGs give
class indices, as MMSeg's ``LoadAnnotations``); ``reduce_zero_label`` maps 0 -> 255 and
``v -> v - 1`` (ADE20K, Pascal Context 59).

Each sample: :func:`training.seg_transforms.apply_seg_pipeline`, the gateway's input
normalisation (:func:`service.pipelines.common.to_input_tensor`), then padding to the crop size
(:func:`training.seg_transforms.pad_to`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from service.cards import Normalization
from service.pipelines.common import to_input_tensor

from .data import EpochDataset, sample_rng
from .seg_transforms import SegAugmentConfig, apply_seg_pipeline, pad_to

__all__ = ["SegSplit", "SegDataLayout", "list_pairs", "read_label", "SegDataset"]


@dataclass(frozen=True)
class SegSplit:
    """One MMSeg data source, paths relative to ``--data-root``.

    Attributes:
        img_dir, ann_dir: ``data_prefix`` ``img_path`` / ``seg_map_path``.
        img_suffix, seg_map_suffix: file name endings.
        split: optional ``ann_file`` listing the sample names (one per line).
    """

    img_dir: str
    ann_dir: str
    img_suffix: str = ".jpg"
    seg_map_suffix: str = ".png"
    split: str | None = None


@dataclass(frozen=True)
class SegDataLayout:
    """Train and validation sources of a segmentation dataset (MMSeg layout by default:
    Cityscapes). ``train`` may list several sources (VOC aug: ``SegmentationClass`` +
    ``SegmentationClassAug``, MMSeg's ``ConcatDataset``); ``reduce_zero_label`` as the dataset
    class. A missing ``val`` folder skips validation with a warning."""

    train: tuple[SegSplit, ...] = (
        SegSplit(
            "leftImg8bit/train", "gtFine/train", "_leftImg8bit.png", "_gtFine_labelTrainIds.png"
        ),
    )
    val: SegSplit | None = SegSplit(
        "leftImg8bit/val", "gtFine/val", "_leftImg8bit.png", "_gtFine_labelTrainIds.png"
    )
    reduce_zero_label: bool = False


def list_pairs(root: str | Path, split: SegSplit) -> list[tuple[Path, Path]]:
    """``(image, label)`` paths of one source under ``root`` (see module docstring).

    Raises ``FileNotFoundError`` when the image folder, the split file, or an image or label
    of a listed sample is missing."""
    root = Path(root)
    img_dir, ann_dir = root / split.img_dir, root / split.ann_dir
    if not img_dir.is_dir():
        raise FileNotFoundError(f"image folder not found: {img_dir}")
    if split.split is not None:
        names = [ln.strip() for ln in (root / split.split).read_text().splitlines() if ln.strip()]
    else:
        names = sorted(
            p.relative_to(img_dir).as_posix()[: -len(split.img_suffix)]
            for p in img_dir.rglob(f"*{split.img_suffix}")
        )
    pairs = [
        (img_dir / f"{n}{split.img_suffix}", ann_dir / f"{n}{split.seg_map_suffix}") for n in names
    ]
    missing = [str(p) for pair in pairs for p in pair if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} listed files missing, e.g. {missing[0]}")
    return pairs


def read_label(path: str | Path, reduce_zero_label: bool = False) -> np.ndarray:
    """Class-id map ``(H, W)`` uint8 of a label PNG (pillow: palette images give indices);
    ``reduce_zero_label``: 0 -> 255, others minus 1 (MMSeg ``LoadAnnotations``). Raises
    ``ValueError`` for a label that is not single-channel or holds ids outside 0..255."""
    from PIL import Image

    with Image.open(path) as im:
        label = np.asarray(im)
    if label.ndim != 2:
        raise ValueError(f"{path}: a label map must be single-channel, got shape {label.shape}")
    if label.size and (label.min() < 0 or label.max() > 255):
        raise ValueError(f"{path}: class ids must be 0..255, got {label.min()}..{label.max()}")
    label = label.astype(np.uint8)
    if reduce_zero_label:
        label = label.copy()
        label[label == 0] = 255
        label = label - 1
        label[label == 254] = 255
    return label


class SegDataset(EpochDataset):
    """Training samples of a segmentation model.

    ``dataset[i]`` -> ``dict(inputs=(3, h, w) float32 normalised RGB, labels=(h, w) int64)``
    with ``(h, w) = crop_size`` (padded with 0 / 255 at the bottom and right).

    Args:
        pairs: ``(image, label)`` paths (:func:`list_pairs`).
        normalization: the card's input normalisation.
        scale: ``RandomResize`` scale ``(w, h)``.
        crop_size: ``(h, w)``.
        augment: pipeline parameters; None: no augmentation (the image must fit the crop).
        reduce_zero_label: see :func:`read_label`.
        seed: base seed of :func:`training.data.sample_rng`; :meth:`set_epoch` picks the epoch.
    """

    def __init__(
        self,
        pairs: Sequence[tuple[Path, Path]],
        normalization: Normalization,
        scale: tuple[int, int],
        crop_size: tuple[int, int],
        augment: SegAugmentConfig | None = SegAugmentConfig(),  # noqa: B008 - frozen dataclass
        reduce_zero_label: bool = False,
        seed: int = 0,
    ) -> None:
        self.pairs = list(pairs)
        self.normalization = normalization
        self.scale = (int(scale[0]), int(scale[1]))
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        self.augment = augment
        self.reduce_zero_label = reduce_zero_label
        self.seed = seed

    def __len__(self) -> int:
        return len(self.pairs)

    def sample(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The augmented uint8 BGR image and uint8 label of sample ``index`` (before
        normalisation and padding)."""
        img_path, label_path = self.pairs[index]
        img = cv2.imread(str(img_path), cv2.IMREAD_COLOR)
        if img is None:
            raise FileNotFoundError(f"cannot read image {img_path}")
        label = read_label(label_path, self.reduce_zero_label)
        if label.shape != img.shape[:2]:
            raise ValueError(f"{label_path}: label {label.shape} and image {img.shape[:2]} differ")
        rng = sample_rng(self.seed, self.epoch, index) if self.augment is not None else None
        return apply_seg_pipeline(
            img, label, self.scale, self.crop_size, self.augment or SegAugmentConfig(), rng
        )

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        img, label = self.sample(index)
        x = to_input_tensor(img[None], self.normalization)[0]
        x, label = pad_to(x, label, self.crop_size)
        return {
            "inputs": torch.from_numpy(np.ascontiguousarray(x)),
            "labels": torch.from_numpy(label.astype(np.int64)),
        }
