"""Metric implementations against hand-derived values (service.metrics)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from service.metrics import (
    CocoKeypointEvaluator,
    IoUAccumulator,
    horse10_metrics,
    intersect_and_union,
    mean_oks,
    nme,
    oks_iou,
    oks_nms,
    pck_accuracy,
    rescore,
    topdown_bbox_areas,
)
from tests.support.coco import COCO_SIGMAS

THRESHOLDS = np.linspace(0.5, 0.95, 10)


# ------------------------------------------------------------------------- segmentation


def test_miou_hand_computed_with_ignore_and_absent_class():
    # pixels (gt, pred): (0,0) (0,1) (1,1) (1,1) (2,0); the 255 pixel is ignored (pred 0 there
    # must not count); class 3 appears nowhere.
    gt = np.array([[0, 0, 1], [1, 255, 2]])
    pred = np.array([[0, 1, 1], [1, 0, 0]])
    counts = intersect_and_union(pred, gt, 4)
    # intersect / union / pred area / label area per class
    assert counts.tolist() == [[1, 2, 0, 0], [3, 3, 1, 0], [2, 3, 0, 0], [2, 2, 1, 0]]
    acc = IoUAccumulator(4, class_names=["a", "b", "c", "d"])
    acc.update(pred, gt)
    m = acc.compute()
    # IoU = 1/3, 2/3, 0, NaN -> mIoU = 1/3; Acc = 1/2, 1, 0, NaN -> 1/2; aAcc = 3/5
    assert m["mIoU"] == pytest.approx(33.33)
    assert m["mAcc"] == pytest.approx(50.0)
    assert m["aAcc"] == pytest.approx(60.0)
    assert m["IoU"]["a"] == pytest.approx(33.33) and m["IoU"]["b"] == pytest.approx(66.67)
    assert m["IoU"]["c"] == 0.0 and math.isnan(m["IoU"]["d"]) and math.isnan(m["Acc"]["d"])

    # a second image where class 3 is all right: totals are summed over the set, not averaged
    acc.update(np.full((2, 2), 3), np.full((2, 2), 3))
    m = acc.compute(round_digits=None)
    assert m["mIoU"] == pytest.approx(100 * (1 / 3 + 2 / 3 + 0 + 1) / 4)
    assert m["mAcc"] == pytest.approx(100 * (0.5 + 1 + 0 + 1) / 4)
    assert m["aAcc"] == pytest.approx(100 * 7 / 9)


def test_iou_out_of_range_prediction_counts_for_no_class():
    # gt class 0 everywhere, prediction 255 on one pixel: label area 2, pred area 1, inter 1
    acc = IoUAccumulator(2)
    acc.update(np.array([[255, 0]]), np.array([[0, 0]]))
    r = acc.compute()
    assert r["IoU"]["0"] == 50.0 and math.isnan(r["IoU"]["1"])
    assert r["mIoU"] == 50.0 and r["aAcc"] == 50.0


def test_iou_ground_truth_against_itself_is_100(shared):
    cv2 = pytest.importorskip("cv2")
    path = shared / "data/cityscapes_sample/frankfurt_000000_000294_gtFine_labelTrainIds.png"
    gt = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert gt is not None and gt.ndim == 2
    acc = IoUAccumulator(19)
    acc.update(gt, gt)
    m = acc.compute()
    assert m["aAcc"] == 100.0 and m["mIoU"] == 100.0 and m["mAcc"] == 100.0
    present = {int(c) for c in np.unique(gt) if c != 255}
    assert {int(k) for k, v in m["IoU"].items() if not math.isnan(v)} == present
    assert 0 < len(present) < 19


def test_iou_shape_mismatch_raises():
    with pytest.raises(ValueError):
        intersect_and_union(np.zeros((2, 2)), np.zeros((2, 3)), 3)


# ------------------------------------------------------------------------- OKS / NMS


def test_oks_iou_hand_case():
    sig = np.array([0.1, 0.2])
    g = np.array([[0.0, 0.0, 1.0], [5.0, 5.0, 0.0]])
    d = np.array([[[2.0, 0.0, 1.0], [5.0, 5.0, 1.0]]])
    # kp0: e = 4 / (2*0.1)^2 / 100 / 2 = 0.5 ; kp1: e = 0
    assert oks_iou(g, d, 100.0, np.array([100.0]), sig)[0] == pytest.approx(
        (math.exp(-0.5) + 1) / 2, abs=1e-6
    )
    # with a visibility threshold only kp0 (visible in both) counts
    assert oks_iou(g, d, 100.0, np.array([100.0]), sig, vis_thr=0.5)[0] == pytest.approx(
        math.exp(-0.5), abs=1e-6
    )
    # flat (K*3,) input layout is accepted too
    assert oks_iou(g.reshape(-1), d.reshape(1, -1), 100.0, [100.0], sig)[0] == pytest.approx(
        (math.exp(-0.5) + 1) / 2, abs=1e-6
    )


def _inst(shift, score, k=5, area=100.0):
    kp = np.zeros((k, 3))
    kp[:, 0] = np.arange(k) * 50.0 + shift
    kp[:, 2] = 1.0
    return {"keypoints": kp, "score": score, "area": area}


def test_oks_nms_keeps_by_score_and_threshold():
    sig = np.full(5, 0.1)
    # all keypoints moved by delta, equal areas 100: OKS = exp(-delta^2 / (2*100*0.04))
    close = math.sqrt(-math.log(0.95) * 8)  # OKS 0.95 > 0.9: suppressed
    apart = math.sqrt(-math.log(0.85) * 8)  # OKS 0.85 <= 0.9: kept
    far = 1000.0
    keep = oks_nms([_inst(0, 0.9), _inst(close, 0.8), _inst(far, 0.95)], 0.9, sig)
    assert keep.tolist() == [2, 0]
    keep = oks_nms([_inst(0, 0.9), _inst(apart, 0.8), _inst(far, 0.95)], 0.9, sig)
    assert keep.tolist() == [2, 0, 1]
    assert oks_nms([], 0.9, sig).tolist() == []


def test_rescore_mean_of_keypoint_scores_above_threshold():
    ks = np.array([[0.1, 0.2, 0.5, 0.9], [0.1, 0.2, 0.15, 0.0]], dtype=np.float32)
    out = rescore(np.array([0.5, 0.8]), ks)
    assert out[0] == pytest.approx(0.5 * (0.5 + 0.9) / 2, abs=1e-6)  # 0.2 itself is not > 0.2
    assert out[1] == 0.0  # no keypoint above 0.2 -> 0 (MMPose)
    assert rescore(1.0, np.array([0.3, 0.5], dtype=np.float32)) == pytest.approx(0.4)


def test_topdown_bbox_areas_padding_and_aspect():
    boxes = np.array([[0, 0, 100, 100], [10, 10, 40, 110]], dtype=np.float32)
    a = topdown_bbox_areas(boxes, (192, 256), 1.25)
    # 125x125 -> height raised to 125/0.75; 37.5x125 -> width raised to 125*0.75
    assert a[0] == pytest.approx(125 * 125 / 0.75, rel=1e-6)
    assert a[1] == pytest.approx(125 * 0.75 * 125, rel=1e-6)


def test_mean_oks_closed_form():
    k = 4
    sig = np.array([0.05, 0.1, 0.05, 0.1])
    gt = np.zeros((2, k, 2))
    area = np.array([400.0, 900.0])
    s = 0.8
    # per keypoint shift d_k = 2 sigma_k sqrt(-2 area ln s)  ->  every term equals s
    d = 2 * sig[None] * np.sqrt(-2 * area[:, None] * math.log(s))
    pred = gt.copy()
    pred[..., 1] += d
    vis = np.array([[2, 2, 0, 1], [0, 0, 0, 0]])  # person 2 has nothing labelled: skipped
    pred[0, 2] += 50.0  # unlabelled keypoint moved anywhere: not counted
    assert mean_oks(pred, gt, vis, area, sig) == pytest.approx(s, abs=1e-12)


# ------------------------------------------------------------------------- COCO AP


@pytest.fixture(scope="module")
def coco_gt(shared):
    path = shared / "data/mmpose_tests/coco/test_coco.json"
    data = json.loads(path.read_text())
    persons = sorted(
        (a for a in data["annotations"] if a["num_keypoints"] > 0), key=lambda a: a["id"]
    )
    return path, data, persons


def _shifted(ann, s):
    """GT keypoints moved along x so that every labelled keypoint's OKS term equals s."""
    kp = np.asarray(ann["keypoints"], dtype=np.float64).reshape(-1, 3)
    if s < 1:
        kp[:, 0] += 2 * COCO_SIGMAS * math.sqrt(-2 * ann["area"] * math.log(s))
    out = kp.copy()
    out[:, 2] = 1.0
    return out


def _run_eval(path, persons, s_of, score_of, coco_api="auto"):
    ev = CocoKeypointEvaluator(path, COCO_SIGMAS, coco_api=coco_api)
    for a in persons:
        ev.add(
            a["image_id"],
            _shifted(a, s_of(a))[None],
            [score_of(a)],
            areas=[a["area"]],
            ids=[a["id"]],
        )
    return ev.evaluate()


def _check_no_cross_match(persons, s_of):
    """Derivation precondition: a prediction's OKS with any other person's GT is < 0.5."""
    for p in persons:
        pk = _shifted(p, s_of(p))
        for g in persons:
            if g is p or g["image_id"] != p["image_id"]:
                continue
            gk = np.asarray(g["keypoints"], dtype=np.float64).reshape(-1, 3)
            v = gk[:, 2] > 0
            e = ((pk[:, :2] - gk[:, :2]) ** 2).sum(1) / (2 * COCO_SIGMAS) ** 2 / g["area"] / 2
            assert np.exp(-e[v]).mean() < 0.5


def test_coco_ap_ground_truth_as_prediction_is_one(coco_gt):
    path, _, persons = coco_gt
    assert len(persons) == 12
    m = _run_eval(path, persons, lambda a: 1.0, lambda a: 1.0)
    for k in ("AP", "AP50", "AP75", "AR", "AR50", "AR75"):
        assert m[k] == pytest.approx(1.0), k


def test_coco_ap_uniform_oks(coco_gt):
    # every person's OKS is exactly s = 0.72: matched at thresholds 0.50 ... 0.70 (5 of 10)
    path, _, persons = coco_gt
    s = 0.72
    _check_no_cross_match(persons, lambda a: s)
    m = _run_eval(path, persons, lambda a: s, lambda a: 1.0)
    n_below = int((THRESHOLDS <= s).sum())
    assert n_below == 5
    assert m["AP"] == pytest.approx(n_below / 10)
    assert m["AR"] == pytest.approx(n_below / 10)
    assert m["AP50"] == pytest.approx(1.0) and m["AR50"] == pytest.approx(1.0)
    assert m["AP75"] == pytest.approx(0.0) and m["AR75"] == pytest.approx(0.0)


@pytest.mark.parametrize("coco_api", ["xtcocotools", "pycocotools"])
def test_coco_ap_two_groups(coco_gt, coco_api):
    # 6 people with OKS 0.92 scored 0.9, 6 with OKS 0.62 scored 0.8. At a threshold t:
    #   t <= 0.62: all 12 match -> AP_t = 1, recall 1
    #   0.62 < t <= 0.92: the 6 best-scored match, the rest are false positives ranked after
    #     them -> precision 1 up to recall 0.5 = 51 of the 101 recall points, recall 0.5
    #   t = 0.95: nothing matches -> 0
    path, _, persons = coco_gt
    group_a = {a["id"] for a in persons[::2]}
    s_of = lambda a: 0.92 if a["id"] in group_a else 0.62  # noqa: E731
    score_of = lambda a: 0.9 if a["id"] in group_a else 0.8  # noqa: E731
    _check_no_cross_match(persons, s_of)
    try:
        m = _run_eval(path, persons, s_of, score_of, coco_api)
    except ImportError as exc:
        pytest.skip(f"{coco_api} not usable here: {exc}")
    assert m["AP"] == pytest.approx((3 * 1 + 6 * 51 / 101 + 0) / 10)
    assert m["AP50"] == pytest.approx(1.0)
    assert m["AP75"] == pytest.approx(51 / 101)
    assert m["AR"] == pytest.approx((3 * 1 + 6 * 0.5) / 10)
    assert m["AR75"] == pytest.approx(0.5)


def test_coco_evaluator_rescoring_nms_and_dedup(coco_gt):
    path, _, persons = coco_gt
    a = persons[0]
    kp = _shifted(a, 1.0)
    kp[:, 2] = np.linspace(0.1, 0.9, 17)  # scores > 0.2: 0.25 ... 0.9 (13 of them)
    ev = CocoKeypointEvaluator(path, COCO_SIGMAS)
    dup = kp.copy()
    dup[:, 0] += 0.01  # OKS ~1 with the first: suppressed by OKS-NMS (lower box score)
    ev.add(a["image_id"], np.stack([kp, dup]), [0.8, 0.5], areas=[1e4, 1e4], ids=[7, 8])
    ev.add(a["image_id"], kp[None], [0.8], areas=[1e4], ids=[7])  # repeated id: dropped
    res = ev.coco_results()
    assert len(res) == 1
    r = res[0]
    assert r["category_id"] == 1 and r["image_id"] == a["image_id"]
    assert len(r["keypoints"]) == 17 * 3
    above = kp[:, 2][kp[:, 2] > 0.2]
    assert r["score"] == pytest.approx(0.8 * above.mean(), abs=1e-6)
    ev_none = CocoKeypointEvaluator(path, COCO_SIGMAS, nms_mode="none")
    ev_none.add(a["image_id"], np.stack([kp, dup]), [0.8, 0.5], areas=[1e4, 1e4])
    assert len(ev_none.coco_results()) == 2


def test_coco_evaluator_rejects_bad_input(coco_gt):
    path, _, _ = coco_gt
    ev = CocoKeypointEvaluator(path, COCO_SIGMAS)
    with pytest.raises(ValueError):
        ev.add(785, np.zeros((1, 15, 3)), [1.0])  # 15 keypoints vs 17 sigmas
    with pytest.raises(ValueError):
        ev.evaluate()  # nothing added


# ------------------------------------------------------------------------- PCK / NME


def _pck_case():
    gt = np.zeros((3, 4, 2))
    pred = gt.copy()
    pred[0, 0] = (3, 4)  # 5 / 10 = 0.5
    pred[0, 1] = (0, 1)  # 0.1
    pred[1, 0] = (0, 2)  # 2 / 20 = 0.1
    pred[1, 1] = (12, 16)  # 20 / 20 = 1.0
    pred[1, 2] = (0, 0)  # 0
    pred[2] = 99.0  # instance with a zero norm factor: ignored entirely
    mask = np.array([[1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]], dtype=bool)
    norm = np.array([[10.0, 10.0], [20.0, 20.0], [0.0, 5.0]])
    return pred, gt, mask, norm


def test_pck_hand_case():
    pred, gt, mask, norm = _pck_case()
    acc, avg, cnt = pck_accuracy(pred, gt, mask, 0.3, norm)
    # kp0: 0.5 no, 0.1 yes -> 0.5; kp1: 0.1 yes, 1.0 no -> 0.5; kp2: 0 yes -> 1; kp3: never -> -1
    assert acc.tolist() == pytest.approx([0.5, 0.5, 1.0, -1.0])
    assert avg == pytest.approx(2 / 3) and cnt == 3
    assert norm[2, 0] == 0.0  # the caller's array is not modified


def test_nme_hand_case():
    pred, gt, mask, norm = _pck_case()
    assert nme(pred, gt, mask, norm) == pytest.approx((0.5 + 0.1 + 0.1 + 1.0 + 0.0) / 5)
    assert nme(pred, gt, np.zeros_like(mask), norm) == 0.0


def _horse10(shared):
    data = json.loads((shared / "data/mmpose_tests/horse10/test_horse10.json").read_text())
    kp = np.array([a["keypoints"] for a in data["annotations"]], dtype=np.float64).reshape(
        len(data["annotations"]), -1, 3
    )
    return kp[..., :2], kp[..., 2] > 0


def test_horse10_ground_truth_as_prediction(shared):
    gt, vis = _horse10(shared)
    assert gt.shape[1] == 22
    m = horse10_metrics(gt.copy(), gt, vis)
    assert m["PCK"] == 1.0 and m["NME"] == 0.0


@pytest.mark.parametrize("frac, pck", [(0.2, 1.0), (0.4, 0.0)])
def test_horse10_shift_relative_to_nose_eye_distance(shared, frac, pck):
    gt, vis = _horse10(shared)
    norm = np.hypot(*(gt[:, 0] - gt[:, 1]).T)  # nose-eye distance per horse
    assert (norm > 0).sum() == 2  # the third horse has no nose/eye: ignored upstream
    pred = gt.copy()
    pred[..., 0] += frac * norm[:, None]
    m = horse10_metrics(pred, gt, vis)
    assert m["PCK"] == pytest.approx(pck)
    assert m["NME"] == pytest.approx(frac, rel=1e-6)
