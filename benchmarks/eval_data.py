"""Datasets of ``hrnet-eval``: what to send per image, and how to score what came back.

Top-down pose (COCO keypoint json; MMPose 1.x ``BaseCocoStyleDataset`` in test mode):

* ground-truth boxes: the valid instances of MMPose's top-down data list
  (``BaseCocoStyleDataset._is_valid_instance``): annotations with ``bbox`` and ``keypoints``,
  not crowd (``iscrowd``), with at least one labelled keypoint (``num_keypoints``, else counted
  from the keypoints); crowd and zero-keypoint annotations are skipped and counted
  (``iscrowd``, ``no_keypoints``). The box is clipped to the image (``x1 = clip(x, 0, W-1)``,
  ``x2 = clip(x+w, 0, W-1)``), score 1, id = annotation id. Horse-10 follows MMPose 0.x
  ``AnimalHorse10Dataset`` (the published numbers come from it): boxes are not clipped
  (annotations whose keypoints are all 0 are skipped there too).
* detection boxes (``COCO_val2017_detections_AP_H_56_person.json`` format): entries with
  ``category_id == 1``, numbered in file order (MMPose's instance ``id``), xywh → xyxy; no score
  threshold unless one is given (the HRNet configs set none).
* the service's detector: the image alone.

Boxes the gateway would refuse (``service.boxes.parse_boxes``: a non-finite value, a coordinate
beyond ``MAX_COORDINATE`` px, zero or negative area, a side under ``MIN_BOX_SIDE`` px, a box
entirely outside the image, a score outside [0, 1]) are not sent and are counted as skipped by
cause (see :func:`box_rejection`); sending them would fail the whole image. Segmentation: Cityscapes ``*_leftImg8bit.png`` images paired with
``*_gtFine_labelTrainIds.png`` labels (255 = ignore).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from service.boxes import box_rejections
from service.geometry import bbox_xywh2xyxy
from service.metrics import (
    CocoKeypointEvaluator,
    IoUAccumulator,
    horse10_metrics,
    mean_oks,
    pixel_error_metrics,
    topdown_bbox_areas,
)

POSE_DATASETS = ("coco", "macaque", "atrw", "horse10", "dlc_openfield")
#: pose datasets scored by pixel error + box-normalised PCK (no OKS sigmas)
PIXEL_ERROR_DATASETS = ("dlc_openfield",)
SEG_DATASETS = ("cityscapes",)


class DataError(Exception):
    """The dataset files cannot be used as given (missing, malformed, inconsistent)."""


@dataclass
class PoseItem:
    """One image to send to ``POST /pose``.

    ``boxes``: ``[x1, y1, x2, y2, score]`` rows in image pixels (``None``: use the service's
    detector); ``box_ids``: the MMPose instance id of each box.
    """

    key: str
    image_id: Any
    path: Path
    boxes: list[list[float]] | None
    box_ids: list[Any] = field(default_factory=list)


@dataclass
class SegItem:
    """One image/label pair for ``POST /segment``; ``key`` is the image path relative to the
    images folder."""

    key: str
    path: Path
    label_path: Path


# ----------------------------------------------------------------------------- pose: loading


def load_json(path: Path | str) -> Any:
    """Parsed JSON of ``path``; raises :class:`DataError` if missing or malformed."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DataError(f"file not found: {path}") from None
    except ValueError as exc:
        raise DataError(f"{path} is not valid JSON: {exc}") from None


def box_rejection(xyxy: Sequence[float], w: int, h: int, score: float = 1.0) -> str | None:
    """Why the gateway would refuse the box ``xyxy`` (4 values, image pixels) on a ``w`` x ``h``
    image, or None: :func:`service.boxes.box_rejections` (the gateway's own rule set) for one box."""
    return box_rejections(
        np.asarray(xyxy, dtype=np.float64).reshape(1, 4), np.array([score]), (w, h)
    )[0]


def build_pose_items(
    coco: dict,
    images_dir: Path | str,
    dataset: str,
    *,
    box_source: str,
    det_file: Path | str | None = None,
    bbox_score_thr: float | None = None,
    limit: int | None = None,
    clip_gt_boxes: bool = True,
) -> tuple[list[PoseItem], Counter, list]:
    """Work items for a pose dataset.

    Args:
        coco: the loaded COCO keypoint annotation dict.
        images_dir: folder holding the images' ``file_name``.
        dataset: one of :data:`POSE_DATASETS`.
        box_source: ``"gt"``, ``"det"``, ``"detector"`` (the service's detector) or
            ``"bottomup"`` (a bottom-up model); the last two send no boxes.
        det_file: detection json (``box_source="det"``).
        bbox_score_thr: drop detections with ``score < thr`` (MMPose ``filter_cfg``).
        limit: only the first ``limit`` images (sorted by id).
        clip_gt_boxes: clip ground-truth boxes to the image as MMPose 1.x ``CocoDataset`` does
            (False: send them exactly as annotated; Horse-10 never clips).

    Returns:
        ``(items, skipped, image_ids)``: items sorted by image id (images without any box to
        send are left out), a Counter of skipped boxes by cause, and the ids of the images in
        the evaluated set.

    Raises:
        DataError: malformed annotation or detection files.
    """
    images_dir = Path(images_dir)
    try:
        images = sorted(coco["images"], key=lambda im: im["id"])
        anns = coco.get("annotations", [])
    except (KeyError, TypeError) as exc:
        raise DataError(f"annotation file lacks images/annotations: {exc}") from None
    if limit is not None:
        images = images[: max(0, limit)]
    img_by_id = {im["id"]: im for im in images}
    skipped: Counter = Counter()
    boxes: dict[Any, list] = {i: [] for i in img_by_id}
    ids: dict[Any, list] = {i: [] for i in img_by_id}

    if box_source == "gt":
        for ann in anns:
            im = img_by_id.get(ann.get("image_id"))
            if im is None:
                continue
            if "bbox" not in ann or "keypoints" not in ann:
                skipped["no_bbox_or_keypoints"] += 1
                continue
            x, y, w, h = (float(v) for v in ann["bbox"][:4])
            W, H = int(im["width"]), int(im["height"])
            # MMPose's top-down data list keeps valid instances only (BaseCocoStyleDataset.
            # _is_valid_instance): no crowd annotations, at least one labelled keypoint
            if ann.get("iscrowd", 0):
                skipped["iscrowd"] += 1
                continue
            kp = np.asarray(ann["keypoints"], dtype=np.float32).reshape(-1, 3)
            n_kpts = ann.get("num_keypoints", int(np.count_nonzero(kp[:, :2].max(axis=1))))
            if n_kpts == 0:
                skipped["no_keypoints"] += 1
                continue
            if dataset == "horse10" or not clip_gt_boxes:
                xyxy = np.array([x, y, x + w, y + h], dtype=np.float32)
            else:
                xyxy = np.array(
                    [
                        np.clip(x, 0, W - 1),
                        np.clip(y, 0, H - 1),
                        np.clip(x + w, 0, W - 1),
                        np.clip(y + h, 0, H - 1),
                    ],
                    dtype=np.float32,
                )
            bad = box_rejection(xyxy.tolist(), W, H)
            if bad:
                skipped[bad] += 1
                continue
            boxes[im["id"]].append(xyxy.tolist() + [1.0])
            ids[im["id"]].append(ann["id"])
    elif box_source == "det":
        if det_file is None:
            raise DataError("detection boxes need --boxes DET.json")
        dets = load_json(det_file)
        if not isinstance(dets, list):
            raise DataError(f"{det_file}: expected a list of detections")
        all_ids = {im["id"] for im in coco["images"]}
        next_id = 0
        for det in dets:
            try:
                if det["category_id"] != 1:
                    continue
                image_id = det["image_id"]
                xywh = np.array(det["bbox"][:4], dtype=np.float32)
                score = float(np.float32(det["score"]))
            except (KeyError, TypeError, ValueError) as exc:
                raise DataError(f"{det_file}: malformed detection {det!r}: {exc}") from None
            inst_id = next_id
            next_id += 1
            if image_id not in all_ids:
                skipped["det_image_not_in_ann"] += 1
                continue
            if bbox_score_thr is not None and score < bbox_score_thr:
                skipped["below_bbox_score_thr"] += 1
                continue
            im = img_by_id.get(image_id)
            if im is None:  # outside --limit
                continue
            # float32 first, then xywh -> xyxy in float32: MMPose's _load_detection_results
            xyxy = bbox_xywh2xyxy(xywh[None])[0]
            bad = box_rejection(xyxy.tolist(), int(im["width"]), int(im["height"]), score)
            if bad:
                skipped[bad] += 1
                continue
            boxes[image_id].append(xyxy.tolist() + [score])
            ids[image_id].append(inst_id)
    elif box_source not in ("detector", "bottomup"):
        raise ValueError(f"unknown box source {box_source!r}")

    no_boxes = box_source in ("detector", "bottomup")  # every image is sent, without boxes
    items = []
    for im in images:
        i = im["id"]
        if not no_boxes and not boxes[i]:
            continue
        items.append(
            PoseItem(
                key=str(i),
                image_id=i,
                path=images_dir / im["file_name"],
                boxes=None if no_boxes else boxes[i],
                box_ids=ids[i],
            )
        )
    return items, skipped, [im["id"] for im in images]


def keypoint_selection(
    model_names: Sequence[str], dataset_names: Sequence[str]
) -> list[int] | None:
    """Indices of the dataset's keypoints among the model's outputs.

    ``None`` when the model has exactly the dataset's number of keypoints (identity). When the
    model has more (e.g. a COCO+AIC model evaluated on COCO), the dataset's keypoints are looked
    up by name. Raises :class:`DataError` when that is impossible.
    """
    if len(model_names) == len(dataset_names):
        return None
    pos = {n: i for i, n in enumerate(model_names)}
    missing = [n for n in dataset_names if n not in pos]
    if missing or not dataset_names:
        raise DataError(
            f"the model's {len(model_names)} keypoints do not contain the dataset's "
            f"{len(dataset_names)} (missing: {missing[:5]})"
        )
    return [pos[n] for n in dataset_names]


def _record_arrays(rec: dict, sel: list[int] | None):
    """``(keypoints (N, K, 3), boxes_xyxy (N, 4), bbox_scores (N,), ids)`` of one record."""
    persons = rec.get("persons", [])
    if not persons:
        return (
            np.zeros((0, 0, 3), np.float32),
            np.zeros((0, 4), np.float32),
            np.zeros(0, np.float32),
            [],
        )
    kp = np.asarray([p["keypoints"] for p in persons], dtype=np.float32).reshape(
        len(persons), -1, 3
    )
    if sel is not None:
        kp = kp[:, sel]
    boxes = np.asarray([p["bbox_xyxy"] for p in persons], dtype=np.float32).reshape(-1, 4)
    scores = np.asarray([p["bbox_score"] for p in persons], dtype=np.float32)
    ids = [p["id"] for p in persons]
    return kp, boxes, scores, ids


def evaluate_coco_style(
    records: Sequence[dict],
    coco: dict,
    sigmas: Sequence[float],
    *,
    input_size: Sequence[int],
    padding: float,
    keypoint_index: list[int] | None = None,
    image_ids: Sequence[Any] | None = None,
    use_area: bool = True,
    gt_boxes: bool = False,
) -> tuple[dict, list]:
    """COCO keypoint AP/AR of the gathered predictions (MMPose ``CocoMetric``), plus ``meanOKS``
    when the boxes were the ground truth's (each prediction then belongs to one annotation).

    ``records``: prediction records (``persons`` with ``id``, ``bbox_xyxy``, ``bbox_score``,
    ``keypoints``); ``image_ids``: the evaluated image set (``None``: the whole file).
    OKS-NMS areas follow MMPose top-down (:func:`topdown_bbox_areas` with the model's
    ``input_size`` (w, h) and box ``padding``). Returns ``(metrics, coco_results)``: metric
    values are fractions; results are COCO keypoint results (image pixels).

    Raises:
        DataError: when no prediction survives, or (``gt_boxes``) an annotation's keypoint count
            differs from the predictions'.
    """
    ev = CocoKeypointEvaluator(coco, sigmas, use_area=use_area)
    for rec in records:
        kp, boxes, scores, ids = _record_arrays(rec, keypoint_index)
        if not len(ids):
            continue
        ev.add(
            rec["image_id"],
            kp,
            scores,
            areas=topdown_bbox_areas(boxes, (int(input_size[0]), int(input_size[1])), padding),
            ids=ids,
        )
    results = ev.coco_results()
    if not results:
        raise DataError("no predictions to evaluate")
    metrics = ev.evaluate(results, image_ids=image_ids)
    if gt_boxes:
        m = _mean_oks_gt(records, coco, sigmas, keypoint_index)
        if m is not None:
            metrics["meanOKS"] = m
    return metrics, results


def evaluate_coco_bottomup(
    records: Sequence[dict],
    coco: dict,
    sigmas: Sequence[float],
    *,
    keypoint_index: list[int] | None = None,
    image_ids: Sequence[Any] | None = None,
    use_area: bool = True,
) -> tuple[dict, list]:
    """COCO keypoint AP/AR of bottom-up predictions, as MMPose 0.x ``BottomUpCocoDataset.evaluate``
    scores them for the published HigherHRNet numbers: each person keeps the score the grouping
    gave it (mean of its joint values, the response's ``score``; no box-score rescoring) and no
    OKS-NMS is applied (the AE configs leave ``use_nms`` at its default, False); keypoints are
    ``[x, y, joint value]`` in image pixels. Returns ``(metrics, coco_results)`` (fractions; COCO
    keypoint results). Raises DataError when no person was predicted at all.
    """
    ev = CocoKeypointEvaluator(coco, sigmas, use_area=use_area, score_mode="bbox", nms_mode="none")
    for rec in records:
        kp, _, _, ids = _record_arrays(rec, keypoint_index)
        if not len(ids):
            continue
        ev.add(
            rec["image_id"], kp, np.array([p["score"] for p in rec["persons"]], np.float32), ids=ids
        )
    results = ev.coco_results()
    if not results:
        raise DataError("no predictions to evaluate")
    return ev.evaluate(results, image_ids=image_ids), results


def _gt_pairs(records: Sequence[dict], coco: dict, sel: list[int] | None):
    """Predictions paired with the annotation whose id they carry (ground-truth boxes):
    lists of ``pred (K, 2)``, ``gt (K, 2)``, ``vis (K,)`` and ``area`` (px²), one per pair."""
    ann_by_id = {a["id"]: a for a in coco.get("annotations", [])}
    pred, gt, vis, area = [], [], [], []
    for rec in records:
        kp, _, _, ids = _record_arrays(rec, sel)
        for i, aid in enumerate(ids):
            ann = ann_by_id.get(aid)
            if ann is None:
                continue
            g = np.asarray(ann["keypoints"], dtype=np.float64).reshape(-1, 3)
            if g.shape[0] != kp.shape[1]:
                raise DataError(
                    f"annotation {aid} has {g.shape[0]} keypoints, predictions {kp.shape[1]}"
                )
            pred.append(kp[i, :, :2])
            gt.append(g[:, :2])
            vis.append(g[:, 2])
            area.append(float(ann.get("area", 0.0)))
    return pred, gt, vis, area


def _mean_oks_gt(records, coco, sigmas, sel) -> float | None:
    pred, gt, vis, area = _gt_pairs(records, coco, sel)
    if not pred:
        return None
    m = mean_oks(np.stack(pred), np.stack(gt), np.stack(vis), np.asarray(area), sigmas)
    return None if np.isnan(m) else m


def _gt_boxes(records: Sequence[dict], coco: dict, sel: list[int] | None) -> np.ndarray:
    """``(P, 4)`` xyxy boxes of the annotations the predictions carry the ids of, in the order
    of :func:`_gt_pairs` (ground-truth boxes, unclipped)."""
    ann_by_id = {a["id"]: a for a in coco.get("annotations", [])}
    out = []
    for rec in records:
        _, _, _, ids = _record_arrays(rec, sel)
        for aid in ids:
            if aid in ann_by_id:
                x, y, w, h = (float(v) for v in ann_by_id[aid]["bbox"][:4])
                out.append([x, y, x + w, y + h])
    return np.asarray(out, dtype=np.float64).reshape(-1, 4)


def _per_instance_results(records: Sequence[dict], sel: list[int] | None) -> list:
    results = []
    for rec in records:
        kp, _, _, ids = _record_arrays(rec, sel)
        for i, aid in enumerate(ids):
            results.append(
                {"image_id": rec["image_id"], "id": aid, "keypoints": kp[i].reshape(-1).tolist()}
            )
    return results


def evaluate_pixel_error(
    records: Sequence[dict],
    coco: dict,
    *,
    keypoint_index: list[int] | None = None,
    thr: float = 0.2,
) -> tuple[dict, list]:
    """``EPE``/``RMSE`` (pixels) and ``PCK@thr`` (normalised by the annotated box's longer
    side) of ground-truth-box predictions, over labelled keypoints
    (:func:`service.metrics.pixel_error_metrics`). Returns ``(metrics, results)`` like
    :func:`evaluate_horse10`.

    Raises:
        DataError: when no prediction matches an annotation id, or keypoint counts differ.
    """
    pred, gt, vis, _ = _gt_pairs(records, coco, keypoint_index)
    if not pred:
        raise DataError("no predictions to evaluate")
    metrics = pixel_error_metrics(
        np.stack(pred),
        np.stack(gt),
        np.stack(vis) > 0,
        _gt_boxes(records, coco, keypoint_index),
        thr=thr,
    )
    return metrics, _per_instance_results(records, keypoint_index)


def evaluate_horse10(
    records: Sequence[dict],
    coco: dict,
    *,
    keypoint_index: list[int] | None = None,
    thr: float = 0.3,
) -> tuple[dict, list]:
    """Horse-10 ``PCK`` (@0.3) and ``NME`` of ground-truth-box predictions (see
    :func:`service.metrics.horse10_metrics`). Returns ``(metrics, results)`` where results are
    per-instance ``{"image_id", "id", "keypoints": [x, y, s] * K}`` (image pixels).

    Raises:
        DataError: when no prediction matches an annotation id, or keypoint counts differ.
    """
    pred, gt, vis, _ = _gt_pairs(records, coco, keypoint_index)
    if not pred:
        raise DataError("no predictions to evaluate")
    metrics = horse10_metrics(np.stack(pred), np.stack(gt), np.stack(vis) > 0, thr=thr)
    return metrics, _per_instance_results(records, keypoint_index)


# ----------------------------------------------------------------------------- segmentation

IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelTrainIds.png"


def build_seg_items(
    images_dir: Path | str, ann_dir: Path | str | None = None, *, limit: int | None = None
) -> tuple[list[SegItem], Counter]:
    """Cityscapes image/label pairs: every ``*_leftImg8bit.png`` under ``images_dir``
    (recursively, sorted) with the ``*_gtFine_labelTrainIds.png`` of the same stem found
    anywhere under ``ann_dir`` (default ``images_dir``). Returns ``(items, skipped)``; images
    without a label are counted as ``skipped["missing_label"]``.

    Raises:
        DataError: when either folder does not exist.
    """
    images_dir = Path(images_dir)
    ann_dir = Path(ann_dir) if ann_dir is not None else images_dir
    if not images_dir.is_dir():
        raise DataError(f"images folder not found: {images_dir}")
    if not ann_dir.is_dir():
        raise DataError(f"label folder not found: {ann_dir}")
    labels = {p.name: p for p in ann_dir.rglob(f"*{LABEL_SUFFIX}")}
    items: list[SegItem] = []
    skipped: Counter[str] = Counter()
    for p in sorted(images_dir.rglob(f"*{IMAGE_SUFFIX}")):
        lab = labels.get(p.name[: -len(IMAGE_SUFFIX)] + LABEL_SUFFIX)
        if lab is None:
            skipped["missing_label"] += 1
            continue
        items.append(SegItem(key=p.relative_to(images_dir).as_posix(), path=p, label_path=lab))
    if limit is not None:
        items = items[: max(0, limit)]
    return items, skipped


def evaluate_segmentation(
    records: Sequence[dict], num_classes: int, class_names: Sequence[str] | None = None
) -> dict:
    """aAcc / mIoU / mAcc (percent) and per-class ``IoU``/``Acc`` dicts from per-image
    ``counts`` ``(4, C)`` records (MMSeg ``IoUMetric``; see :meth:`IoUAccumulator.compute`).

    Raises:
        DataError: when there is no record; ``ValueError`` on counts not ``(4, num_classes)``.
    """
    acc = IoUAccumulator(num_classes, 255, class_names)
    for rec in records:
        acc.add_counts(np.asarray(rec["counts"], dtype=np.int64))
    if acc.num_images == 0:
        raise DataError("no predictions to evaluate")
    return acc.compute()
