"""PCK and NME keypoint metrics (MMPose ``mmpose/evaluation/functional/keypoint_eval.py``).

``pck_accuracy`` follows ``keypoint_pck_accuracy`` and ``nme`` follows ``keypoint_nme``:
distances are normalised per instance by ``norm_factor`` (one factor per axis), keypoints with
``mask == False`` are ignored (distance −1), and an instance with a zero normalisation factor is
ignored entirely. Horse-10 (:func:`horse10_metrics`) uses PCK@0.3 and NME both normalised by the
nose–eye distance of the ground truth, as MMPose's ``AnimalHorse10Dataset`` did when the model-zoo
Horse-10 numbers were produced (MMPose 1.x keeps the same pair as ``NME``'s default
``keypoint_indices`` for ``horse10``).

Units: keypoints in pixels (any consistent space); results are fractions (PCK in [0, 1], NME in
units of the normalisation length). Torch-free.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "horse10_metrics",
    "keypoint_distance_norm",
    "nme",
    "normalized_distances",
    "pck_accuracy",
    "bbox_size_norm",
    "pixel_error_metrics",
]

#: Horse-10 normalisation pair: keypoint 0 ``Nose`` and 1 ``Eye``.
HORSE10_NORM_INDICES = (0, 1)


def normalized_distances(
    pred: np.ndarray, gt: np.ndarray, mask: np.ndarray, norm_factor: np.ndarray
) -> np.ndarray:
    """Per-keypoint normalised distances, ``(K, N)`` float32, −1 where not evaluated
    (MMPose ``_calc_distances``).

    Args:
        pred, gt: ``(N, K, D)`` keypoints (D = 2 usually).
        mask: ``(N, K)`` bool, True where the ground truth is labelled.
        norm_factor: ``(N, D)`` per-instance, per-axis normalisation; an instance with any zero
            factor is ignored, and non-positive factors are replaced by 1e6 (upstream). Not
            modified (upstream edits it in place; this copies).

    Returns:
        ``(K, N)`` float32: ``|| (pred - gt) / norm ||`` for evaluated keypoints, else −1.

    Raises:
        ValueError: if ``pred`` and ``gt`` differ in shape or are not ``(N, K, D)``.
    """
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    if pred.shape != gt.shape or pred.ndim != 3:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} must both be (N, K, D)")
    n, k, d = pred.shape
    norm = np.array(norm_factor, dtype=np.float64).reshape(n, d)
    m = np.asarray(mask).reshape(n, k) > 0
    m = m & ~(norm == 0).any(axis=1, keepdims=True)
    norm[norm <= 0] = 1e6
    dist = np.full((n, k), -1, dtype=np.float32)
    dist[m] = np.linalg.norm(((pred - gt) / norm[:, None, :])[m], axis=-1)
    return dist.T


def pck_accuracy(
    pred: np.ndarray, gt: np.ndarray, mask: np.ndarray, thr: float, norm_factor: np.ndarray
) -> tuple[np.ndarray, float, int]:
    """PCK: fraction of keypoints whose normalised distance is ``< thr`` (MMPose
    ``keypoint_pck_accuracy``).

    Args:
        pred, gt: ``(N, K, 2)`` keypoints; mask ``(N, K)`` bool; thr: threshold on the
            normalised distance; norm_factor ``(N, 2)``.

    Returns:
        ``(acc, avg_acc, cnt)``: ``acc`` ``(K,)`` per-keypoint accuracy (−1 for a keypoint never
        evaluated), ``avg_acc`` the mean of the valid per-keypoint accuracies (0 when none), and
        ``cnt`` the number of valid keypoints. Note the mean is over keypoint types, not over
        all (instance, keypoint) pairs.

    Raises:
        ValueError: as :func:`normalized_distances`.
    """
    dist = normalized_distances(pred, gt, mask, norm_factor)
    valid = dist != -1
    n_valid = valid.sum(axis=1)
    hits = (valid & (dist < thr)).sum(axis=1)
    acc = np.where(n_valid > 0, hits / np.maximum(n_valid, 1), -1.0)
    good = acc[acc >= 0]
    cnt = int(good.size)
    return acc, (float(good.mean()) if cnt else 0.0), cnt


def nme(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray, normalize_factor: np.ndarray) -> float:
    """Normalised mean error: mean of the normalised distances over all evaluated
    (instance, keypoint) pairs (MMPose ``keypoint_nme``); 0 when none is evaluated.

    ``pred``, ``gt``: ``(N, K, 2)`` pixels; ``mask``: ``(N, K)``; ``normalize_factor``: ``(N, 2)``
    pixels. Returns the NME in units of the normalisation length. Raises ``ValueError`` as
    :func:`normalized_distances`.
    """
    dist = normalized_distances(pred, gt, mask, normalize_factor)
    valid = dist[dist != -1]
    return float(valid.sum() / max(1, valid.size))


def keypoint_distance_norm(gt: np.ndarray, indices: Sequence[int]) -> np.ndarray:
    """``(N, 2)`` normalisation factor: the distance between ground-truth keypoints
    ``indices[0]`` and ``indices[1]`` of each instance, repeated for both axes (MMPose
    ``NME._get_normalize_factor``). ``gt``: ``(N, K, 2)`` pixels."""
    i, j = indices
    g = np.asarray(gt, dtype=np.float64)
    d = np.linalg.norm(g[:, i, :2] - g[:, j, :2], axis=1, keepdims=True)
    return np.tile(d, (1, 2))


def horse10_metrics(
    pred: np.ndarray, gt: np.ndarray, mask: np.ndarray, thr: float = 0.3
) -> dict[str, float]:
    """Horse-10 benchmark metrics: ``{"PCK": PCK@thr, "NME": NME}``.

    Both are normalised by the ground-truth nose–eye distance (keypoints 0 and 1), as
    MMPose's ``AnimalHorse10Dataset._report_metric`` (``pck_thr=0.3``) that produced the
    published Horse-10 numbers; an instance whose nose and eye coincide (e.g. both unlabelled
    at (0, 0)) has a zero factor and is ignored.

    Args:
        pred, gt: ``(N, 22, 2)`` keypoints in pixels; mask: ``(N, 22)`` labelled flags.
        thr: PCK threshold (0.3).

    Returns:
        ``{"PCK": fraction in [0, 1], "NME": in nose–eye lengths}``.
    """
    norm = keypoint_distance_norm(gt, HORSE10_NORM_INDICES)
    _, pck, _ = pck_accuracy(pred, gt, mask, thr, norm)
    return {"PCK": pck, "NME": nme(pred, gt, mask, norm)}


def bbox_size_norm(bboxes_xyxy: np.ndarray) -> np.ndarray:
    """``(N, 2)`` PCK normalisation by box size: the longer side ``max(x2 - x1, y2 - y1)`` of
    each ``(N, 4)`` xyxy box, for both axes (MMPose ``PCKAccuracy(norm_item='bbox')``)."""
    b = np.asarray(bboxes_xyxy, dtype=np.float64).reshape(-1, 4)
    side = np.max(b[:, 2:4] - b[:, 0:2], axis=1, keepdims=True)
    return np.tile(side, (1, 2))


def pixel_error_metrics(
    pred: np.ndarray, gt: np.ndarray, mask: np.ndarray, bboxes_xyxy: np.ndarray, thr: float = 0.2
) -> dict[str, float]:
    """Pixel errors of labelled keypoints, DeepLabCut-style, plus box-normalised PCK.

    * ``EPE``: mean Euclidean distance in pixels over all labelled (instance, keypoint) pairs
      (MMPose ``keypoint_epe``; what DeepLabCut reports as its train/test "error" in pixels);
    * ``RMSE``: ``sqrt(mean(d^2))`` over the same pairs, pixels;
    * ``PCK@{thr}``: :func:`pck_accuracy` with :func:`bbox_size_norm` of ``bboxes_xyxy``
      (MMPose ``PCKAccuracy(thr, norm_item='bbox')``), fraction, mean over keypoint types.

    Args:
        pred, gt: ``(N, K, 2)`` pixels; mask: ``(N, K)`` labelled flags; bboxes_xyxy: ``(N, 4)``.

    Returns ``{"EPE", "RMSE", "PCK@<thr>", "count"}`` (``count`` = labelled pairs). Raises
    ``ValueError`` when nothing is labelled or shapes disagree.
    """
    p = np.asarray(pred, dtype=np.float64)
    g = np.asarray(gt, dtype=np.float64)
    m = np.asarray(mask).reshape(p.shape[:2]) > 0
    if p.shape != g.shape or p.ndim != 3:
        raise ValueError(f"pred {p.shape} and gt {g.shape} must both be (N, K, 2)")
    if not m.any():
        raise ValueError("no labelled keypoint to score")
    d = np.linalg.norm(p[..., :2] - g[..., :2], axis=-1)[m]
    _, pck, _ = pck_accuracy(p, g, m, thr, bbox_size_norm(bboxes_xyxy))
    return {
        "EPE": float(d.mean()),
        "RMSE": float(np.sqrt((d**2).mean())),
        f"PCK@{thr:g}": float(pck),
        "count": int(d.size),
    }
