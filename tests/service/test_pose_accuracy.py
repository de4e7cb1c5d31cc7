"""Real accuracy of the served top-down path with the real PP-TinyPose model and GT boxes.

Expected figures come from ../shared/README.md: they were computed independently through MMPose
1.3.2's own transforms, flip and codec, and scored by its CocoMetric. A path that follows MMPose
exactly reproduces them to the third decimal.
"""

from __future__ import annotations

import asyncio
import json

import cv2
import numpy as np
import pytest

from service.backends.onnxruntime import OnnxRuntimeBackend
from service.metrics.coco_keypoints import CocoKeypointEvaluator, mean_oks, topdown_bbox_areas
from service.pipelines.topdown import estimate_poses
from service.repository import ModelRepository

pytestmark = pytest.mark.slow  # end-to-end: a real model over the shared datasets

# (set, variant) -> (mean OKS, AP, AP50, AP75, AR, AR50) from ../shared/README.md
REFERENCE = {
    ("coco", "plain"): (0.8933, 0.8139, 1.0000, 0.9043, 0.8500, 1.0000),
    ("coco", "flip"): (0.8975, 0.8264, 1.0000, 0.9043, 0.8500, 1.0000),
    ("coco", "flip+dark"): (0.9012, 0.8156, 1.0000, 0.9043, 0.8500, 1.0000),
    ("coco_mini", "plain"): (0.7250, 0.5441, 0.8110, 0.5740, 0.5802, 0.8256),
    ("coco_mini", "flip"): (0.7442, 0.5743, 0.8461, 0.6409, 0.6047, 0.8605),
    ("coco_mini", "flip+dark"): (0.7522, 0.5880, 0.8560, 0.6545, 0.6209, 0.8721),
}
VARIANTS = {  # name -> (flip_test, DARK, UDP)
    "plain": (False, False, False),
    "flip": (True, False, False),
    "flip+dark": (True, True, False),
    "dark": (False, True, False),
    "udp": (False, False, True),
    "flip+udp": (True, False, True),
}


def _dataset(shared, which):
    if which == "coco":
        root = shared / "data" / "mmpose_tests" / "coco"
        return root, root / "test_coco.json"
    root = shared / "data" / "coco_mini"
    return root / "train2017", root / "annotations" / "person_keypoints_train2017.json"


def run_variant(shared, repo_dir, which, variant):
    """Serve every annotated person with its GT box; return (mean OKS, COCO stats)."""
    repo = ModelRepository(repo_dir)
    card = repo.get("pp_tinypose_256x192").model_copy(deep=True)
    flip, dark, udp = VARIANTS[variant]
    card.codec.unbiased = dark
    if udp:
        card.codec.type, card.use_udp, card.shift_heatmap = "UDPHeatmap", True, False
    backend = OnnxRuntimeBackend(repo, models=[card.name])
    asyncio.run(backend.start())
    img_dir, ann_file = _dataset(shared, which)
    ann = json.loads(ann_file.read_text())
    ev = CocoKeypointEvaluator(ann, card.sigmas)
    preds, gts, vis, areas = [], [], [], []

    async def go():
        for im in ann["images"]:
            people = [
                a
                for a in ann["annotations"]
                if a["image_id"] == im["id"] and a["num_keypoints"] > 0 and not a["iscrowd"]
            ]
            if not people:
                continue
            img = cv2.imread(str(img_dir / im["file_name"]))
            xyxy = np.array([a["bbox"] for a in people], np.float32)
            xyxy[:, 2:] += xyxy[:, :2]
            scores = np.ones(len(people), np.float32)
            res = await estimate_poses(img, xyxy, scores, card, backend, flip_test=flip)
            kpts = np.concatenate([res.keypoints, res.keypoint_scores[..., None]], -1)
            ev.add(
                im["id"],
                kpts,
                scores,
                areas=topdown_bbox_areas(xyxy, card.codec.input_size),
                ids=[a["id"] for a in people],
            )
            for a, k in zip(people, res.keypoints):
                g = np.asarray(a["keypoints"], float).reshape(-1, 3)
                (
                    preds.append(k),
                    gts.append(g[:, :2]),
                    vis.append(g[:, 2] > 0),
                    areas.append(a["area"]),
                )

    asyncio.run(go())
    m = mean_oks(np.array(preds), np.array(gts), np.array(vis), np.array(areas), card.sigmas)
    return m, ev.evaluate(), len(preds)


@pytest.mark.parametrize("which,variant", sorted(REFERENCE))
def test_matches_mmpose_reference(shared, shared_repo, which, variant):
    m, stats, n = run_variant(shared, shared_repo, which, variant)
    ref = REFERENCE[(which, variant)]
    assert n == (12 if which == "coco" else 86)
    got = (m, stats["AP"], stats["AP50"], stats["AP75"], stats["AR"], stats["AR50"])
    print(which, variant, "ours", np.round(got, 4), "reference", ref)
    np.testing.assert_allclose(got, ref, atol=6e-4)  # third decimal


@pytest.mark.parametrize("variant", ["dark", "udp", "flip+udp"])
def test_other_decoding_variants_reach_085(shared, shared_repo, variant):
    """Variants without a reference row: the issue's bar is mean OKS >= 0.85 on mmpose_tests/coco."""
    m, stats, n = run_variant(shared, shared_repo, "coco", variant)
    print(variant, "mean OKS", round(m, 4), "AP", round(stats["AP"], 4))
    assert m >= 0.85
