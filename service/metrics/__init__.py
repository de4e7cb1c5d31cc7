"""Evaluation metrics shared by training validation, the gateway's tools and the eval jobs.

Torch-free re-implementations with upstream semantics:

* :mod:`.coco_keypoints` — OKS, OKS-NMS, MMPose rescoring, COCO keypoint AP/AR
  (MMPose 1.x ``CocoMetric`` + ``xtcocotools`` ``COCOeval``), mean OKS.
* :mod:`.pck` — PCK, NME (MMPose ``keypoint_pck_accuracy`` / ``keypoint_nme``), Horse-10,
  pixel errors (EPE/RMSE) with box-normalised PCK.
* :mod:`.segmentation` — aAcc / mIoU / mAcc (MMSeg 1.x ``IoUMetric``).
"""

from __future__ import annotations

from .coco_keypoints import (
    COCO_STAT_NAMES,
    CocoKeypointEvaluator,
    mean_oks,
    oks_iou,
    oks_nms,
    pairwise_oks,
    per_instance_oks,
    rescore,
    topdown_bbox_areas,
)
from .pck import (
    bbox_size_norm,
    horse10_metrics,
    keypoint_distance_norm,
    nme,
    pck_accuracy,
    pixel_error_metrics,
)
from .segmentation import IoUAccumulator, intersect_and_union

__all__ = [
    "COCO_STAT_NAMES",
    "CocoKeypointEvaluator",
    "IoUAccumulator",
    "horse10_metrics",
    "intersect_and_union",
    "keypoint_distance_norm",
    "mean_oks",
    "nme",
    "oks_iou",
    "oks_nms",
    "pairwise_oks",
    "pck_accuracy",
    "per_instance_oks",
    "rescore",
    "topdown_bbox_areas",
    "bbox_size_norm",
    "pixel_error_metrics",
]
