"""Semantic-segmentation IoU metrics (MMSeg 1.x ``mmseg/evaluation/metrics/iou_metric.py``).

:class:`IoUAccumulator` sums, over a whole set, each class's intersection, union, predicted
area and ground-truth area (``IoUMetric.intersect_and_union``), then derives ``aAcc``, ``mIoU``
and ``mAcc`` as ``IoUMetric.compute_metrics`` does: per-class IoU = intersect / union, Acc =
intersect / label area, means taken with ``nanmean`` (a class absent from both prediction and
ground truth has IoU NaN and is left out; a class absent from the ground truth has Acc NaN), all
in percent rounded to 2 decimals like MMSeg reports them. Counts are exact int64 (MMSeg sums
float32 histograms). Torch-free.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["IoUAccumulator", "intersect_and_union"]


def intersect_and_union(
    pred: np.ndarray, label: np.ndarray, num_classes: int, ignore_index: int = 255
) -> np.ndarray:
    """Per-class pixel counts of one image, ``(4, C)`` int64: area_intersect, area_union,
    area_pred_label, area_label (MMSeg ``IoUMetric.intersect_and_union``).

    ``pred``, ``label``: ``(H, W)`` integer class maps of the same shape. Pixels whose label is
    ``ignore_index`` are dropped; remaining values outside ``[0, num_classes)`` are not counted
    in any class (as ``torch.histc`` with range ``[0, C-1]``).

    Raises:
        ValueError: on a shape mismatch.
    """
    p = np.asarray(pred)
    g = np.asarray(label)
    if p.shape != g.shape:
        raise ValueError(f"prediction {p.shape} and label {g.shape} differ in shape")
    keep = g != ignore_index
    p = p[keep].astype(np.int64, copy=False)
    g = g[keep].astype(np.int64, copy=False)

    def hist(x: np.ndarray) -> np.ndarray:
        x = x[(x >= 0) & (x < num_classes)]
        return np.bincount(x, minlength=num_classes)[:num_classes].astype(np.int64)

    inter = hist(p[p == g])
    area_p = hist(p)
    area_g = hist(g)
    return np.stack([inter, area_p + area_g - inter, area_p, area_g])


class IoUAccumulator:
    """Accumulates MMSeg ``IoUMetric`` statistics over a set of images.

    Args:
        num_classes: number of classes ``C`` (class ids ``0..C-1``).
        ignore_index: ground-truth value to ignore (255).
        class_names: optional ``C`` names for :meth:`compute`'s per-class dicts.

    ``update(pred, gt)`` adds one ``(H, W)`` image; ``add_counts(counts)`` adds a ``(4, C)``
    array from :func:`intersect_and_union` (e.g. reloaded from a results file);
    ``compute()`` returns the metrics.

    Raises:
        ValueError: on a non-positive ``num_classes``, a ``class_names`` of another length, or
            (in ``add_counts``/``update``) counts that are not ``(4, C)`` / maps of two shapes.
    """

    def __init__(
        self, num_classes: int, ignore_index: int = 255, class_names: Sequence[str] | None = None
    ) -> None:
        if num_classes <= 0:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.class_names = (
            list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
        )
        self.counts = np.zeros((4, self.num_classes), dtype=np.int64)
        self.num_images = 0

    def update(self, pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
        """Add one image: ``pred``, ``gt`` ``(H, W)`` int class maps. Returns its ``(4, C)``
        counts (intersect, union, pred area, label area)."""
        c = intersect_and_union(pred, gt, self.num_classes, self.ignore_index)
        self.add_counts(c)
        return c

    def add_counts(self, counts: np.ndarray) -> None:
        """Add a ``(4, C)`` count array (intersect, union, pred area, label area)."""
        c = np.asarray(counts, dtype=np.int64)
        if c.shape != (4, self.num_classes):
            raise ValueError(f"counts must have shape (4, {self.num_classes}), got {c.shape}")
        self.counts += c
        self.num_images += 1

    def compute(self, round_digits: int | None = 2) -> dict:
        """Metrics in percent: ``aAcc``, ``mIoU``, ``mAcc`` (floats) and ``IoU``, ``Acc``
        (dicts class name → percent, NaN where undefined).

        ``round_digits``: decimals as MMSeg reports (2); ``None`` for unrounded values.
        ``aAcc`` is NaN when no labelled pixel was seen.
        """
        inter, union, _, label = self.counts.astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = inter / union
            acc = inter / label
            a_acc = inter.sum() / label.sum()

        def fmt(x):
            x = float(x) * 100.0
            return x if round_digits is None or np.isnan(x) else float(np.round(x, round_digits))

        def nanmean(x):
            return float(np.nanmean(x)) if np.any(~np.isnan(x)) else float("nan")

        return {
            "aAcc": fmt(a_acc),
            "mIoU": fmt(nanmean(iou)),
            "mAcc": fmt(nanmean(acc)),
            "IoU": {n: fmt(v) for n, v in zip(self.class_names, iou)},
            "Acc": {n: fmt(v) for n, v in zip(self.class_names, acc)},
        }
