"""hrnet-eval against the live gateway serving the real PP-TinyPose and RTMDet-nano models."""

from __future__ import annotations

import json

import pytest

from benchmarks.eval import main as eval_main
from tests.coco_by_hand import pycocotools_keypoint_stats

pytestmark = pytest.mark.slow  # end-to-end: a live gateway on real models


@pytest.mark.parametrize(
    "which,boxes",
    [
        ("coco", "gt"),
        ("coco", "det"),
        ("coco", "detector"),
        ("coco_mini", "gt"),
    ],
)
def test_eval_job_table_equals_pycocotools(shared, live_gateway, tmp_path, capsys, which, boxes):
    from service.datasets import get_pose_dataset

    if which == "coco":
        root = shared / "data" / "mmpose_tests" / "coco"
        ann, images = root / "test_coco.json", root
    else:
        root = shared / "data" / "coco_mini"
        ann, images = root / "annotations" / "person_keypoints_train2017.json", root / "train2017"
    args = [
        "--url",
        live_gateway,
        "--model",
        "pp_tinypose_256x192",
        "--dataset",
        "coco",
        "--ann",
        str(ann),
        "--images",
        str(images),
        "--out",
        str(tmp_path),
        "--quiet",
        "--concurrency",
        "2",
        "--no-clip-boxes",
    ]
    args += {
        "gt": ["--gt-boxes"],
        "det": ["--boxes", str(root / "test_coco_det_AP_H_56.json")],
        "detector": ["--detector"],
    }[boxes]
    rc = eval_main(args)
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "AP50" in out and "AR50" in out
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    ours = metrics.get("metrics", metrics)
    by_hand = pycocotools_keypoint_stats(
        ann, tmp_path / "results.json", get_pose_dataset("coco").sigmas
    )
    for k in ("AP", "AP50", "AP75", "AR", "AR50"):
        assert round(ours[k], 4) == round(by_hand[k], 4), (k, ours[k], by_hand[k])
    if boxes == "gt":
        # the card's default is flip test + DARK: the shared README's MMPose reference rows
        ref = {"coco": (0.8156, 0.9043, 0.9012), "coco_mini": (0.5880, 0.6545, 0.7522)}[which]
        assert (round(ours["AP"], 4), round(ours["AP75"], 4), round(ours["meanOKS"], 4)) == ref
