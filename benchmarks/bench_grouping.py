"""Bottom-up grouping speed: ``python -m benchmarks.bench_grouping``.

Per photo of the shared COCO sets (``mmpose_tests/coco`` and ``coco_mini``), HigherHRNet-shaped
network outputs at the photo's real input size (``bottomup.input_size`` short side, sides rounded
up to multiples of 64; stages at 1/4 with heatmaps + tags and 1/2 with heatmaps, flip test on)
go through the associative-embedding decode of :mod:`service.codecs.associative_embedding`. The
outputs are synthetic but shaped like a trained model's (:func:`synthetic_outputs`): a Gaussian
per labelled keypoint of the photo's annotated people (random people where a photo has no
keypoint labels), one tag value per person near its joints and smooth noise elsewhere, background
noise and false peaks that become extra candidates and one-joint people, some joints too weak to
be detected so that ``refine`` has work. With ``--onnx MODEL`` a real exported model supplies the
outputs instead and its run time is reported as network ms.

Reported per photo, all measured in the same run: network ms (``--onnx``), aggregation ms,
peaks + top-k ms, grouping + refine ms of ours (``match_by_tag`` + ``adjust_people`` +
``refine_people``, best of ``--repeat``) against :func:`loop_group`, a straightforward
person-by-person loop implementation of the same algorithm (upstream's structure with numpy per
person; best of ``--repeat-baseline``), the people found and whether both found the same people.
Goal: grouping + refine <= 5 ms per image on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import cv2
import numpy as np

from export.paths import default_shared_dir
from service.cards import BottomUpSpec
from service.codecs.associative_embedding import (
    ScaleOutputs,
    adjust_people,
    aggregate_outputs,
    match_by_tag,
    max_pool,
    munkres_assignment,
    people_to_image,
    refine_people,
    top_k_candidates,
)
from service.datasets.coco import COCO
from service.geometry import affine_transform_points, get_bottomup_warp_matrix, get_multi_scale_size

T = TypeVar("T")

STAGE_STRIDES = (4, 2)  # HigherHRNet: 1/4 (heatmaps + tags), 1/2 (heatmaps)


# ----------------------------------------------------------------------------- synthetic outputs


def _gaussian_splat(
    maps: np.ndarray, ch: int, x: float, y: float, amp: float, sigma: float
) -> None:
    """``maps[ch] = max(maps[ch], amp * exp(-d^2 / 2 sigma^2))`` within 3 sigma of ``(x, y)``."""
    _, h, w = maps.shape
    r = int(3 * sigma) + 1
    x0, x1 = max(int(x) - r, 0), min(int(x) + r + 1, w)
    y0, y1 = max(int(y) - r, 0), min(int(y) + r + 1, h)
    if x0 >= x1 or y0 >= y1:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1]
    g = amp * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma * sigma))
    np.maximum(maps[ch, y0:y1, x0:x1], g.astype(np.float32), out=maps[ch, y0:y1, x0:x1])


def _smooth_noise(
    rng: np.random.Generator, shape: tuple[int, int, int], cell: int, spread: float
) -> np.ndarray:
    c, h, w = shape
    coarse = rng.normal(0, spread, (c, max(h // cell, 2), max(w // cell, 2))).astype(np.float32)
    return np.stack([cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR) for m in coarse])


def synthetic_people(
    rng: np.random.Generator, image_wh: tuple[int, int], n: int, num_joints: int = 17
) -> np.ndarray:
    """``(n, K, 3)`` random upright people (x, y, visibility 2) inside the image, image pixels."""
    w, h = image_wh
    # a rough COCO skeleton in units of person height, origin at the hips' midpoint
    template = np.array(
        [
            [0, -0.42],
            [-0.03, -0.45],
            [0.03, -0.45],
            [-0.06, -0.43],
            [0.06, -0.43],
            [-0.12, -0.3],
            [0.12, -0.3],
            [-0.16, -0.15],
            [0.16, -0.15],
            [-0.18, -0.02],
            [0.18, -0.02],
            [-0.08, 0.0],
            [0.08, 0.0],
            [-0.08, 0.25],
            [0.08, 0.25],
            [-0.08, 0.48],
            [0.08, 0.48],
        ]
    )[:num_joints]
    people = np.zeros((n, num_joints, 3))
    for p in range(n):
        height = rng.uniform(0.25, 0.8) * h
        cx, cy = rng.uniform(0.15, 0.85) * w, rng.uniform(0.35, 0.6) * h
        jitter = rng.normal(0, 0.02, template.shape)
        people[p, :, :2] = (template + jitter) * height + (cx, cy)
        people[p, :, 2] = 2
    return people


def synthetic_outputs(
    rng: np.random.Generator,
    people: np.ndarray,
    image_wh: tuple[int, int],
    input_size: int,
    scale: float,
    min_scale: float,
    flip_indices: Sequence[int],
    *,
    weak_fraction: float = 0.1,
    false_peaks: int = 3,
    sigma: float = 2.0,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """HigherHRNet-shaped outputs of one test scale for the plain and the flipped input.

    Args:
        people: ``(P, K, 3)`` keypoints in image pixels with COCO visibility (0 = unlabelled).
        image_wh, input_size, scale, min_scale: as :func:`service.geometry.get_multi_scale_size`.
        flip_indices: the mirror permutation; the flipped input's outputs carry joint ``k`` of a
            mirrored person in channel ``flip_indices[k]``.
        weak_fraction: share of labelled joints drawn below the detection threshold (0.03-0.09).
        false_peaks: per joint and stage, extra blobs (0.1-0.35) with background tags.

    Returns:
        ``(plain, flipped)``: each ``[(2K, H/4, W/4), (K, H/2, W/2)]`` float32 (batch axis removed).
    """
    k = people.shape[1]
    (w_in, h_in), center, sc = get_multi_scale_size(image_wh, input_size, scale, min_scale)
    m = get_bottomup_warp_matrix(center, sc, (w_in, h_in))
    xy_in = affine_transform_points(people[..., :2], m)
    labelled = people[..., 2] > 0
    amp = np.where(
        rng.random(labelled.shape) < weak_fraction,
        rng.uniform(0.03, 0.09, labelled.shape),
        rng.uniform(0.35, 1.0, labelled.shape),
    )
    spacing = 1.6
    person_tags = (np.arange(len(people)) - len(people) / 2) * spacing + rng.normal(
        0, 0.1, len(people)
    )
    rng.shuffle(person_tags)
    flip = np.asarray(flip_indices)
    results = []
    for mirrored in (False, True):
        outs = []
        for stage, stride in enumerate(STAGE_STRIDES):
            hs, ws = h_in // stride, w_in // stride
            hm = rng.uniform(-0.01, 0.04, (k, hs, ws)).astype(np.float32)
            tags = _smooth_noise(rng, (k, hs, ws), 16, 2.0) if stage == 0 else None
            for p in range(len(people)):
                for j in range(k):
                    if not labelled[p, j]:
                        continue
                    x, y = xy_in[p, j] / stride
                    ch = flip[j] if mirrored else j
                    if mirrored:
                        x = ws - 1 - x
                    _gaussian_splat(hm, ch, x, y, amp[p, j] * rng.uniform(0.9, 1.1), sigma)
                    if tags is not None:
                        r = int(3 * sigma)
                        xi, yi = int(round(x)), int(round(y))
                        y0, y1, x0, x1 = (
                            max(yi - r, 0),
                            min(yi + r + 1, hs),
                            max(xi - r, 0),
                            min(xi + r + 1, ws),
                        )
                        if y0 < y1 and x0 < x1:
                            tags[ch, y0:y1, x0:x1] = person_tags[p] + rng.normal(
                                0, 0.08, (y1 - y0, x1 - x0)
                            )
            for j in range(k):
                for _ in range(false_peaks):
                    _gaussian_splat(
                        hm, j, rng.uniform(0, ws), rng.uniform(0, hs), rng.uniform(0.1, 0.35), sigma
                    )
            outs.append(np.concatenate([hm, tags]) if tags is not None else hm)
        results.append(outs)
    return results[0], results[1]


# ----------------------------------------------------------------------------- the baseline


def loop_group(
    heatmaps: np.ndarray, tags: np.ndarray, params: BottomUpSpec
) -> tuple[np.ndarray, np.ndarray]:
    """The same grouping, adjust, scoring and refine as ours, written person by person.

    Upstream's structure (``HeatmapParser.match`` / ``adjust`` / ``refine``) in plain numpy with
    the same assignment solver (:func:`munkres_assignment`): a dict of people, a Python loop over
    candidates, joints and people, and refine computing each person's score map over the whole
    heatmap for each of its missing joints (upstream computes it for all K joints). Used as the speed
    baseline and as a second, independent implementation to compare people with.

    Returns:
        ``(people (P, K, 3 + L) float32, scores (P,) float32)`` as
        :func:`service.codecs.associative_embedding.group_people`.
    """
    val_k, loc_k, tag_k, counts = top_k_candidates(heatmaps, tags, params)
    k, h, w = heatmaps.shape
    n_tag = tags.shape[-1]
    joint_dict: dict[float, np.ndarray] = {}
    tag_dict: dict[float, list] = {}
    for i, idx in enumerate(params.grouping_order()):
        n = int(counts[idx])
        joints = np.concatenate([loc_k[idx, :n], val_k[idx, :n, None], tag_k[idx, :n]], 1)
        if n == 0:
            continue
        if i == 0 or not joint_dict:
            for r in range(n):
                key = float(tag_k[idx, r, 0])
                joint_dict.setdefault(key, np.zeros((k, 3 + n_tag), np.float32))[idx] = joints[r]
                tag_dict[key] = [tag_k[idx, r]]
            continue
        keys = list(joint_dict)[: params.max_num_people]
        if params.ignore_too_much and len(keys) == params.max_num_people:
            continue
        grouped = np.array([np.mean(tag_dict[key], axis=0) for key in keys])
        dist = np.linalg.norm(joints[:, None, 3:] - grouped[None], ord=2, axis=2)
        cost = np.round(dist) * 100 - joints[:, 2:3] if params.use_detection_val else dist.copy()
        if n > len(keys):
            cost = np.concatenate([cost, np.full((n, n - len(keys)), 1e10)], axis=1)
        for row, col in zip(*munkres_assignment(cost)):
            if col < len(keys) and dist[row, col] < params.tag_threshold:
                joint_dict[keys[col]][idx] = joints[row]
                tag_dict[keys[col]].append(tag_k[idx, row])
            else:
                key = float(tag_k[idx, row, 0])
                joint_dict.setdefault(key, np.zeros((k, 3 + n_tag), np.float32))[idx] = joints[row]
                tag_dict[key] = [tag_k[idx, row]]
    people = [joint_dict[key] for key in joint_dict]

    def quarter(hm: np.ndarray, x: int, y: int) -> tuple[float, float]:
        dx = 0.25 if hm[y, min(x + 1, w - 1)] > hm[y, max(x - 1, 0)] else -0.25
        dy = 0.25 if hm[min(y + 1, h - 1), x] > hm[max(y - 1, 0), x] else -0.25
        return dx, dy

    if params.adjust:
        for person in people:
            for j in range(k):
                if person[j, 2] > 0:
                    x, y = int(person[j, 0]), int(person[j, 1])
                    dx, dy = quarter(heatmaps[j], x, y)
                    person[j, 0] = x + dx + 0.5
                    person[j, 1] = y + dy + 0.5
    scores = np.array([person[:, 2].mean() for person in people], np.float32)
    if params.refine:
        for person in people:
            found = [
                tags[j if tags.shape[0] == k else 0, int(person[j, 1]), int(person[j, 0])]
                for j in range(k)
                if person[j, 2] > 0
            ]
            mean_tag = np.mean(found, axis=0)
            for j in range(k):
                if person[j, 2] > 0:
                    continue
                t = tags[j if tags.shape[0] == k else 0]
                score = heatmaps[j] - np.round(((t - mean_tag[None, None]) ** 2).sum(axis=2) ** 0.5)
                yy, xx = np.unravel_index(np.argmax(score), score.shape)
                if heatmaps[j, yy, xx] > 0:
                    dx, dy = quarter(heatmaps[j], int(xx), int(yy))
                    person[j, :3] = (xx + 0.5 + dx, yy + 0.5 + dy, heatmaps[j, yy, xx])
    out = np.array(people, np.float32).reshape(-1, k, 3 + n_tag)
    return out, scores


# ----------------------------------------------------------------------------- photos


def coco_photos(shared: Path) -> list[tuple[str, Path, int, np.ndarray]]:
    """``(annotation file, image path, image id, (P, 17, 3) annotated keypoints)`` of the shared
    COCO sets' photos (people with at least one labelled keypoint, not crowd)."""
    sets = [
        (shared / "data/mmpose_tests/coco/test_coco.json", shared / "data/mmpose_tests/coco"),
        (
            shared / "data/coco_mini/annotations/person_keypoints_train2017.json",
            shared / "data/coco_mini/train2017",
        ),
    ]
    photos = []
    for ann_file, img_dir in sets:
        if not ann_file.exists():
            continue
        data = json.loads(ann_file.read_text())
        kpts: dict[int, list] = {}
        for a in data["annotations"]:
            if a.get("num_keypoints", 0) > 0 and not a.get("iscrowd", 0):
                kpts.setdefault(a["image_id"], []).append(
                    np.array(a["keypoints"], float).reshape(-1, 3)
                )
        for im in sorted(data["images"], key=lambda im: im["file_name"]):
            path = img_dir / im["file_name"]
            if path.exists():
                people = np.array(kpts.get(im["id"], []), float).reshape(-1, 17, 3)
                photos.append((str(ann_file), path, im["id"], people))
    return photos


def _best_ms(fn: Callable[[], T], repeat: int) -> tuple[float, T]:
    """Best-of-``repeat`` wall time of ``fn()`` in ms, and its last result (``repeat`` >= 1)."""
    t = time.perf_counter()
    out = fn()
    best = (time.perf_counter() - t) * 1e3
    for _ in range(repeat - 1):
        t = time.perf_counter()
        out = fn()
        best = min(best, (time.perf_counter() - t) * 1e3)
    return best, out


def _network_outputs(session, image_bgr: np.ndarray, input_size: int) -> tuple[float, list, list]:
    """Run an exported model (batch 2: plain + flipped, the gateway's preprocessing with ImageNet
    mean/std on RGB); returns (ms, plain outputs, flipped outputs) in the graph's output order."""
    from service.cards import Normalization
    from service.geometry import resize_align_multi_scale
    from service.pipelines.common import to_input_tensor

    resized, _, _ = resize_align_multi_scale(image_bgr, input_size, 1.0, 1.0)
    x = to_input_tensor(
        resized[None], Normalization(mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375))
    )
    x = np.concatenate([x, np.ascontiguousarray(x[..., ::-1])])
    name = session.get_inputs()[0].name
    t = time.perf_counter()
    outs = session.run(None, {name: x})
    ms = (time.perf_counter() - t) * 1e3
    return ms, [o[0] for o in outs], [o[1] for o in outs]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared", type=Path, default=default_shared_dir())
    ap.add_argument("--input-size", type=int, default=512)
    ap.add_argument(
        "--onnx", type=Path, help="an exported HigherHRNet ONNX model (outputs per stage)"
    )
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--repeat-baseline", type=int, default=1)
    ap.add_argument("--limit", type=int, default=0, help="at most this many photos (0 = all)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    photos = coco_photos(args.shared)
    if args.limit:
        photos = photos[: args.limit]
    if not photos:
        print(f"no photos under {args.shared}/data", file=sys.stderr)
        return 2
    session = None
    if args.onnx:
        import onnxruntime as ort

        session = ort.InferenceSession(str(args.onnx), providers=["CPUExecutionProvider"])
    params = BottomUpSpec()
    rng = np.random.default_rng(args.seed)
    print(
        f"{'photo':<17} {'input':>9} {'net ms':>7} {'agg ms':>7} {'topk ms':>7} {'match ms':>8} "
        f"{'refine ms':>9} {'ours ms':>8} {'loop ms':>8} {'speedup':>7} {'people':>6} {'same':>4} "
        f"{'scipy same':>10}"
    )
    ours_all, loop_all, mismatches, scipy_diff = [], [], 0, 0
    by_solver: dict[str, dict[str, list]] = {"munkres": {}, "scipy": {}}
    for ann_file, path, image_id, annotated in photos:
        img = cv2.imread(str(path))
        if img is None:
            print(f"cannot read {path}", file=sys.stderr)
            return 2
        h, w = img.shape[:2]
        (w_in, h_in), center, scale = get_multi_scale_size((w, h), args.input_size, 1.0, 1.0)
        net_ms = float("nan")
        if session is not None:
            net_ms, plain, flipped = _network_outputs(session, img, args.input_size)
        else:
            people = (
                annotated
                if len(annotated)
                else synthetic_people(rng, (w, h), int(rng.integers(1, 4)))
            )
            plain, flipped = synthetic_outputs(
                rng, people, (w, h), args.input_size, 1.0, 1.0, COCO.flip_indices
            )
        agg_ms, (heatmaps, tags) = _best_ms(
            lambda: aggregate_outputs(
                [ScaleOutputs(1.0, plain, flipped)],
                num_joints=17,
                flip_indices=COCO.flip_indices,
                with_heatmaps=[True, True],
                with_ae=[True, False],
                base_size=(w_in, h_in),
            ),
            1,
        )

        def peaks() -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
            pooled = max_pool(heatmaps, params.nms_kernel)
            return pooled, top_k_candidates(heatmaps, tags, params, pooled)

        topk_ms, (pooled, cands) = _best_ms(peaks, args.repeat)
        match_ms, grouped = _best_ms(
            lambda: adjust_people(match_by_tag(*cands, params), heatmaps), args.repeat
        )
        refine_ms, refined = _best_ms(
            lambda: refine_people(grouped, heatmaps, tags, pooled), args.repeat
        )
        ours_ms = match_ms + refine_ms
        ours_scores = grouped[..., 2].mean(axis=1)
        loop_ms, (loop_people, loop_scores) = _best_ms(
            lambda: loop_group(heatmaps, tags, params), args.repeat_baseline
        )
        same = (
            refined.shape == loop_people.shape
            and np.array_equal(refined, loop_people)
            and np.array_equal(ours_scores, loop_scores)
        )
        scipy_people = refine_people(
            adjust_people(match_by_tag(*cands, params, solver="scipy"), heatmaps),
            heatmaps,
            tags,
            pooled,
        )
        scipy_same = scipy_people.shape == refined.shape and np.array_equal(scipy_people, refined)
        mismatches += not same
        scipy_diff += not scipy_same
        ours_all.append(ours_ms)
        loop_all.append(loop_ms)
        if len(annotated) and session is None:
            for solver, found in (("munkres", refined), ("scipy", scipy_people)):
                kp = people_to_image(found[..., :2], center, scale, (w_in, h_in))
                pred = np.concatenate([kp, found[..., 2:3]], axis=2)
                score = found[..., 2].mean(axis=1) if solver == "scipy" else ours_scores
                by_solver[solver].setdefault(ann_file, []).append((image_id, pred, score))
        print(
            f"{path.name[-16:]:<17} {w_in:>4}x{h_in:<4} {net_ms:>7.1f} {agg_ms:>7.1f} "
            f"{topk_ms:>7.2f} {match_ms:>8.2f} {refine_ms:>9.2f} {ours_ms:>8.2f} {loop_ms:>8.1f} "
            f"{loop_ms / ours_ms:>6.0f}x {len(refined):>6} {'yes' if same else 'NO':>4} "
            f"{'yes' if scipy_same else 'no':>10}"
        )
    print(
        f"\n{len(photos)} photos: grouping + refine ours median {statistics.median(ours_all):.2f} ms "
        f"(max {max(ours_all):.2f}), per-person loop median {statistics.median(loop_all):.1f} ms "
        f"(max {max(loop_all):.1f}); median speedup "
        f"{statistics.median(lp / o for lp, o in zip(loop_all, ours_all)):.0f}x; identical people "
        f"on {len(photos) - mismatches}/{len(photos)} photos; scipy's assignment changed the people "
        f"on {scipy_diff}/{len(photos)} photos"
    )
    for ann_file in by_solver["munkres"]:
        aps = {solver: _coco_ap(ann_file, by_solver[solver][ann_file]) for solver in by_solver}
        print(
            f"AP on {Path(ann_file).name} (synthetic outputs from its labels, person score = "
            f"mean joint value): munkres replay {aps['munkres']:.4f}, scipy {aps['scipy']:.4f}"
        )
    return 1 if mismatches else 0


def _coco_ap(ann_file: str, preds: list) -> float:
    """COCO keypoint AP of bottom-up predictions ``[(image_id, (P, K, 3), scores (P,))]`` on the
    images that have them (person score as the result score, OKS-NMS 0.9)."""
    from service.metrics import CocoKeypointEvaluator

    ev = CocoKeypointEvaluator(ann_file, COCO.sigmas, score_mode="bbox")
    for image_id, pred, score in preds:
        if len(pred):
            ev.add(image_id, pred, score)
    return ev.evaluate(image_ids=[p[0] for p in preds])["AP"]


if __name__ == "__main__":
    raise SystemExit(main())
