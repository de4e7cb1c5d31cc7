"""Scoring a job's COCO keypoint results file with plain pycocotools, independently of
:mod:`service.metrics` (shared by ``test_eval_live`` and ``test_eval_animals_seg``)."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

STAT_NAMES = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")


def pycocotools_keypoint_stats(
    ann_file: Path | str, results_file: Path | str, sigmas: Sequence[float]
) -> dict[str, float]:
    """``COCOeval(iouType='keypoints')`` stats of ``results_file`` against ``ann_file`` with the
    given ``(K,)`` OKS sigmas, as ``{"AP": ..., ..., "ARl": ...}`` (fractions; -1 where a range
    is empty)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann_file))
        dt = gt.loadRes(str(results_file))
        ev = COCOeval(gt, dt, "keypoints")
        ev.params.kpt_oks_sigmas = np.asarray(sigmas)
        ev.evaluate(), ev.accumulate(), ev.summarize()
    return dict(zip(STAT_NAMES, ev.stats))
