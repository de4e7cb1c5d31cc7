"""Bottom-up training data: COCO keypoint files -> whole images with all their people -> batches.

Follows MMPose 0.x ``BottomUpCocoDataset`` (``mmpose/datasets/datasets/bottom_up/bottom_up_coco.py``
and its base ``Kpt2dSviewRgbImgBottomUpDataset``):

* images: every image of the file (file order) with at least one annotation of any kind;
* people: the annotations that are not crowd, or crowd with keypoints; ``(N, K, 3)`` joints with
  the raw COCO visibility (0/1/2);
* ignore mask (:func:`ignore_mask`): pixels of crowd regions and of people without keypoints are
  not supervised (mask 0), every other pixel is (1).

Each sample goes through :mod:`training.bottomup_transforms` (random affine, flip) with draws
from :func:`training.data.sample_rng` ``(seed, epoch, index)``, then the targets of
:class:`service.codecs.associative_embedding_targets.AssociativeEmbeddingTargets` and the
gateway's input normalisation (:func:`service.pipelines.common.to_input_tensor`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from benchmarks.eval_data import DataError, load_json
from service.cards import Normalization
from service.codecs.associative_embedding_targets import AssociativeEmbeddingTargets
from service.pipelines.common import to_input_tensor

from .bottomup_transforms import (
    BottomUpAugment,
    BottomUpSample,
    draw_affine,
    random_flip,
    warp_sample,
)
from .data import EpochDataset, sample_rng

__all__ = [
    "BottomUpRecord",
    "load_bottomup_records",
    "ignore_mask",
    "BottomUpDataset",
    "stage_sizes",
]


@dataclass(frozen=True)
class BottomUpRecord:
    """One training image.

    Attributes:
        path: image file. image_id: COCO id. width, height: from the annotation file (pixels).
        joints: ``(N, K, 3)`` float32 image pixels + COCO visibility of the kept people.
        ignored: the annotations whose regions are masked out (crowd, or no keypoints), as in
            the file (their ``segmentation`` is decoded by :func:`ignore_mask`).
    """

    path: Path
    image_id: Any
    width: int
    height: int
    joints: np.ndarray
    ignored: tuple[dict, ...]


def _num_keypoints(ann: dict) -> int:
    if "num_keypoints" in ann:
        return int(ann["num_keypoints"])
    return int(np.count_nonzero(np.asarray(ann.get("keypoints", []))[2::3]))


def load_bottomup_records(
    ann_file: str | Path, images_dir: str | Path, num_joints: int | None = None
) -> list[BottomUpRecord]:
    """The training images of a COCO keypoint file (see module docstring).

    ``num_joints``: expected ``K`` (checked). Raises :class:`benchmarks.eval_data.DataError` for
    missing/malformed files or keypoint lists of the wrong length.
    """
    coco = load_json(ann_file)
    if not isinstance(coco, dict) or "images" not in coco or "annotations" not in coco:
        raise DataError(f"{ann_file}: not a COCO keypoint file (images, annotations)")
    by_image: dict[Any, list[dict]] = {}
    for ann in coco["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    out: list[BottomUpRecord] = []
    for img in coco["images"]:
        anns = by_image.get(img["id"], [])
        if not anns:
            continue
        people = [a for a in anns if not a.get("iscrowd", 0) or _num_keypoints(a) > 0]
        ignored = tuple(
            a
            for a in anns
            if "segmentation" in a and (a.get("iscrowd", 0) or _num_keypoints(a) == 0)
        )
        k = (
            num_joints
            if num_joints is not None
            else (len(people[0]["keypoints"]) // 3 if people else 0)
        )
        joints = np.zeros((len(people), k, 3), dtype=np.float32)
        for i, a in enumerate(people):
            kp = np.asarray(a.get("keypoints", []), dtype=np.float32)
            if kp.size != 3 * k:
                raise DataError(
                    f"{ann_file}: annotation {a.get('id')} has {kp.size // 3} "
                    f"keypoints, expected {k}"
                )
            joints[i] = kp.reshape(k, 3)
        out.append(
            BottomUpRecord(
                Path(images_dir) / img["file_name"],
                img["id"],
                int(img["width"]),
                int(img["height"]),
                joints,
                ignored,
            )
        )
    return out


def ignore_mask(record: BottomUpRecord) -> np.ndarray:
    """``(H, W)`` bool, True where the loss is computed: False on crowd regions (RLE or polygons)
    and on the polygons of people without keypoints (MMPose 0.x ``_get_mask``: decoded regions
    are summed and the mask is ``sum < 0.5``)."""
    from pycocotools import mask as mask_utils  # [train] extra

    h, w = record.height, record.width
    if not any(ann["segmentation"] for ann in record.ignored):  # most images: nothing to decode
        return np.ones((h, w), dtype=bool)
    m = np.zeros((h, w), dtype=np.float32)
    for ann in record.ignored:
        if not ann["segmentation"]:  # an empty polygon list covers nothing (upstream: no RLE)
            continue
        rle = mask_utils.frPyObjects(ann["segmentation"], h, w)
        decoded = mask_utils.decode(rle)
        m += decoded.reshape(h, w, -1).sum(axis=2)
    return m < 0.5


def stage_sizes(input_size: int, num_stages: int = 2) -> tuple[int, ...]:
    """Square heatmap sizes of the stages, lowest resolution first: ``input_size / 4 * 2**s``
    (512 -> 128, 256). Raises ``ValueError`` unless ``input_size`` is a positive multiple of 32."""
    if input_size < 32 or input_size % 32:
        raise ValueError(
            f"bottom-up input size must be a positive multiple of 32, got {input_size}"
        )
    return tuple(input_size // 4 * 2**s for s in range(num_stages))


class BottomUpDataset(EpochDataset):
    """Training samples of a bottom-up (HigherHRNet) model.

    ``dataset[i]`` -> ``dict(inputs=(3, S, S) float32 normalised, heatmaps=[(K, H_s, W_s)
    float32], masks=[(H_s, W_s) float32], joints=[(M, K, 2) int64])``, one list entry per
    stage (lowest resolution first); the default collate stacks each stage.

    Args:
        records: from :func:`load_bottomup_records`.
        input_size: ``S`` (512 for the published COCO configs).
        targets: the encoder; its ``heatmap_sizes`` must be :func:`stage_sizes` of ``S``.
        normalization: the card's input normalisation.
        flip_indices: the dataset's flip permutation.
        augment: random steps; ``None`` = no randomness (scale 1, no rotation, shift or flip).
        seed: base seed of :func:`training.data.sample_rng`; :meth:`set_epoch` picks the epoch.
    """

    def __init__(
        self,
        records: Sequence[BottomUpRecord],
        input_size: int,
        targets: AssociativeEmbeddingTargets,
        normalization: Normalization,
        flip_indices: Sequence[int],
        augment: BottomUpAugment | None = None,
        seed: int = 0,
    ) -> None:
        self.records = list(records)
        self.input_size = int(input_size)
        self.targets = targets
        self.normalization = normalization
        self.flip_indices = tuple(int(i) for i in flip_indices)
        self.augment = augment
        self.seed = seed
        if tuple(s[0] for s in targets.heatmap_sizes) != stage_sizes(
            self.input_size, len(targets.heatmap_sizes)
        ):
            raise ValueError(
                f"heatmap sizes {targets.heatmap_sizes} do not fit input size {self.input_size}"
            )

    def __len__(self) -> int:
        return len(self.records)

    def sample(self, index: int) -> BottomUpSample:
        """Sample ``index`` of the current epoch after affine and flip (image at the input
        size, masks and joints per stage in heatmap pixels), before target encoding."""
        rec = self.records[index]
        image = cv2.imread(str(rec.path), cv2.IMREAD_COLOR)
        if image is None:
            raise FileNotFoundError(f"cannot read image {rec.path}")
        mask = ignore_mask(rec)
        if mask.shape != image.shape[:2]:
            raise DataError(
                f"{rec.path}: image is {image.shape[1]}x{image.shape[0]}, the "
                f"annotation file says {rec.width}x{rec.height}"
            )
        sizes = [s[0] for s in self.targets.heatmap_sizes]
        s = BottomUpSample(image, [mask] * len(sizes), [rec.joints] * len(sizes))
        cfg = self.augment or BottomUpAugment(
            rot_factor=0.0, scale_factor=(1.0, 1.0), trans_factor=0.0, flip_prob=0.0
        )
        rng = sample_rng(self.seed, self.epoch, index)
        draw = draw_affine(cfg, (image.shape[1], image.shape[0]), rng)
        s = warp_sample(s, draw, self.input_size, sizes, cfg.scale_type)
        return random_flip(s, self.flip_indices, cfg.flip_prob, rng)

    def __getitem__(self, index: int) -> dict[str, Any]:
        s = self.sample(index)
        t = self.targets.encode(s.joints)
        x = to_input_tensor(s.image[None], self.normalization)[0]
        return {
            "inputs": torch.from_numpy(x),
            "heatmaps": [torch.from_numpy(h) for h in t["heatmaps"]],
            "masks": [torch.from_numpy(m) for m in s.masks],
            "joints": [torch.from_numpy(j) for j in t["joints"]],
        }
