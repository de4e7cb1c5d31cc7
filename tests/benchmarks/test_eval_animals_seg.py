"""``hrnet-eval`` end to end through a live gateway on the animal-pose and Cityscapes samples.

The models are the fixed-seed random-weight exports of ``random_repo`` (Horse-10 22 keypoints,
ATRW 15, MacaquePose 17, fcn_hr18s Cityscapes 19 classes): their numbers are meaningless, so these
tests check the plumbing (exit codes, files, counts, ranges) and the metric *definitions*, by
recomputing them here with a few lines of numpy from the job's saved outputs and the ground
truth, and by feeding the job hand-made predictions (ground truth + known offsets) whose metrics
are known in closed form.

Metric definitions re-derived here (independently of ``service.metrics``):

* Horse-10 (MMPose 0.x ``AnimalHorse10Dataset._report_metric``, ``pck_thr=0.3``, the code that
  produced the model-zoo numbers): annotations whose keypoints are all 0 are dropped; a keypoint is
  evaluated when its visibility is > 0; distances are divided by the ground-truth nose(0)–eye(1)
  distance of the instance, and an instance whose factor is 0 is ignored entirely. PCK is the
  mean over keypoint *types* of each type's hit rate (types never evaluated left out); NME is the
  mean normalised distance over all evaluated (instance, keypoint) pairs.
* COCO-style OKS (xtcocotools / pycocotools ``computeOks``):
  ``mean_i exp(-d_i^2 / (2 * area * (2 sigma_i)^2))`` over labelled keypoints, ``area`` the
  annotation's.
* MMSeg ``IoUMetric``: per-class IoU = intersection / union over non-ignored (255) pixels, mIoU the
  mean over classes with a non-empty union, percent.
"""

from __future__ import annotations

import json
import math
import shutil

import cv2
import httpx
import numpy as np
import pytest

from benchmarks.eval import main as eval_main
from tests.coco_by_hand import pycocotools_keypoint_stats

# (dataset, served model, folder, annotation file, keypoints per instance, annotated instances)
ANIMALS = {
    "horse10": ("hrnet_w32_horse10_random", "horse10", "test_horse10.json", 22, 3),
    "atrw": ("hrnet_w32_atrw_random", "atrw", "test_atrw.json", 15, 2),
    "macaque": ("hrnet_w32_macaque_random", "macaque", "test_macaque.json", 17, 2),
}
# OKS sigmas as published in MMPose's configs/_base_/datasets/{atrw,macaque}.py (macaque = COCO's)
SIGMAS = {
    "atrw": [
        0.0277,
        0.0823,
        0.0831,
        0.0202,
        0.0716,
        0.0263,
        0.0646,
        0.0302,
        0.0440,
        0.0316,
        0.0333,
        0.0547,
        0.0263,
        0.0683,
        0.0539,
    ],
    "macaque": [
        0.026,
        0.025,
        0.025,
        0.035,
        0.035,
        0.079,
        0.079,
        0.072,
        0.072,
        0.062,
        0.062,
        0.107,
        0.107,
        0.087,
        0.087,
        0.089,
        0.089,
    ],
}
SEG_MODEL = "fcn_hr18s_cityscapes_random"
PERCENT = {"aAcc", "mIoU", "mAcc"}  # compared after / 100: --tolerance is in fraction units


@pytest.fixture(scope="module")
def gateway(random_gateway):
    return random_gateway


def _paths(shared, dataset):
    _, folder, ann, _, _ = ANIMALS[dataset]
    root = shared / "data" / "mmpose_tests" / folder
    return root / ann, root


def _eval(url, model, dataset, images, out, *extra, ann=None):
    args = [
        "--url",
        url,
        "--model",
        model,
        "--dataset",
        dataset,
        "--images",
        str(images),
        "--out",
        str(out),
        "--quiet",
        "--concurrency",
        "2",
    ]
    if ann is not None:
        args += ["--ann", str(ann)]
    rc = eval_main(args + list(extra))
    return rc, json.loads((out / "metrics.json").read_text())


def _expected_rc(metrics_file: dict) -> int:
    """Exit status the module docstring promises for a complete run: 1 when some compared metric
    is farther than the tolerance from its published value, else 0 (recomputed from the rows;
    the tolerance is in fraction units, percent metrics compared after dividing by 100)."""
    tol = metrics_file["tolerance"]
    assert metrics_file["tolerance_unit"] == "fraction"
    beyond = [
        r
        for r in metrics_file["comparison"]
        if r["published"] is not None
        and r["ours"] is not None
        and not abs(r["ours"] - r["published"]) / (100 if r["metric"] in PERCENT else 1) <= tol
    ]
    return 1 if beyond else 0


@pytest.fixture(scope="module")
def animal_runs(gateway, shared, tmp_path_factory):
    """Each animal set evaluated once through the live gateway with ground-truth boxes:
    ``{dataset: (exit code, out folder)}``."""
    runs = {}
    for ds, (model, *_rest) in ANIMALS.items():
        ann, images = _paths(shared, ds)
        out = tmp_path_factory.mktemp(f"eval_{ds}")
        rc, _ = _eval(gateway, model, ds, images, out, "--gt-boxes", ann=ann)
        runs[ds] = (rc, out)
    return runs


# ------------------------------------------------------------------------ independent metrics


def _horse10_by_hand(results: list[dict], coco: dict, thr: float = 0.3) -> tuple[float, float]:
    anns = {a["id"]: a for a in coco["annotations"]}
    pred = np.array([np.reshape(r["keypoints"], (-1, 3))[:, :2] for r in results], np.float64)
    gt_full = np.array(
        [np.reshape(anns[r["id"]]["keypoints"], (-1, 3)) for r in results], np.float64
    )
    gt, vis = gt_full[..., :2], gt_full[..., 2] > 0
    norm = np.linalg.norm(gt[:, 0] - gt[:, 1], axis=1)  # nose-eye, per instance
    ok = vis & (norm > 0)[:, None]  # (N, K) evaluated
    d = np.linalg.norm(pred - gt, axis=2) / np.where(norm > 0, norm, 1.0)[:, None]
    n_type = ok.sum(axis=0)
    hit_type = (ok & (d < thr)).sum(axis=0)
    pck = float(np.mean(hit_type[n_type > 0] / n_type[n_type > 0]))
    nme = float(d[ok].mean())
    return pck, nme


def _oks_by_hand(pred_xy: np.ndarray, ann: dict, sigmas) -> float:
    g = np.reshape(ann["keypoints"], (-1, 3)).astype(np.float64)
    lab = g[:, 2] > 0
    var = (2 * np.asarray(sigmas)) ** 2
    e = ((pred_xy - g[:, :2]) ** 2).sum(axis=1) / var / (ann["area"] + np.spacing(1)) / 2
    return float(np.exp(-e[lab]).mean())


def _n_annotated(coco: dict, dataset: str) -> int:
    """Instances the benchmark scores: every annotation with a box and keypoints (MMPose 1.x
    test mode); Horse-10 (MMPose 0.x) also drops those whose keypoints are all 0."""
    anns = [a for a in coco["annotations"] if "bbox" in a and "keypoints" in a]
    if dataset == "horse10":
        anns = [a for a in anns if max(a["keypoints"]) > 0]
    return len(anns)


# ------------------------------------------------------------------------ live runs


@pytest.mark.parametrize("dataset", list(ANIMALS))
def test_animal_eval_live_files_and_exit_codes(shared, gateway, animal_runs, dataset):
    model, _, _, k, n_inst = ANIMALS[dataset]
    ann, images = _paths(shared, dataset)
    coco = json.loads(ann.read_text())
    rc, out = animal_runs[dataset]

    m = json.loads((out / "metrics.json").read_text())
    assert m["complete"] and m["summary"]["failed"] == 0
    assert m["summary"]["evaluated"] == m["summary"]["images"] == len(coco["images"])
    # random weights (card url None, no metrics): the registry's published numbers of the
    # architecture are not this model's, so nothing is compared and the run passes
    assert m["references"] == {} and m["reference_origin"] == {}
    assert rc == _expected_rc(m) == 0, (rc, m["comparison"])
    metrics = m["metrics"]
    if dataset == "horse10":
        assert set(metrics) >= {"PCK", "NME"}
        assert math.isfinite(metrics["PCK"]) and 0.0 <= metrics["PCK"] <= 1.0
        assert math.isfinite(metrics["NME"]) and metrics["NME"] >= 0.0
    else:
        for name in ("AP", "AP50", "AP75", "APl", "AR", "AR50", "AR75", "ARl", "meanOKS"):
            assert math.isfinite(metrics[name]) and 0.0 <= metrics[name] <= 1.0, name
        # every sample instance is large (area > 96^2): COCOeval reports -1 for the medium range
        assert metrics["APm"] == -1.0 and metrics["ARm"] == -1.0

    # one prediction per annotated instance, with the dataset's keypoint count
    results = json.loads((out / "results.json").read_text())
    assert len(results) == _n_annotated(coco, dataset) == n_inst
    assert all(len(r["keypoints"]) == 3 * k for r in results)
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    persons = [p for r in records for p in r["persons"]]
    assert len(persons) == n_inst and all(len(p["keypoints"]) == k for p in persons)

    # a resumed run sends nothing and recomputes the same numbers; a --reference still applies:
    # one 0.02 off our value is beyond the default tolerance (0.01) -> exit 1
    key = "PCK" if dataset == "horse10" else "AP"
    off = metrics[key] + 0.02 if metrics[key] < 0.5 else metrics[key] - 0.02
    rc2, m2 = _eval(
        gateway, model, dataset, images, out, "--gt-boxes", "--reference", f"{key}={off}", ann=ann
    )
    assert m2["summary"]["sent"] == 0 and m2["metrics"] == metrics
    assert m2["reference_origin"] == {key: "cli"}
    assert rc2 == _expected_rc(m2) == 1 and not m2["within_tolerance"]


def test_horse10_metric_recomputed_by_hand(shared, animal_runs):
    ann, _ = _paths(shared, "horse10")
    coco = json.loads(ann.read_text())
    _, out = animal_runs["horse10"]
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    results = json.loads((out / "results.json").read_text())
    pck, nme = _horse10_by_hand(results, coco)
    assert metrics["PCK"] == pytest.approx(pck, abs=1e-6)
    assert metrics["NME"] == pytest.approx(nme, rel=1e-5)


@pytest.mark.parametrize("dataset", ["atrw", "macaque"])
def test_coco_style_metrics_recomputed_by_hand(shared, animal_runs, dataset):
    from service.datasets import get_pose_dataset

    assert list(get_pose_dataset(dataset).sigmas) == pytest.approx(SIGMAS[dataset])
    ann, _ = _paths(shared, dataset)
    coco = json.loads(ann.read_text())
    _, out = animal_runs[dataset]
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    results = json.loads((out / "results.json").read_text())
    ann_of_image = {a["image_id"]: a for a in coco["annotations"]}  # one animal per sample image
    oks = [
        _oks_by_hand(
            np.reshape(r["keypoints"], (-1, 3))[:, :2], ann_of_image[r["image_id"]], SIGMAS[dataset]
        )
        for r in results
    ]
    assert metrics["meanOKS"] == pytest.approx(float(np.mean(oks)), rel=1e-5)
    by_hand = pycocotools_keypoint_stats(ann, out / "results.json", SIGMAS[dataset])
    for name in ("AP", "AP50", "AP75", "AR", "AR50"):
        assert metrics[name] == pytest.approx(by_hand[name], abs=1e-6), name


# ------------------------------------------------------------------------ hand-made predictions


def _rewrite_log(src_out, dst_out, new_keypoints):
    """Copy the live run's prediction log to ``dst_out`` with every person's keypoints replaced by
    ``new_keypoints(annotation_id) -> (K, 3)``; the job then resumes from it (sends nothing)."""
    dst_out.mkdir(parents=True, exist_ok=True)
    lines = []
    for line in (src_out / "predictions.jsonl").read_text().splitlines():
        rec = json.loads(line)
        for p in rec["persons"]:
            p["keypoints"] = np.asarray(new_keypoints(p["id"]), np.float64).tolist()
        lines.append(json.dumps(rec))
    (dst_out / "predictions.jsonl").write_text("\n".join(lines) + "\n")
    shutil.copy(src_out / "run.json", dst_out / "run.json")


def test_horse10_metric_on_known_offsets(shared, gateway, animal_runs, tmp_path):
    """Predictions = ground truth + offsets of r * (nose-eye distance), fed through the job.

    Instance 100 (all 22 keypoints labelled): r = 0.4 (miss) for keypoints 0-5, 0.2 (hit) else.
    Instance 500 (13-15 unlabelled, moved 500 px to prove they are ignored): r = 0.5 for 0-10,
    0.1 else. Instance 900 has no nose/eye (factor 0): ignored, whatever its keypoints (+1000 px).
    Per-type hit rates: 0-5 -> 0, 6-10 -> 1/2, 11-21 -> 1, so PCK = (5 * 0.5 + 11) / 22 = 27/44
    (a mean over all 41 pairs would give 24/41 instead). NME = (6*0.4 + 16*0.2 + 11*0.5 + 8*0.1) / 41
    = 11.9 / 41.
    """
    ann, images = _paths(shared, "horse10")
    coco = json.loads(ann.read_text())
    anns = {
        a["id"]: np.reshape(a["keypoints"], (-1, 3)).astype(np.float64) for a in coco["annotations"]
    }
    theta = 0.7 * np.arange(22)
    direction = np.stack([np.cos(theta), np.sin(theta)], axis=1)
    r = {100: np.where(np.arange(22) <= 5, 0.4, 0.2), 500: np.where(np.arange(22) <= 10, 0.5, 0.1)}

    def keypoints(aid):
        g = anns[aid]
        norm = np.linalg.norm(g[0, :2] - g[1, :2])
        kp = np.ones((22, 3))
        if aid in r:
            kp[:, :2] = g[:, :2] + (r[aid] * norm)[:, None] * direction
            kp[g[:, 2] == 0, :2] += 500.0
        else:
            assert norm == 0
            kp[:, :2] = g[:, :2] + 1000.0
        return kp

    _, live_out = animal_runs["horse10"]
    out = tmp_path / "horse10_offsets"
    _rewrite_log(live_out, out, keypoints)
    rc, m = _eval(
        gateway,
        "hrnet_w32_horse10_random",
        "horse10",
        images,
        out,
        "--gt-boxes",
        "--tolerance",
        "1e-4",
        "--reference",
        f"PCK={27 / 44}",
        f"NME={11.9 / 41}",
        ann=ann,
    )
    assert m["summary"]["sent"] == 0
    assert m["metrics"]["PCK"] == pytest.approx(27 / 44, abs=1e-9)
    assert m["metrics"]["NME"] == pytest.approx(11.9 / 41, rel=1e-6)
    assert rc == _expected_rc(m)
    rows = {row["metric"]: row for row in m["comparison"]}
    assert rows["PCK"]["ok"] and rows["NME"]["ok"]
    # and the by-hand definition agrees on the same predictions
    pck, nme = _horse10_by_hand(json.loads((out / "results.json").read_text()), coco)
    assert (pck, nme) == (pytest.approx(27 / 44), pytest.approx(11.9 / 41, rel=1e-6))


@pytest.mark.parametrize("dataset", ["atrw", "macaque"])
def test_coco_style_ap_on_known_offsets(shared, gateway, animal_runs, tmp_path, dataset):
    """Every labelled keypoint moved so that its OKS term is exactly 0.72:
    ``d_i^2 = -ln(0.72) * 2 * area * (2 sigma_i)^2`` (unlabelled ones moved 300 px: ignored).
    Each instance then has OKS 0.72: matched at the thresholds 0.50 ... 0.70 (5 of 10), missed
    at 0.75 ... 0.95, so AP = AR = 0.5, AP50 = AR50 = 1, AP75 = 0, meanOKS = 0.72."""
    model = ANIMALS[dataset][0]
    ann, images = _paths(shared, dataset)
    coco = json.loads(ann.read_text())
    anns = {a["id"]: a for a in coco["annotations"]}
    sig = np.asarray(SIGMAS[dataset])
    k = len(sig)
    theta = 1.3 * np.arange(k)
    direction = np.stack([np.cos(theta), np.sin(theta)], axis=1)

    def keypoints(aid):
        a = anns[aid]
        g = np.reshape(a["keypoints"], (-1, 3)).astype(np.float64)
        d = np.sqrt(-np.log(0.72) * 2 * a["area"] * (2 * sig) ** 2)
        kp = np.full((k, 3), 0.9)
        kp[:, :2] = g[:, :2] + d[:, None] * direction
        kp[g[:, 2] == 0, :2] += 300.0
        return kp

    _, live_out = animal_runs[dataset]
    out = tmp_path / f"{dataset}_offsets"
    _rewrite_log(live_out, out, keypoints)
    expected = {"AP": 0.5, "AP50": 1.0, "AP75": 0.0, "AR": 0.5, "AR50": 1.0, "meanOKS": 0.72}
    rc, m = _eval(
        gateway,
        model,
        dataset,
        images,
        out,
        "--gt-boxes",
        "--tolerance",
        "1e-6",
        "--reference",
        *(f"{k}={v}" for k, v in expected.items()),
        ann=ann,
    )
    assert rc == 0 and m["summary"]["sent"] == 0
    assert all(r["ok"] and r["published"] is not None for r in m["comparison"])
    got = m["metrics"]
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=1e-6), name
    by_hand = pycocotools_keypoint_stats(ann, out / "results.json", SIGMAS[dataset])
    assert by_hand["AP"] == pytest.approx(0.5) and by_hand["AP75"] == pytest.approx(0.0)


# ------------------------------------------------------------------------ segmentation


def test_cityscapes_eval_live_and_miou_by_hand(shared, gateway, tmp_path):
    root = shared / "data" / "cityscapes_sample"
    out = tmp_path / "cityscapes"
    rc, m = _eval(gateway, SEG_MODEL, "cityscapes", root, out)
    assert m["complete"] and m["summary"]["evaluated"] == 1
    assert rc == _expected_rc(m), m["comparison"]
    metrics = m["metrics"]
    for name in ("aAcc", "mIoU", "mAcc"):
        assert math.isfinite(metrics[name]) and 0.0 <= metrics[name] <= 100.0, name
    assert m["references"] == {} and rc == 0  # random weights: no registry mIoU
    # a resumed run sends nothing; --reference mIoU in percent, tolerance in fraction units:
    # 0.5 point off is within 0.01, 2 points off is not
    assert metrics["mIoU"] + 0.5 > 1  # so the reference reads as percent, not as a fraction
    rc2, m2 = _eval(
        gateway, SEG_MODEL, "cityscapes", root, out, "--reference", f"mIoU={metrics['mIoU'] + 0.5}"
    )
    assert rc2 == 0 and m2["summary"]["sent"] == 0 and m2["metrics"] == metrics
    rc3, m3 = _eval(
        gateway, SEG_MODEL, "cityscapes", root, out, "--reference", f"mIoU={metrics['mIoU'] + 2.0}"
    )
    assert rc3 == _expected_rc(m3) == 1

    # the label map fetched by hand, scored with a plain confusion matrix
    stem = "frankfurt_000000_000294"
    image = (root / f"{stem}_leftImg8bit.png").read_bytes()
    r = httpx.post(
        f"{gateway}/segment",
        files={"image": ("x.png", image, "image/png")},
        data={"model": SEG_MODEL},
        headers={"Accept": "image/png"},
        timeout=120,
    )
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    pred = cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_UNCHANGED)
    gt = cv2.imread(str(root / f"{stem}_gtFine_labelTrainIds.png"), cv2.IMREAD_UNCHANGED)
    assert pred.shape == gt.shape == (128, 256) and pred.max() < 19
    keep = gt != 255
    conf = np.bincount(gt[keep].astype(np.int64) * 19 + pred[keep], minlength=19 * 19).reshape(
        19, 19
    )
    inter = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - inter
    label_area = conf.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = 100 * inter / union
        acc = 100 * inter / label_area
    miou = float(np.nanmean(iou))
    aacc = float(100 * inter.sum() / keep.sum())
    macc = float(np.nanmean(acc))
    assert metrics["mIoU"] == pytest.approx(miou, abs=0.005 + 1e-9)
    assert metrics["aAcc"] == pytest.approx(aacc, abs=0.005 + 1e-9)
    assert metrics["mAcc"] == pytest.approx(macc, abs=0.005 + 1e-9)
    per_class = json.loads((out / "results.json").read_text())["IoU"]
    assert len(per_class) == 19  # class order = the card's = train ids
    ours = np.array(list(per_class.values()), np.float64)
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(iou))
    np.testing.assert_allclose(ours[~np.isnan(iou)], iou[~np.isnan(iou)], atol=0.005 + 1e-9)
