"""Associative-embedding (bottom-up) decoding: HigherHRNet outputs -> people (numpy, OpenCV, scipy).

Follows the test path of the HigherHRNet repo (``HRNet/HigherHRNet-Human-Pose-Estimation``:
``lib/core/inference.py`` ``get_multi_stage_outputs`` / ``aggregate_results``, ``lib/core/group.py``
``HeatmapParser``, ``lib/utils/transforms.py`` ``get_final_preds``), which MMPose 0.x
(``AssociativeEmbedding.forward_test``, ``mmpose/core/post_processing/group.py``) re-implements:

1. **aggregation** (:func:`aggregate_outputs`): per test scale, every stage output but the last is
   bilinearly resized to the last (1/2-resolution) stage's size, heatmaps are averaged over the
   stages that carry them, tags taken from the stages that carry them; the flipped image's outputs
   are resized the same way, mirrored back along W and their channels swapped by the flip indices.
   With ``project2image`` both are resized to the resized image (``base_size``); heatmaps are
   averaged over plain/flipped and over scales, tags of scale 1 are stacked on a last axis
   (``L`` = 2 with flip test). Resizing is :func:`service.interpolate.resize_bilinear`, torch's
   ``F.interpolate(mode='bilinear')`` semantics without torch.
2. **candidates** (:func:`top_k_candidates`): the max-pool peak test (kernel 5, padding 2: a pixel
   survives when it equals the maximum of its 5x5 window, ``-inf`` outside the map), then the
   ``max_num_people`` highest peaks per joint whose value exceeds ``detection_threshold``.
3. **grouping** (:func:`match_by_tag`): joint by joint in ``joint_order``; the candidates of a
   joint are matched to the existing people by the Hungarian algorithm on
   ``round(|tag - mean tag|) * 100 - value``; a match is kept when the tag distance is below
   ``tag_threshold``, every other candidate starts a person.
4. **adjust** (:func:`adjust_people`): a quarter pixel toward the higher neighbour, then +0.5.
5. **person score**: mean joint value (missing joints count 0), before refinement.
6. **refine** (:func:`refine_people`): a missing joint is taken from its heatmap where
   ``value - round(|tag - the person's mean tag|)`` is largest, quarter offset and +0.5 too.
7. **back to the image** (:func:`people_to_image`): the inverse of the resize warp.

Coordinates are ``(x, y)`` pixels of the aggregated heatmaps ("heatmap space", the resized image
with ``project2image``) until step 7. Tie behaviour where upstream calls torch or munkres:

* ``topk`` over the peak map: here equal values are taken in ascending flattened index
  (row-major). torch's CPU ``topk`` (a partial sort) leaves the order of equal values to its
  sort: in a check with 60 equal peaks it kept the same 30 (the lowest indices) in a scrambled
  order. The candidate order decides which person is created first and the row order of the
  matching, so exactly equal peak values above ``detection_threshold`` can group differently
  from upstream. Real-valued outputs of a trained model do not tie; a random-weight model does,
  over the constant black padding to the multiple of 64 (a fake two-conv model gave the same 30
  people as upstream, 0 px apart, on a photo resized to 768x512, and different keypoints on the
  padded original). A plateau of equal maxima inside one 5x5 window keeps all its pixels, as
  upstream's ``maxpool == heatmap`` test does. Only candidates above ``detection_threshold``
  are kept (upstream's topk + mask), which is why the threshold must be >= 0 (below 0 upstream
  would also keep the zeroed non-peaks).
* Hungarian matching: the costs are integers times 100 minus the candidates' values, so several
  assignments often have the same minimum cost (exchange two candidates whose rounded distances
  to two people sum the same). Upstream's ``munkres`` package then returns the optimum its step
  order reaches; :func:`munkres_assignment` replays those steps (equal to the package on random
  tie-heavy matrices, ``tests/service/test_associative_embedding.py``). ``scipy.optimize.
  linear_sum_assignment`` (``solver="scipy"``) returns an optimum of the same cost but not always
  the same one: on synthetic outputs of the 84 shared COCO photos it changed the people found on
  8 of them (``python -m benchmarks.bench_grouping``), so it is not the default.
* Tag means are float32 sums in joint order divided by the count; upstream's ``np.mean`` gives the
  same value except when numpy's pairwise summation kicks in (one tag dimension and >= 8 joints),
  an ulp apart, which only matters for a distance within ~1e-7 of a half-integer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np
from scipy.optimize import linear_sum_assignment

from ..geometry import affine_transform_points, get_bottomup_warp_matrix
from ..interpolate import resize_bilinear

if TYPE_CHECKING:  # grouping parameters: the card's spec (validated when the card is loaded)
    from ..cards import BottomUpSpec

__all__ = [
    "ScaleOutputs",
    "GroupedPeople",
    "aggregate_outputs",
    "max_pool",
    "top_k_candidates",
    "munkres_assignment",
    "match_by_tag",
    "adjust_people",
    "refine_people",
    "group_people",
    "people_to_image",
]


@dataclass
class ScaleOutputs:
    """The network outputs of one test scale, batch axis removed.

    ``outputs``: one array per stage, lowest resolution first, ``(C_i, h_i, w_i)`` float32 (the
    card's ``outputs`` order; HigherHRNet: ``(2K, H/4, W/4)`` heatmaps + tags, ``(K, H/2, W/2)``
    heatmaps). ``outputs_flipped``: the same for the horizontally flipped input, or None.
    """

    scale: float
    outputs: Sequence[np.ndarray]
    outputs_flipped: Sequence[np.ndarray] | None = None


@dataclass
class GroupedPeople:
    """Grouped people in heatmap space.

    ``people``: ``(P, K, 3 + L)`` float32, per joint ``x, y`` (heatmap pixels, after adjust /
    refine), ``value`` (heatmap value; 0 = not found) and the ``L`` tag values.
    ``scores``: ``(P,)`` float32 mean joint value before refinement (upstream's person score).
    """

    people: np.ndarray
    scores: np.ndarray


# ----------------------------------------------------------------------------- aggregation


def _stage_average(
    outputs: Sequence[np.ndarray],
    num_joints: int,
    with_heatmaps: Sequence[bool],
    with_ae: Sequence[bool],
    align_corners: bool,
    flip: bool,
) -> tuple[np.ndarray | None, list[np.ndarray]]:
    """One image's stage outputs -> (stage-averaged heatmaps, tag maps), at the last stage's size.

    ``flip``: the outputs belong to the flipped input; they are mirrored back along W after
    resizing (channel swapping is left to the caller).
    """
    if len(outputs) != len(with_heatmaps) or len(outputs) != len(with_ae):
        raise ValueError(
            f"the model has {len(outputs)} output stages, but 'with_heatmaps' / "
            f"'with_ae' describe {len(with_heatmaps)} / {len(with_ae)}"
        )
    last_hw = np.asarray(outputs[-1]).shape[-2:]
    heatmap_sum = None
    n_heatmaps = 0
    tags: list[np.ndarray] = []
    for i, out in enumerate(outputs):
        out = np.asarray(out, dtype=np.float32)
        if out.ndim != 3:
            raise ValueError(f"stage {i} output must be (C, H, W), got {out.shape}")
        if len(outputs) > 1 and i != len(outputs) - 1:
            out = resize_bilinear(out, last_hw, align_corners)
        if flip:
            out = out[..., ::-1]
        offset = num_joints if with_heatmaps[i] else 0
        if with_heatmaps[i]:
            if out.shape[0] < num_joints:
                raise ValueError(
                    f"stage {i} has {out.shape[0]} channels, fewer than the {num_joints} heatmaps"
                )
            hm = out[:num_joints]
            heatmap_sum = hm.copy() if heatmap_sum is None else heatmap_sum + hm
            n_heatmaps += 1
        if with_ae[i]:
            if out.shape[0] <= offset:
                raise ValueError(f"stage {i} has no tag channels after its {offset} heatmaps")
            tags.append(out[offset:])
    avg = None if heatmap_sum is None else heatmap_sum / np.float32(n_heatmaps)
    return avg, tags


def aggregate_outputs(
    scale_outputs: Sequence[ScaleOutputs],
    *,
    num_joints: int,
    flip_indices: Sequence[int] | None,
    with_heatmaps: Sequence[bool],
    with_ae: Sequence[bool],
    tag_per_joint: bool = True,
    project2image: bool = True,
    base_size: tuple[int, int] | None = None,
    align_corners: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Heatmaps and tags of all test scales and the flip test, as upstream's test loop.

    HigherHRNet's ``get_multi_stage_outputs`` (per scale) and ``aggregate_results`` (across
    scales), in upstream's order of operations so the floats match: per scale, stage heatmaps are
    averaged after resizing to the last stage's size; the flipped outputs are resized, mirrored
    and channel-swapped (``flip_indices``; tags too when ``tag_per_joint``); with
    ``project2image`` the plain and flipped heatmaps/tags are resized to ``base_size``. Heatmaps of
    a scale are ``(plain + flipped) / 2``; the scales are summed in the given order and divided by
    their count (without ``project2image`` later scales are first resized to the first one's
    size). Tags come from every scale equal to 1 (or the only scale), plain then flipped, stacked
    on a new last axis.

    Args:
        scale_outputs: per test scale, in upstream's processing order (scales descending).
        num_joints: ``K``.
        flip_indices: ``(K,)`` mirror permutation (needed when any scale has flipped outputs).
        with_heatmaps, with_ae: per stage, whether it carries heatmaps (the first ``K`` channels)
            / tags (the channels after them).
        tag_per_joint: tags have ``K`` channels (else 1, shared by all joints).
        project2image: resize to ``base_size`` (``(w, h)`` of the resized image at scale 1).
        align_corners: for every resize (False for HigherHRNet).

    Returns:
        ``heatmaps`` ``(K, H, W)`` float32 and ``tags`` ``(K or 1, H, W, L)`` float32 at the same
        ``(H, W)``.

    Raises:
        ValueError: inconsistent stages/shapes, a bad flip permutation, no scale with tags
            (multi-scale without scale 1), or no stage with heatmaps.
    """
    if not scale_outputs:
        raise ValueError("no network outputs to aggregate")
    if project2image and base_size is None:
        raise ValueError("project2image needs base_size")
    size_hw = (base_size[1], base_size[0]) if base_size is not None else None
    single = len(scale_outputs) == 1
    final = None
    tag_list: list[np.ndarray] = []
    for so in scale_outputs:
        hm, tags = _stage_average(
            so.outputs, num_joints, with_heatmaps, with_ae, align_corners, flip=False
        )
        if hm is None:
            raise ValueError("no output stage carries heatmaps ('with_heatmaps' is all false)")
        heatmaps = [hm]
        if so.outputs_flipped is not None:
            idx = _flip_permutation(flip_indices, num_joints)
            hm_f, tags_f = _stage_average(
                so.outputs_flipped, num_joints, with_heatmaps, with_ae, align_corners, flip=True
            )
            if hm_f is None:
                raise ValueError("no flipped output stage carries heatmaps")
            heatmaps.append(hm_f[idx])
            tags = tags + [t[idx] if tag_per_joint else t for t in tags_f]
        if size_hw is not None and project2image:
            heatmaps = [resize_bilinear(h, size_hw, align_corners) for h in heatmaps]
            tags = [resize_bilinear(t, size_hw, align_corners) for t in tags]
        if so.scale == 1 or single:
            if final is not None and not project2image:
                tags = [resize_bilinear(t, final.shape[-2:], align_corners) for t in tags]
            tag_list.extend(tags)
        avg = (heatmaps[0] + heatmaps[1]) / np.float32(2.0) if len(heatmaps) == 2 else heatmaps[0]
        if final is None:
            final = avg
        elif project2image:
            final = final + avg
        else:
            final = final + resize_bilinear(avg, final.shape[-2:], align_corners)
    if not tag_list:
        raise ValueError(
            "no tags: multi-scale testing needs scale 1 among the scales "
            "(tags are taken at scale 1 only, as upstream)"
        )
    final = final / np.float32(len(scale_outputs))
    shapes = {t.shape for t in tag_list}
    if len(shapes) != 1 or next(iter(shapes))[-2:] != final.shape[-2:]:
        raise ValueError(f"tag maps {sorted(shapes)} do not match the heatmaps {final.shape}")
    return final.astype(np.float32, copy=False), np.stack(tag_list, axis=-1)


def _flip_permutation(flip_indices, k: int) -> np.ndarray:
    if flip_indices is None or len(flip_indices) == 0:
        raise ValueError("flip test needs the card's flip_indices")
    idx = np.asarray(flip_indices, dtype=np.int64)
    if idx.shape != (k,) or not np.array_equal(np.sort(idx), np.arange(k)):
        raise ValueError(
            f"flip_indices must be a permutation of range({k}), got {list(flip_indices)}"
        )
    return idx


# ----------------------------------------------------------------------------- candidates


def max_pool(heatmaps: np.ndarray, kernel: int) -> np.ndarray:
    """``(K, H, W)`` maxima of each pixel's ``kernel`` x ``kernel`` window (stride 1, pixels outside
    the map ignored): torch's ``MaxPool2d(kernel, 1, kernel // 2)`` with its ``-inf`` padding.

    ``cv2.dilate`` per channel (its default border ignores outside pixels). Shared by the peak
    test of :func:`top_k_candidates` and the search bounds of :func:`refine_people`.
    """
    element = np.ones((kernel, kernel), np.uint8)
    pooled = np.empty_like(heatmaps)
    for k in range(heatmaps.shape[0]):
        cv2.dilate(heatmaps[k], element, dst=pooled[k])
    return pooled


def top_k_candidates(
    heatmaps: np.ndarray, tags: np.ndarray, params: BottomUpSpec, pooled: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per joint, the ``max_num_people`` strongest peaks above ``detection_threshold``.

    Upstream ``HeatmapParser.top_k`` (max-pool peak test, ``topk``) followed by the threshold mask
    of ``match_by_tag``, in one step: the peaks (a pixel equal to the maximum of its
    ``nms_kernel`` window) with value ``> detection_threshold``, highest first, equal values in
    ascending row-major index, at most ``max_num_people``.

    Args:
        heatmaps: ``(K, H, W)`` float32 aggregated heatmaps.
        tags: ``(K or 1, H, W, L)`` float32 tag maps.
        params: the card's grouping parameters (:class:`service.cards.BottomUpSpec`).
        pooled: :func:`max_pool` of the heatmaps with ``params.nms_kernel`` (computed if None).

    Returns:
        ``(values (K, M) float32, locations (K, M, 2) int64 (x, y) heatmap pixels,
        tags (K, M, L) float32, counts (K,) int64)`` with ``M = max_num_people``; entries past
        ``counts[k]`` are zero.

    Raises:
        ValueError: bad shapes or parameters.
    """
    hm = np.ascontiguousarray(heatmaps, dtype=np.float32)
    if hm.ndim != 3 or hm.shape[0] != params.num_joints:
        raise ValueError(f"heatmaps must be ({params.num_joints}, H, W), got {hm.shape}")
    k, h, w = hm.shape
    if tags.ndim != 4 or tags.shape[1:3] != (h, w) or tags.shape[0] not in (1, k):
        raise ValueError(f"tags must be ({k} or 1, {h}, {w}, L), got {tags.shape}")
    m = params.max_num_people
    n_tag = tags.shape[-1]
    if pooled is None:
        pooled = max_pool(hm, params.nms_kernel)
    hm_flat = hm.reshape(k, h * w)
    jj, flat = np.nonzero(hm_flat > np.float32(params.detection_threshold))  # joint, then index
    vals = hm_flat[jj, flat]
    is_peak = pooled.reshape(k, h * w)[jj, flat] == vals
    jj, flat, vals = jj[is_peak], flat[is_peak], vals[is_peak]
    # per joint: value descending, ties by flat index (stable sort of the index-sorted list)
    order = np.lexsort((flat, -vals, jj))
    jj, flat, vals = jj[order], flat[order], vals[order]
    starts = np.searchsorted(jj, np.arange(k))
    rank = np.arange(len(jj)) - starts[jj]
    keep = rank < m
    jj, flat, vals, rank = jj[keep], flat[keep], vals[keep], rank[keep]
    val_k = np.zeros((k, m), np.float32)
    loc_k = np.zeros((k, m, 2), np.int64)
    tag_k = np.zeros((k, m, n_tag), np.float32)
    val_k[jj, rank] = vals
    loc_k[jj, rank, 0] = flat % w
    loc_k[jj, rank, 1] = flat // w
    tag_src = jj if tags.shape[0] == k else np.zeros_like(jj)
    tag_k[jj, rank] = tags.reshape(tags.shape[0], h * w, n_tag)[tag_src, flat]
    counts = np.bincount(jj, minlength=k).astype(np.int64)
    return val_k, loc_k, tag_k, counts


# ----------------------------------------------------------------------------- grouping


def munkres_assignment(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Minimum-cost assignment with the classic Munkres steps, reproducing the ``munkres``
    package's (1.1.x, what upstream calls) choice among equal-cost optima.

    ``scipy.optimize.linear_sum_assignment`` finds an assignment of the same (minimum) total cost,
    but where several assignments tie it may return another one; with upstream's costs (integers
    times 100 minus values) ties are common: any two candidates whose rounded distances can be
    exchanged between two people. Measured on synthetic crowded photos, scipy picked another
    optimum in 4 of 27 matchings, which changed the people found. So the steps are replayed here
    (our own numpy code, vectorised per step), including the package's scan orders:

    1. subtract each row's minimum; 2. star the first zero of each row (row-major) whose column
    has no star yet; 3. cover the starred columns, done when all are covered; 4. find an
    uncovered zero -- the first row holding one, scanning rows cyclically from the last primed
    row, and in it the *last* one scanning columns cyclically from the last starred column -- and
    prime it; if its row has a star, cover the row, uncover the star's column and repeat, else go
    to 5; no uncovered zero: go to 6; 5. flip the alternating prime/star path (first star in the
    column, first prime in the row), clear covers and primes, back to 3; 6. add the smallest
    uncovered value to covered rows, then subtract it from uncovered columns (two float64 steps,
    as upstream), back to 4.

    Args:
        cost: ``(n_rows, n_cols)`` float costs; fewer rows than columns are padded with zero rows
            (as the package does), more rows than columns must be padded by the caller.

    Returns:
        ``(rows, cols)`` int64, rows ascending, one entry per original row.

    Raises:
        ValueError: more rows than columns or non-finite costs.
    """
    c = np.array(cost, dtype=np.float64)
    n_rows, n_cols = c.shape
    if n_rows > n_cols:
        raise ValueError(f"munkres_assignment needs rows <= columns, got {c.shape}")
    if not np.isfinite(c).all():
        raise ValueError("costs must be finite")
    n = n_cols
    if n_rows < n:
        c = np.concatenate([c, np.zeros((n - n_rows, n))])
    c -= c.min(axis=1, keepdims=True)
    star_col = np.full(n, -1, np.int64)  # per row: column of its star (-1: none)
    col_has_star = np.zeros(n, bool)
    for i in range(n):
        free = np.flatnonzero((c[i] == 0) & ~col_has_star)
        if len(free):
            star_col[i] = free[0]
            col_has_star[free[0]] = True
    prime_col = np.full(n, -1, np.int64)
    row_cov = np.zeros(n, bool)
    col_cov = np.zeros(n, bool)
    while True:
        # step 3
        col_cov[:] = False
        col_cov[star_col[star_col >= 0]] = True
        if col_cov.sum() >= n:
            break
        row, col = 0, 0
        while True:  # step 4 (with step 6 whenever no uncovered zero is left)
            zeros = (c == 0) & ~row_cov[:, None] & ~col_cov[None, :]
            rows_any = np.flatnonzero(zeros.any(axis=1))
            if len(rows_any) == 0:
                m = c[~row_cov][:, ~col_cov].min()
                c[row_cov] += m
                c[:, ~col_cov] -= m
                row, col = 0, 0  # step 4 starts over from (0, 0)
                continue
            r = rows_any[np.argmin((rows_any - row) % n)]
            cols_z = np.flatnonzero(zeros[r])
            zc = cols_z[np.argmax((cols_z - col) % n)]
            prime_col[r] = zc
            if star_col[r] >= 0:
                row, col = r, star_col[r]
                row_cov[r] = True
                col_cov[col] = False
                continue
            # step 5: alternating path from the prime at (r, zc)
            path_r, path_c = [r], [zc]
            while True:
                s_rows = np.flatnonzero(star_col == path_c[-1])
                if len(s_rows) == 0:
                    break
                path_r.append(s_rows[0])
                path_c.append(path_c[-1])
                path_r.append(s_rows[0])
                path_c.append(prime_col[s_rows[0]])
            for k, (pr, pc) in enumerate(zip(path_r, path_c)):
                if k % 2 == 0:  # primes become stars (stars of the path are replaced)
                    star_col[pr] = pc
            prime_col[:] = -1
            row_cov[:] = False
            break
    rows = np.arange(n_rows)
    return rows, star_col[:n_rows].copy()


def match_by_tag(
    val_k: np.ndarray,
    loc_k: np.ndarray,
    tag_k: np.ndarray,
    counts: np.ndarray,
    params: BottomUpSpec,
    solver: str = "munkres",
) -> np.ndarray:
    """Group candidates into people, HigherHRNet's ``match_by_tag`` (vectorised per joint).

    For each joint in ``params.grouping_order()``: its candidates (the first ``counts[j]``
    entries) start
    one person each if nobody exists yet; otherwise the cost of candidate ``i`` joining person
    ``g`` is ``round(|tag_i - mean_tag_g|) * 100 - value_i`` (``use_detection_val``; the plain
    distance otherwise), padded with 1e10 columns to a square when there are more candidates than
    people, and solved by :func:`munkres_assignment` (upstream's choice among equal-cost optima)
    or, with ``solver="scipy"``, ``scipy.optimize.linear_sum_assignment``. Candidate ``i`` joins its assigned person when
    the (unrounded) distance is below ``tag_threshold``; otherwise it starts a person. Only the
    first ``max_num_people`` people (in creation order) take part in matching, and with
    ``ignore_too_much`` a joint is skipped once there are that many (as the HigherHRNet repo;
    MMPose 0.x matches against all people unless ``ignore_too_much``). People are keyed by the
    first tag value of their first joint, as upstream's dict: a new person whose key equals an
    existing person's replaces that person's joint and restarts its tag list.

    Args:
        val_k, loc_k, tag_k, counts: from :func:`top_k_candidates`.
        params: the card's grouping parameters (:class:`service.cards.BottomUpSpec`).
        solver: ``"munkres"`` (default, upstream's tie choices) or ``"scipy"``.

    Returns:
        ``(P, K, 3 + L)`` float32 in creation order: per joint ``x, y`` (integer heatmap pixels),
        value, tags; missing joints are all zero.

    Raises:
        ValueError: unknown ``solver`` or a bad ``joint_order``.
    """
    if solver not in ("munkres", "scipy"):
        raise ValueError(f"solver must be 'munkres' or 'scipy', got {solver!r}")
    solve = munkres_assignment if solver == "munkres" else linear_sum_assignment
    order = params.grouping_order()
    k, m, n_tag = tag_k.shape
    width = 3 + n_tag
    cand = np.concatenate(
        [loc_k.astype(np.float64), val_k[..., None].astype(np.float64), tag_k.astype(np.float64)],
        axis=2,
    )  # (K, M, 3 + L) like upstream
    people = np.zeros((0, k, width), np.float32)
    tag_sum = np.zeros((0, n_tag), np.float32)
    tag_cnt = np.zeros((0,), np.float32)
    keys: dict[float, int] = {}  # upstream's dict key (first tag value) -> person index

    def add(joint: int, r: int) -> None:
        """Upstream's ``joint_dict.setdefault(key, ...)[joint] = row; tag_dict[key] = [tag]``."""
        nonlocal people, tag_sum, tag_cnt
        key = float(tag_k[joint, r, 0])
        g = keys.get(key)
        if g is None:
            keys[key] = g = len(people)
            people = np.concatenate([people, np.zeros((1, k, width), np.float32)])
            tag_sum = np.concatenate([tag_sum, np.zeros((1, n_tag), np.float32)])
            tag_cnt = np.concatenate([tag_cnt, np.zeros(1, np.float32)])
        people[g, joint] = cand[joint, r]
        tag_sum[g] = tag_k[joint, r]
        tag_cnt[g] = 1

    def start(joint: int, rows: np.ndarray) -> bool:
        """Start one person per row (in row order), vectorised; False (nothing done) when a key
        collides with an existing person or another row, which needs upstream's row-order loop."""
        nonlocal people, tag_sum, tag_cnt
        new_keys = [float(v) for v in tag_k[joint, rows, 0]]
        if len(set(new_keys)) != len(new_keys) or any(key in keys for key in new_keys):
            return False
        for key in new_keys:
            keys[key] = len(keys)
        block = np.zeros((len(rows), k, width), np.float32)
        block[:, joint] = cand[joint, rows]
        people = np.concatenate([people, block])
        tag_sum = np.concatenate([tag_sum, tag_k[joint, rows]])
        tag_cnt = np.concatenate([tag_cnt, np.ones(len(rows), np.float32)])
        return True

    for i, joint in enumerate(order):
        n = int(counts[joint])
        if n == 0:
            continue
        if i == 0 or len(keys) == 0:
            if not start(joint, np.arange(n)):
                for r in range(n):
                    add(joint, r)
            continue
        n_grouped = min(len(people), params.max_num_people)
        if params.ignore_too_much and n_grouped == params.max_num_people:
            continue
        mean_tags = _mean_f32(tag_sum[:n_grouped], tag_cnt[:n_grouped, None])
        diff = cand[joint, :n, None, 3:] - mean_tags[None].astype(np.float64)
        dist = np.sqrt(np.add.reduce(diff * diff, axis=2))  # np.linalg.norm(ord=2, axis=2)
        cost = np.round(dist) * 100 - cand[joint, :n, 2:3] if params.use_detection_val else dist
        if n > n_grouped:
            cost = np.concatenate([cost, np.full((n, n - n_grouped), 1e10)], axis=1)
        rows, cols = solve(cost)
        col_of = np.empty(n, np.int64)
        col_of[rows] = cols
        joined = col_of < n_grouped
        joined[joined] = dist[np.flatnonzero(joined), col_of[joined]] < params.tag_threshold
        unjoined = np.flatnonzero(~joined)
        new_keys = {float(v) for v in tag_k[joint, unjoined, 0]}
        if len(new_keys) == len(unjoined) and not any(key in keys for key in new_keys):
            r = np.flatnonzero(joined)
            g = col_of[joined]
            people[g, joint] = cand[joint, r]
            tag_sum[g] += tag_k[joint, r]
            tag_cnt[g] += 1
            start(joint, unjoined)
            continue
        for r in range(n):  # a key collision: upstream's row-order loop, person by person
            if joined[r]:
                g = int(col_of[r])
                people[g, joint] = cand[joint, r]
                tag_sum[g] += tag_k[joint, r]
                tag_cnt[g] += 1
            else:
                add(joint, r)
    return people


def _mean_f32(total: np.ndarray, count: np.ndarray) -> np.ndarray:
    """``total / count`` as ``np.mean`` finishes a float32 mean: divided in float64, cast to float32."""
    return (total.astype(np.float64) / count).astype(np.float32)


def _quarter_offsets(
    heatmaps: np.ndarray, joint: np.ndarray, x: np.ndarray, y: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``+0.25`` where the right (lower) neighbour is higher than the left (upper), else ``-0.25``.

    Neighbours are clamped to the map (so at the border a pixel compares with itself: -0.25).
    """
    _, h, w = heatmaps.shape
    right = heatmaps[joint, y, np.minimum(x + 1, w - 1)]
    left = heatmaps[joint, y, np.maximum(x - 1, 0)]
    down = heatmaps[joint, np.minimum(y + 1, h - 1), x]
    up = heatmaps[joint, np.maximum(y - 1, 0), x]
    q = np.float32(0.25)
    return np.where(right > left, q, -q), np.where(down > up, q, -q)


def adjust_people(people: np.ndarray, heatmaps: np.ndarray) -> np.ndarray:
    """Quarter-pixel refinement of found joints, upstream ``HeatmapParser.adjust``.

    For each joint with value > 0 at integer ``(x, y)``: ``x += 0.25`` if ``hm[y, x+1] > hm[y, x-1]``
    else ``x -= 0.25`` (same for y; neighbours clamped to the map), then ``+0.5`` on both.

    Args:
        people: ``(P, K, 3 + L)`` from :func:`match_by_tag`.
        heatmaps: ``(K, H, W)`` aggregated heatmaps.

    Returns:
        New ``(P, K, 3 + L)`` float32 array.
    """
    out = np.array(people, dtype=np.float32, copy=True)
    p, j = np.nonzero(out[..., 2] > 0)
    x = out[p, j, 0].astype(np.int64)
    y = out[p, j, 1].astype(np.int64)
    dx, dy = _quarter_offsets(heatmaps, j, x, y)
    out[p, j, 0] += dx + np.float32(0.5)
    out[p, j, 1] += dy + np.float32(0.5)
    return out


def _person_mean_tags(people: np.ndarray, tags: np.ndarray) -> np.ndarray:
    """``(P, L)`` float32 mean tag of each person's found joints, looked up in the tag maps at
    ``int(x), int(y)`` (clamped), summed in joint index order (upstream ``refine``'s ``prev_tag``)."""
    p_n, k, _ = people.shape
    _, h, w, n_tag = tags.shape
    found = people[..., 2] > 0
    x = np.clip(people[..., 0].astype(np.int64), 0, w - 1)
    y = np.clip(people[..., 1].astype(np.int64), 0, h - 1)
    joint = np.broadcast_to(np.arange(k) if tags.shape[0] == k else np.zeros(k, np.int64), (p_n, k))
    t = np.where(found[..., None], tags[joint, y, x], np.float32(0))  # (P, K, L)
    total = np.zeros((p_n, n_tag), np.float32)
    for j in range(k):  # sequential float32 sum in joint order
        total += t[:, j]
    return _mean_f32(total, found.sum(axis=1)[:, None])


def refine_people(
    people: np.ndarray,
    heatmaps: np.ndarray,
    tags: np.ndarray,
    pooled: np.ndarray | None = None,
    kernel: int = 5,
) -> np.ndarray:
    """Fill missing joints from the heatmaps near each person's mean tag, upstream ``refine``.

    For person ``p`` with mean tag ``t_p`` (:func:`_person_mean_tags`) and a missing joint ``k``
    (value 0): the pixel maximising ``hm_k - round(|tag_k - t_p|)`` (float32, numpy's half-to-even
    ``round``; the first such pixel in row-major order), its value ``v``; if ``v > 0`` the joint
    becomes ``(x + 0.5 ± 0.25, y + 0.5 ± 0.25, v)`` (quarter offsets as :func:`adjust_people`).
    Tags of the joint are left as they were (zero), as upstream.

    Vectorised over people (per joint, all people missing it at once) without copying maps, and
    exact without scanning every pixel: a pixel's score never exceeds its heatmap value
    (``round(|.|) >= 0``), so the map is cut into ``kernel`` x ``kernel`` blocks whose maxima
    (read off ``pooled`` at the block centres) bound every score inside. The blocks reaching the
    64th largest block maximum are scored first; then, for the people whose best score so far
    still leaves at most a quarter of the blocks in play, every block whose maximum reaches the
    smallest of those scores; the other people get one chunked scan of the whole map. No skipped
    pixel can reach a best score, ties included, so the answer equals a scan of the whole map
    (``tests/service/test_associative_embedding.py`` checks it against one). A person whose tag
    matches nothing strong (a one-joint person made of background) costs a full scan, as upstream.

    Args:
        people: ``(P, K, 3 + L)`` float32 (after :func:`adjust_people`).
        heatmaps: ``(K, H, W)`` float32 aggregated heatmaps.
        tags: ``(K or 1, H, W, L)`` float32 tag maps.
        pooled: :func:`max_pool` of ``heatmaps`` with ``kernel`` (computed if None).
        kernel: odd window size of ``pooled`` (the NMS kernel).

    Returns:
        New ``(P, K, 3 + L)`` float32 array.
    """
    out = np.array(people, dtype=np.float32, copy=True)
    if out.shape[0] == 0:
        return out
    k, h, w = heatmaps.shape
    if pooled is None:
        pooled = max_pool(heatmaps, kernel)
    half = kernel // 2
    cy = np.minimum(np.arange(half, h + half, kernel), h - 1)  # block centres (clipped)
    cx = np.minimum(np.arange(half, w + half, kernel), w - 1)
    block_max = pooled[:, cy][:, :, cx].reshape(k, -1)  # (K, n_blocks) upper bounds
    win_y, win_x = np.divmod(np.arange(kernel * kernel), kernel)
    origin_y = np.repeat(cy - half, len(cx))
    origin_x = np.tile(cx - half, len(cy))
    n_tag = tags.shape[-1]
    mean_tags = _person_mean_tags(out, tags)  # (P, L)
    missing = out[..., 2] == 0  # (P, K)
    hm_flat = heatmaps.reshape(k, h * w)
    tag_flat = tags.reshape(tags.shape[0], h * w, n_tag)

    def block_pixels(blocks: np.ndarray) -> np.ndarray:
        """Flat indices of the pixels of these blocks' windows (inside the map)."""
        ys = (origin_y[blocks, None] + win_y[None]).reshape(-1)
        xs = (origin_x[blocks, None] + win_x[None]).reshape(-1)
        inside = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
        return ys[inside] * w + xs[inside]

    for j in np.flatnonzero(missing.any(axis=0)):
        who = np.flatnonzero(missing[:, j])
        bm = block_max[j]
        tag_j = tag_flat[j if tags.shape[0] == k else 0]
        first = bm >= (np.partition(bm, len(bm) - 64)[len(bm) - 64] if len(bm) > 64 else -np.inf)
        best_val, best_idx = _refine_best(
            hm_flat[j], tag_j, mean_tags[who], block_pixels(np.flatnonzero(first))
        )
        # people whose bound still admits many blocks are cheaper with one scan of the map
        scan = (bm[None, :] >= best_val[:, None]).sum(axis=1) > len(bm) // 4
        if scan.any():
            best_idx[scan] = _refine_scan(hm_flat[j], tag_j, mean_tags[who[scan]])
        if (~scan).any():
            rest = np.flatnonzero(~first & (bm >= best_val[~scan].min()))
            if len(rest):
                v2, i2 = _refine_best(hm_flat[j], tag_j, mean_tags[who[~scan]], block_pixels(rest))
                v1, i1 = best_val[~scan], best_idx[~scan]
                best_idx[~scan] = np.where((v2 > v1) | ((v2 == v1) & (i2 < i1)), i2, i1)
        val = hm_flat[j, best_idx]
        bx, by = best_idx % w, best_idx // w
        dx, dy = _quarter_offsets(heatmaps, np.full(len(who), j), bx, by)
        ok = val > 0
        who, bx, by, dx, dy, val = who[ok], bx[ok], by[ok], dx[ok], dy[ok], val[ok]
        out[who, j, 0] = bx.astype(np.float32) + np.float32(0.5) + dx
        out[who, j, 1] = by.astype(np.float32) + np.float32(0.5) + dy
        out[who, j, 2] = val
    return out


def _refine_scores(hm: np.ndarray, tag: np.ndarray, mean_tags: np.ndarray) -> np.ndarray:
    """``(P, N)`` float32 ``hm - round(|tag - mean_tag|)`` for ``N`` pixels (upstream's float32
    order: squared differences summed over the tag axis, square root, round)."""
    sq = np.zeros((len(mean_tags), hm.shape[0]), np.float32)
    for lt in range(tag.shape[1]):
        d = tag[None, :, lt] - mean_tags[:, lt, None]
        sq += d * d
    return hm[None] - np.round(np.sqrt(sq))


#: People x pixels scored at once by :func:`_refine_scan`.
_SCAN_CHUNK = 1 << 21


def _refine_scan(hm: np.ndarray, tag: np.ndarray, mean_tags: np.ndarray) -> np.ndarray:
    """Per person, the first flat index of the best refine score over the whole map, scanned in
    contiguous chunks (an earlier chunk keeps a tie)."""
    n = hm.shape[0]
    step = max(1, _SCAN_CHUNK // max(len(mean_tags), 1))
    best_val = np.full(len(mean_tags), -np.inf, np.float32)
    best_idx = np.zeros(len(mean_tags), np.int64)
    rows = np.arange(len(mean_tags))
    for start in range(0, n, step):
        sc = _refine_scores(hm[start : start + step], tag[start : start + step], mean_tags)
        i = sc.argmax(axis=1)
        v = sc[rows, i]
        better = v > best_val
        best_val[better] = v[better]
        best_idx[better] = i[better] + start
    return best_idx


def _refine_best(
    hm: np.ndarray, tag: np.ndarray, mean_tags: np.ndarray, pix: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per person, the best refine score over the flat pixel indices ``pix`` and the smallest
    index reaching it: ``((P,) float32, (P,) int64)``."""
    sc = _refine_scores(hm[pix], tag[pix], mean_tags)
    best = sc.max(axis=1)
    idx = np.where(sc == best[:, None], pix[None, :], np.iinfo(np.int64).max).min(axis=1)
    return best, idx


def group_people(heatmaps: np.ndarray, tags: np.ndarray, params: BottomUpSpec) -> GroupedPeople:
    """Candidates, grouping, adjust, scores and refine: upstream ``HeatmapParser.parse``.

    Args:
        heatmaps: ``(K, H, W)`` float32 aggregated heatmaps (:func:`aggregate_outputs`).
        tags: ``(K or 1, H, W, L)`` float32 tag maps.
        params: the card's :class:`service.cards.BottomUpSpec` (``adjust`` / ``refine`` switch
            those steps).

    Returns:
        :class:`GroupedPeople` in heatmap space; scores are computed after adjust and before
        refine, as upstream.

    Raises:
        ValueError: bad shapes or parameters.
    """
    heatmaps = np.ascontiguousarray(heatmaps, dtype=np.float32)
    tags = np.ascontiguousarray(tags, dtype=np.float32)
    pooled = max_pool(heatmaps, params.nms_kernel)
    people = match_by_tag(*top_k_candidates(heatmaps, tags, params, pooled), params)
    if params.adjust:
        people = adjust_people(people, heatmaps)
    scores = people[..., 2].mean(axis=1) if len(people) else np.zeros((0,), np.float32)
    if params.refine:
        people = refine_people(people, heatmaps, tags, pooled, params.nms_kernel)
    return GroupedPeople(people, scores.astype(np.float32))


def people_to_image(
    keypoints: np.ndarray, center, scale, heatmap_size: tuple[int, int]
) -> np.ndarray:
    """Heatmap-space keypoints -> image pixels, upstream ``get_final_preds`` / ``transform_preds``.

    Applies the inverse of the resize warp (:func:`service.geometry.get_bottomup_warp_matrix` with
    ``inv=True``) to every joint, found or not, as upstream.

    Args:
        keypoints: ``(P, K, 2)`` heatmap pixels.
        center, scale: ``(2,)`` image pixels from :func:`service.geometry.get_multi_scale_size`.
        heatmap_size: ``(w, h)`` of the aggregated heatmaps.

    Returns:
        ``(P, K, 2)`` float32 image pixels.
    """
    kp = np.asarray(keypoints, dtype=np.float64)
    m = get_bottomup_warp_matrix(center, scale, heatmap_size, inv=True)
    return affine_transform_points(kp, m).astype(np.float32)
