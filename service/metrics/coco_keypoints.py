"""COCO-style keypoint metrics: OKS, OKS-NMS, MMPose rescoring and the COCO keypoint AP/AR.

Follows MMPose 1.x ``mmpose/evaluation/metrics/coco_metric.py`` (``CocoMetric`` with its defaults
``score_mode='bbox_keypoint'``, ``keypoint_score_thr=0.2``, ``nms_mode='oks_nms'``,
``nms_thr=0.9``, ``use_area=True``) and ``mmpose/evaluation/functional/nms.py``
(``oks_iou``, ``oks_nms``). The final AP/AR come from ``xtcocotools.cocoeval.COCOeval`` with
``iouType='keypoints'`` and the dataset's sigmas, exactly as upstream.

Units: keypoint coordinates and boxes are image pixels; areas are square pixels; sigmas are
dimensionless (relative to ``sqrt(area)``). Torch-free (numpy + xtcocotools).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "COCO_STAT_NAMES",
    "CocoKeypointEvaluator",
    "mean_oks",
    "oks_iou",
    "oks_nms",
    "pairwise_oks",
    "per_instance_oks",
    "rescore",
    "topdown_bbox_areas",
]

#: Names of ``COCOeval.stats`` for keypoints, in order (MMPose prints them as
#: ``AP, AP .5, AP .75, AP (M), AP (L), AR, AR .5, AR .75, AR (M), AR (L)``).
COCO_STAT_NAMES = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")

_EPS = float(np.spacing(1))


def _as_sigmas(sigmas: Sequence[float] | np.ndarray, k: int | None = None) -> np.ndarray:
    s = np.asarray(sigmas, dtype=np.float64).reshape(-1)
    if s.size == 0:
        raise ValueError("OKS needs per-keypoint sigmas; got an empty list")
    if k is not None and s.size != k:
        raise ValueError(f"{s.size} sigmas given for {k} keypoints")
    return s


def _split_kpts(x: np.ndarray, k_hint: int | None = None) -> np.ndarray:
    """Reshape a flat ``(..., K*3)`` or ``(..., K, 3)`` array to ``(..., K, 3)``."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim >= 2 and x.shape[-1] == 3 and (k_hint is None or x.shape[-2] == k_hint):
        return x
    if x.shape[-1] % 3:
        raise ValueError(f"keypoints must be (..., K, 3) or flat (..., K*3); got shape {x.shape}")
    return x.reshape(*x.shape[:-1], x.shape[-1] // 3, 3)


def _mean_exp(e: np.ndarray, valid: np.ndarray | None = None, empty: float = 0.0) -> np.ndarray:
    """Mean of ``exp(-e)`` over the last (keypoint) axis, over the ``valid`` entries only (all
    when ``None``); ``empty`` where none is valid. Float64, shape ``e.shape[:-1]``."""
    x = np.exp(-e)
    if valid is None:
        n = np.full(e.shape[:-1], e.shape[-1])
        s = x.sum(axis=-1)
    else:
        n = valid.sum(axis=-1)
        s = np.where(valid, x, 0.0).sum(axis=-1)
    return np.where(n > 0, s / np.maximum(n, 1), empty)


def oks_iou(
    g: np.ndarray,
    d: np.ndarray,
    a_g: float,
    a_d: np.ndarray,
    sigmas: Sequence[float] | np.ndarray,
    vis_thr: float | None = None,
) -> np.ndarray:
    """OKS between one instance ``g`` and each of ``M`` instances ``d`` (MMPose ``oks_iou``).

    Args:
        g: ``(K, 3)`` or flat ``(K*3,)`` keypoints ``x, y, v`` of the reference instance (pixels;
            ``v`` is a visibility or a score, only used with ``vis_thr``).
        d: ``(M, K, 3)`` or ``(M, K*3)`` keypoints of the other instances.
        a_g: area of ``g`` (px²); ``a_d``: ``(M,)`` areas of ``d``.
        sigmas: ``(K,)`` OKS sigmas.
        vis_thr: when given, only keypoints with ``v > vis_thr`` in both instances count;
            an instance pair with none gets OKS 0. When ``None`` all ``K`` keypoints count.

    Returns:
        ``(M,)`` float32: ``mean_k exp(-d_k² / (2 · (a_g + a_d)/2 · (2σ_k)²))``.

    Raises:
        ValueError: on a sigma/keypoint count mismatch or malformed shapes.
    """
    g3 = _split_kpts(g)
    d3 = _split_kpts(np.asarray(d, dtype=np.float64).reshape(-1, g3.size), g3.shape[0])
    var = (2.0 * _as_sigmas(sigmas, g3.shape[0])) ** 2
    a_d = np.asarray(a_d, dtype=np.float64).reshape(-1)
    d2 = (d3[:, :, 0] - g3[None, :, 0]) ** 2 + (d3[:, :, 1] - g3[None, :, 1]) ** 2
    e = d2 / var / ((a_g + a_d)[:, None] / 2 + _EPS) / 2
    valid = None if vis_thr is None else (g3[None, :, 2] > vis_thr) & (d3[:, :, 2] > vis_thr)
    return _mean_exp(e, valid).astype(np.float32)


def pairwise_oks(
    keypoints: np.ndarray,
    areas: np.ndarray,
    sigmas: Sequence[float] | np.ndarray,
    vis_thr: float | None = None,
) -> np.ndarray:
    """Symmetric ``(N, N)`` float32 matrix of :func:`oks_iou` between all pairs of ``N`` instances.

    ``keypoints``: ``(N, K, 3)`` (x, y, score/visibility; pixels); ``areas``: ``(N,)`` px².
    Entry ``[i, j]`` equals ``oks_iou(keypoints[i], keypoints[j:j+1], areas[i], areas[j:j+1])``
    (the matrix MMPose ``oks_nms`` fills row by row). Raises ``ValueError`` when the number of
    sigmas is not ``K``.
    """
    k3 = _split_kpts(keypoints)
    n, k = k3.shape[:2]
    var = (2.0 * _as_sigmas(sigmas, k)) ** 2
    a = np.asarray(areas, dtype=np.float64).reshape(n)
    diff = k3[:, None, :, :2] - k3[None, :, :, :2]  # (N, N, K, 2)
    d2 = (diff**2).sum(-1)
    e = d2 / var / ((a[:, None] + a[None, :])[..., None] / 2 + _EPS) / 2
    valid = None
    if vis_thr is not None:
        vis = k3[:, :, 2] > vis_thr
        valid = vis[:, None, :] & vis[None, :, :]
    return _mean_exp(e, valid).astype(np.float32)


def _greedy_nms(scores: np.ndarray, overlap: np.ndarray, thr: float) -> np.ndarray:
    order = np.asarray(scores).argsort()[::-1]
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        order = rest[overlap[i, rest] <= thr]
    return np.asarray(keep, dtype=np.int64)


def oks_nms(
    instances: Sequence[Mapping[str, Any]],
    thr: float = 0.9,
    sigmas: Sequence[float] | np.ndarray | None = None,
    vis_thr: float | None = None,
    score_per_joint: bool = False,
) -> np.ndarray:
    """Greedy OKS non-maximum suppression over the instances of one image (MMPose ``oks_nms``).

    Args:
        instances: ``N`` mappings with ``'keypoints'`` ``(K, 3)`` (x, y, score; pixels),
            ``'score'`` (float, or ``(K,)`` when ``score_per_joint``) and ``'area'`` (px²).
        thr: an instance is dropped when its OKS with an already kept, higher-scored one is
            ``> thr`` (instances with OKS ``<= thr`` are retained), compared in float32.
        sigmas: ``(K,)`` OKS sigmas (required).
        vis_thr, score_per_joint: as upstream (``None`` / ``False`` in ``CocoMetric``).

    Returns:
        int64 indices of the kept instances, highest score first (``np.argsort(...)[::-1]``
        order, as upstream, ties included).

    Raises:
        ValueError: if ``sigmas`` is missing or its length differs from ``K``.
    """
    if len(instances) == 0:
        return np.zeros(0, dtype=np.int64)
    if sigmas is None:
        raise ValueError("oks_nms needs the dataset's sigmas")
    if score_per_joint:
        scores = np.array([np.mean(inst["score"]) for inst in instances])
    else:
        scores = np.array([inst["score"] for inst in instances])
    kpts = np.stack(
        [np.asarray(inst["keypoints"], dtype=np.float64).reshape(-1, 3) for inst in instances]
    )
    areas = np.array([inst["area"] for inst in instances], dtype=np.float64)
    return _greedy_nms(scores, pairwise_oks(kpts, areas, sigmas, vis_thr), thr)


def rescore(
    bbox_score: float | np.ndarray, keypoint_scores: np.ndarray, thr: float = 0.2
) -> np.ndarray:
    """Person score = box score × mean of the keypoint scores ``> thr`` (MMPose ``CocoMetric``,
    ``score_mode='bbox_keypoint'``).

    Args:
        bbox_score: scalar or ``(N,)`` detection scores.
        keypoint_scores: ``(K,)`` or ``(N, K)`` keypoint confidences.
        thr: keypoints with score ``<= thr`` are left out of the mean; a person with none left
            gets mean 0, hence score 0 (as upstream).

    Returns:
        float32 array of shape ``()`` or ``(N,)``. The sum runs left to right in float32 like
        upstream's Python loop over float32 scores.
    """
    ks = np.asarray(keypoint_scores, dtype=np.float32)
    valid = ks > thr
    total = (
        np.where(valid, ks, np.float32(0)).cumsum(axis=-1, dtype=np.float32)[..., -1]
        if ks.shape[-1]
        else np.zeros(ks.shape[:-1], np.float32)
    )
    n = valid.sum(axis=-1)
    mean = np.where(n > 0, total / np.maximum(n, 1).astype(np.float32), np.float32(0))
    return (np.asarray(bbox_score, dtype=np.float32) * mean.astype(np.float32)).astype(np.float32)


def topdown_bbox_areas(
    bboxes_xyxy: np.ndarray, input_size: tuple[int, int], padding: float = 1.25
) -> np.ndarray:
    """Area MMPose's ``CocoMetric`` gives a top-down instance for OKS-NMS: ``prod(bbox_scale)``.

    ``bbox_scale`` is what ``GetBBoxCenterScale(padding)`` then ``TopdownAffine`` leave in the
    sample: the box size ``(x2-x1, y2-y1)`` times ``padding``, widened or heightened to the
    model input's aspect ratio ``input_size = (w, h)``.

    ``bboxes_xyxy``: ``(N, 4)`` pixels. Returns ``(N,)`` float32 px².
    """
    b = np.asarray(bboxes_xyxy, dtype=np.float32).reshape(-1, 4)
    scale = (b[:, 2:] - b[:, :2]) * np.float32(padding)
    w, h = scale[:, 0], scale[:, 1]
    aspect = float(input_size[0]) / float(input_size[1])
    fixed = np.where(
        (w > h * aspect)[:, None],
        np.stack([w, w / aspect], axis=1),
        np.stack([h * aspect, h], axis=1),
    )
    return np.prod(fixed.astype(np.float32), axis=1)


def per_instance_oks(
    pred: np.ndarray,
    gt: np.ndarray,
    visible: np.ndarray,
    areas: np.ndarray,
    sigmas: Sequence[float] | np.ndarray,
) -> np.ndarray:
    """OKS of each prediction with its own ground truth, over the labelled keypoints.

    ``oks_n = sum_k v_nk · exp(-d_nk² / (2 · area_n · (2σ_k)²)) / sum_k v_nk`` with
    ``v_nk = visible[n, k] > 0`` — the OKS ``COCOeval.computeOks`` (xtcocotools ``use_area=True``, pycocotools) gives a
    matched ground-truth/prediction pair.

    Args:
        pred, gt: ``(N, K, 2)`` (extra trailing columns are ignored) pixels.
        visible: ``(N, K)`` visibility flags (COCO ``v``; ``> 0`` means labelled).
        areas: ``(N,)`` ground-truth areas (COCO ``area``), px².
        sigmas: ``(K,)``.

    Returns:
        ``(N,)`` float64; NaN for instances without any labelled keypoint.

    Raises:
        ValueError: if ``pred`` and ``gt`` differ in shape or are not 3-D, or the number of
            sigmas is not ``K``.
    """
    p = np.asarray(pred, dtype=np.float64)[..., :2]
    g = np.asarray(gt, dtype=np.float64)[..., :2]
    if p.shape != g.shape or p.ndim != 3:
        raise ValueError(f"pred {p.shape} and gt {g.shape} must both be (N, K, 2)")
    var = (2.0 * _as_sigmas(sigmas, p.shape[1])) ** 2
    v = np.asarray(visible).reshape(p.shape[:2]) > 0
    a = np.asarray(areas, dtype=np.float64).reshape(-1, 1)
    e = ((p - g) ** 2).sum(-1) / var / (a + _EPS) / 2
    return _mean_exp(e, v, empty=np.nan)


def mean_oks(
    pred: np.ndarray,
    gt: np.ndarray,
    visible: np.ndarray,
    areas: np.ndarray,
    sigmas: Sequence[float] | np.ndarray,
) -> float:
    """Mean over people of :func:`per_instance_oks` (people without labelled keypoints skipped).

    This is the project's "mean OKS" figure (shared/README.md). Returns NaN when no person has
    a labelled keypoint.
    """
    oks = per_instance_oks(pred, gt, visible, areas, sigmas)
    oks = oks[~np.isnan(oks)]
    return float(oks.mean()) if oks.size else float("nan")


_API_CACHE: dict[str, Any] = {}


def _coco_api(backend: str = "auto"):
    """``(COCO, COCOeval, name)`` of ``xtcocotools`` (MMPose's choice) or ``pycocotools``.

    ``"auto"`` prefers xtcocotools and falls back to pycocotools when xtcocotools cannot be
    imported (e.g. its wheel was built against an older NumPy ABI). For ``iouType='keypoints'``
    with ``use_area=True`` the two compute the same OKS matching and AP/AR; the evaluator makes
    pycocotools' ignore flag use the visible-keypoint count as xtcocotools does.
    """
    if backend in _API_CACHE:
        return _API_CACHE[backend]
    errors = []
    order = ["xtcocotools", "pycocotools"] if backend == "auto" else [backend]
    for name in order:
        try:
            if name == "xtcocotools":
                from xtcocotools.coco import COCO
                from xtcocotools.cocoeval import COCOeval
            elif name == "pycocotools":
                from pycocotools.coco import COCO
                from pycocotools.cocoeval import COCOeval
            else:
                raise ValueError(f"unknown COCO API backend {name!r}")
        except (ImportError, ValueError) as exc:  # numpy ABI mismatch raises ValueError
            errors.append(f"{name}: {exc}")
            continue
        _API_CACHE[backend] = (COCO, COCOeval, name)
        return _API_CACHE[backend]
    raise ImportError("no usable COCO API (" + "; ".join(errors) + ")")


def _load_coco(ann: str | Path | Mapping[str, Any], COCO, visible_count: bool = False):
    if isinstance(ann, Mapping):
        dataset = copy.deepcopy(dict(ann))
    else:
        with open(ann, encoding="utf-8") as f:
            dataset = json.load(f)
    if visible_count:
        for a in dataset.get("annotations", []):
            if "keypoints" in a:
                a["num_keypoints"] = int(np.count_nonzero(np.asarray(a["keypoints"])[2::3] > 0))
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = dataset
        coco.createIndex()
    return coco


class CocoKeypointEvaluator:
    """MMPose ``CocoMetric`` for top-down (or bottom-up) keypoint predictions, torch-free.

    Usage: ``ev = CocoKeypointEvaluator(ann_file, sigmas)``; ``ev.add(image_id, keypoints,
    bbox_scores, areas=..., ids=...)`` once per image (or per batch of instances of an image);
    ``ev.evaluate()`` → ``{"AP": ..., "AP50": ..., ..., "ARl": ...}`` (fractions in [0, 1]).

    Post-processing, per image (upstream defaults): instances are sorted by ``id`` and duplicate
    ids dropped; each gets ``score = bbox_score × mean(keypoint scores > 0.2)``; OKS-NMS at 0.9
    with the dataset sigmas and each instance's ``area``; the survivors become COCO results
    (``category_id`` 1, flat ``[x, y, score] * K`` keypoints, ``score``), scored by
    ``xtcocotools`` ``COCOeval(iouType='keypoints', sigmas, use_area)``.

    Args:
        ann: COCO keypoint annotation file (path) or its already-loaded dict.
        sigmas: ``(K,)`` dataset OKS sigmas (used in float32, like MMPose's metainfo).
        use_area: ``COCOeval``'s ``use_area`` (False for datasets without ``area``).
        score_mode: ``'bbox_keypoint'`` (default), ``'bbox'`` or ``'bbox_rle'``.
        keypoint_score_thr: threshold of the rescoring mean (0.2).
        nms_mode: ``'oks_nms'`` (default) or ``'none'``.
        nms_thr: OKS-NMS threshold (0.9).
        verbose: let COCOeval print its summary to stdout.
        coco_api: ``'auto'`` (xtcocotools, else pycocotools), ``'xtcocotools'`` or
            ``'pycocotools'`` (the latter only with ``use_area=True``).

    Raises:
        ValueError: on unknown modes, or in :meth:`add` on inconsistent shapes.
    """

    def __init__(
        self,
        ann: str | Path | Mapping[str, Any],
        sigmas: Sequence[float] | np.ndarray,
        *,
        use_area: bool = True,
        score_mode: str = "bbox_keypoint",
        keypoint_score_thr: float = 0.2,
        nms_mode: str = "oks_nms",
        nms_thr: float = 0.9,
        verbose: bool = False,
        coco_api: str = "auto",
    ) -> None:
        if score_mode not in ("bbox", "bbox_keypoint", "bbox_rle"):
            raise ValueError(
                f"score_mode must be 'bbox', 'bbox_keypoint' or 'bbox_rle', got {score_mode!r}"
            )
        if nms_mode not in ("oks_nms", "none"):
            raise ValueError(f"nms_mode must be 'oks_nms' or 'none', got {nms_mode!r}")
        self._COCO, self._COCOeval, self.coco_api = _coco_api(coco_api)
        if self.coco_api == "pycocotools" and not use_area:
            raise ValueError("use_area=False needs xtcocotools")
        self.coco = _load_coco(ann, self._COCO, visible_count=self.coco_api == "pycocotools")
        self.sigmas = np.asarray(_as_sigmas(sigmas), dtype=np.float32)
        self.use_area = use_area
        self.score_mode = score_mode
        self.keypoint_score_thr = keypoint_score_thr
        self.nms_mode = nms_mode
        self.nms_thr = nms_thr
        self.verbose = verbose
        self._instances: dict[Any, list[dict]] = defaultdict(list)
        self._next_id = 0

    @property
    def num_keypoints(self) -> int:
        """``K``, the number of keypoints (= number of sigmas)."""
        return int(self.sigmas.size)

    def reset(self) -> None:
        """Forget all added predictions."""
        self._instances.clear()
        self._next_id = 0

    def add(
        self,
        image_id: Any,
        keypoints: np.ndarray,
        bbox_scores: np.ndarray,
        areas: np.ndarray | None = None,
        ids: Sequence[Any] | None = None,
    ) -> None:
        """Add the ``N`` predicted instances of one image.

        Args:
            image_id: the COCO ``image_id``.
            keypoints: ``(N, K, 3)``: x, y (image pixels) and keypoint score.
            bbox_scores: ``(N,)`` detection (box) scores.
            areas: ``(N,)`` px² areas for OKS-NMS; MMPose top-down uses
                :func:`topdown_bbox_areas`. ``None``: the keypoints' extent
                ``(max x − min x) · (max y − min y)``, upstream's fallback.
            ids: ``(N,)`` instance ids (MMPose's data-sample ``id``: annotation id with
                ground-truth boxes, running detection index with a box file). Instances are
                sorted by id and repeated ids keep their first instance. ``None``: increasing
                numbers in order of addition.
        """
        kp = np.asarray(keypoints, dtype=np.float32)
        if kp.ndim == 2:
            kp = kp[None]
        if kp.ndim != 3 or kp.shape[-1] != 3:
            raise ValueError(f"keypoints must be (N, K, 3), got {kp.shape}")
        n = kp.shape[0]
        if kp.shape[1] != self.num_keypoints:
            raise ValueError(
                f"{kp.shape[1]} keypoints per instance, but {self.num_keypoints} sigmas"
            )
        bs = np.asarray(bbox_scores, dtype=np.float32).reshape(-1)
        if bs.size != n:
            raise ValueError(f"{bs.size} bbox scores for {n} instances")
        if areas is None:
            xy = kp[..., :2]
            ar = (
                (xy[..., 0].max(1) - xy[..., 0].min(1)) * (xy[..., 1].max(1) - xy[..., 1].min(1))
                if n
                else np.zeros(0, np.float32)
            )
        else:
            ar = np.asarray(areas, dtype=np.float32).reshape(-1)
            if ar.size != n:
                raise ValueError(f"{ar.size} areas for {n} instances")
        if ids is None:
            ids = list(range(self._next_id, self._next_id + n))
            self._next_id += n
        elif len(ids) != n:
            raise ValueError(f"{len(ids)} ids for {n} instances")
        lst = self._instances[image_id]
        for i in range(n):
            lst.append({"id": ids[i], "keypoints": kp[i], "bbox_score": bs[i], "area": ar[i]})

    def _score(self, insts: list[dict]) -> np.ndarray:
        ks = np.stack([x["keypoints"][:, 2] for x in insts])
        bs = np.array([x["bbox_score"] for x in insts], dtype=np.float32)
        if self.score_mode == "bbox":
            return bs
        if self.score_mode == "bbox_rle":
            return (bs.astype(np.float64) + ks.mean(1) + ks.max(1)).astype(np.float32)
        return rescore(bs, ks, self.keypoint_score_thr)

    def coco_results(self) -> list[dict]:
        """The COCO keypoint results after rescoring and NMS, grouped by image in order of first
        addition: ``[{"image_id", "category_id": 1, "keypoints": [x, y, s] * K, "score"}]``."""
        out: list[dict] = []
        for image_id, insts in self._instances.items():
            if not insts:
                continue
            uniq: list[dict] = []
            for inst in sorted(insts, key=lambda x: x["id"]):
                if uniq and uniq[-1]["id"] == inst["id"]:
                    continue
                uniq.append(inst)
            scores = self._score(uniq)
            if self.nms_mode == "oks_nms":
                kpts = np.stack([x["keypoints"] for x in uniq]).astype(np.float64)
                areas = np.array([x["area"] for x in uniq], dtype=np.float64)
                keep = _greedy_nms(scores, pairwise_oks(kpts, areas, self.sigmas), self.nms_thr)
            else:
                keep = np.arange(len(uniq))
            for i in keep:
                out.append(
                    {
                        "image_id": image_id,
                        "category_id": 1,
                        "keypoints": uniq[i]["keypoints"].reshape(-1).tolist(),
                        "score": float(scores[i]),
                    }
                )
        return out

    def evaluate(
        self, results: list[dict] | None = None, image_ids: Iterable[Any] | None = None
    ) -> dict[str, float]:
        """Run ``COCOeval`` and return ``{name: value}`` for :data:`COCO_STAT_NAMES`.

        Args:
            results: COCO results to score; default :meth:`coco_results`.
            image_ids: restrict the evaluation to these images (default: every image of the
                annotation file, as upstream).

        Raises:
            ValueError: when there are no results at all (COCOeval cannot score nothing).
        """
        res = copy.deepcopy(self.coco_results() if results is None else results)
        if not res:
            raise ValueError("no keypoint results to evaluate")
        sink = (
            contextlib.nullcontext() if self.verbose else contextlib.redirect_stdout(io.StringIO())
        )
        with sink:
            coco_dt = self.coco.loadRes(res)
            if self.coco_api == "xtcocotools":
                ev = self._COCOeval(self.coco, coco_dt, "keypoints", self.sigmas, self.use_area)
            else:
                ev = self._COCOeval(self.coco, coco_dt, "keypoints")
                ev.params.kpt_oks_sigmas = self.sigmas
            ev.params.useSegm = None
            if image_ids is not None:
                ev.params.imgIds = sorted(set(image_ids))
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        return {name: float(v) for name, v in zip(COCO_STAT_NAMES, ev.stats)}
