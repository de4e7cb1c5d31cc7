"""Dataset metainfo (torch-free): keypoint sets for pose models, class sets for segmentation.

Pose (MMPose ``configs/_base_/datasets/*.py``): ``coco`` (17), ``coco_aic`` (19 = COCO + AIC
``head_top``, ``neck``), ``horse10`` (22), ``macaque`` (17), ``atrw`` (15).
Segmentation (MMSeg 1.x ``METAINFO``): ``cityscapes`` (19), ``ade20k`` (150), ``voc`` (21),
``pascal_context`` (60), ``pascal_context_59`` (59).

    >>> get_pose_dataset("coco").num_keypoints
    17
    >>> get_seg_dataset("ade20k").num_classes
    150
"""

from __future__ import annotations

from . import animals, coco, segmentation
from .info import PoseDatasetInfo, SegDatasetInfo

_POSE: dict[str, PoseDatasetInfo] = {
    d.name: d for d in (*coco.POSE_DATASETS, *animals.POSE_DATASETS)
}
_SEG: dict[str, SegDatasetInfo] = {d.name: d for d in segmentation.SEG_DATASETS}


def _lookup(table: dict, kind: str, name: str):
    try:
        return table[name]
    except KeyError:
        raise KeyError(
            f"unknown {kind} dataset {name!r}; known: {', '.join(sorted(table))}"
        ) from None


def get_pose_dataset(name: str) -> PoseDatasetInfo:
    """Keypoint metainfo for pose dataset ``name`` (e.g. ``"coco"``).

    Raises ``KeyError`` whose message lists the known pose dataset names.
    """
    return _lookup(_POSE, "pose", name)


def get_seg_dataset(name: str) -> SegDatasetInfo:
    """Class metainfo for segmentation dataset ``name`` (e.g. ``"cityscapes"``).

    Raises ``KeyError`` whose message lists the known segmentation dataset names.
    """
    return _lookup(_SEG, "segmentation", name)


def list_pose_datasets() -> list[str]:
    """Names of all pose datasets, sorted."""
    return sorted(_POSE)


def list_seg_datasets() -> list[str]:
    """Names of all segmentation datasets, sorted."""
    return sorted(_SEG)


__all__ = [
    "PoseDatasetInfo",
    "SegDatasetInfo",
    "get_pose_dataset",
    "get_seg_dataset",
    "list_pose_datasets",
    "list_seg_datasets",
]
