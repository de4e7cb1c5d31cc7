"""The COCO-AIC "combine" model (19 heatmaps, COCO's 17 served) through the live gateway.

MMPose 1.x ``td-hm_hrnet-w32_8xb64-210e_coco-aic-256x192-combine``: the estimator's metainfo is
``coco_aic`` (19 keypoints), so the flip test swaps channels with the 19-keypoint flip indices;
``add_pred_to_datasample`` then keeps ``test_cfg.output_keypoint_indices`` (0..16), and
``CocoMetric`` rescoring sees only those 17 scores. The reference below runs the exported ONNX
model itself and flips / selects by hand.
"""

from __future__ import annotations

import json

import cv2
import httpx
import numpy as np
import onnxruntime as ort
import pytest

from benchmarks.eval import main as eval_main
from service.boxes import parse_boxes
from service.cards import ModelCard, load_card
from service.codecs import build_codec
from service.datasets import get_pose_dataset
from service.geometry import keypoints_to_image
from service.pipelines.common import to_input_tensor
from service.pipelines.topdown import crop_inputs
from tests.coco_by_hand import pycocotools_keypoint_stats

NAME = "hrnet_w32_coco_aic_combine_random"


@pytest.fixture(scope="module")
def coco_dir(shared):
    return shared / "data" / "mmpose_tests" / "coco"


def _reference(repo, image, boxes_xywh):
    """19-keypoint decode with the 19-set flip, by hand; returns (keypoints (N, 19, 2) image px,
    scores (N, 19))."""
    card = load_card(repo / NAME)
    h, w = image.shape[:2]
    xyxy, _ = parse_boxes(json.dumps(boxes_xywh), "xywh", (w, h), 100)
    centers, scales, crops = crop_inputs(image, xyxy, card)
    x = to_input_tensor(crops, card.normalization)
    sess = ort.InferenceSession(
        str(repo / NAME / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    n = len(x)
    hm = sess.run(None, {card.inputs[0].name: np.concatenate([x, x[..., ::-1]])})[0]
    assert hm.shape[1] == 19
    flip = list(get_pose_dataset("coco_aic").flip_indices)
    assert flip[17:] == [17, 18] and flip[1:3] == [2, 1]
    back = hm[n:, :, :, ::-1][:, flip].copy()  # mirror, swap left/right channels
    back[..., 1:] = back[..., :-1].copy()  # shift_heatmap: one heatmap pixel right
    kpts, scores = build_codec(card.codec).decode((hm[:n] + back) * 0.5)
    return keypoints_to_image(kpts, centers, scales, card.codec.input_size), scores


def test_combine_pose_serves_coco_17_of_the_19_set_flip_decode(
    random_gateway, random_repo, coco_dir
):
    image_bytes = (coco_dir / "000000000785.jpg").read_bytes()
    dets = [
        d
        for d in json.loads((coco_dir / "test_coco_det_AP_H_56.json").read_text())
        if d["image_id"] == 785
    ][:6]
    boxes = [d["bbox"] + [d["score"]] for d in dets]
    r = httpx.post(
        random_gateway + "/pose",
        files={"image": ("785.jpg", image_bytes)},
        data={"model": NAME, "boxes": json.dumps(boxes), "flip_test": "true"},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    coco = get_pose_dataset("coco")
    assert body["keypoint_names"] == list(coco.keypoint_names)
    assert body["skeleton"] == [list(link) for link in coco.skeleton]
    got = np.asarray([p["keypoints"] for p in body["persons"]])
    assert got.shape == (6, 17, 3)

    image = cv2.imread(str(coco_dir / "000000000785.jpg"))
    ref_xy, ref_scores = _reference(random_repo, image, boxes)
    np.testing.assert_allclose(got[..., :2], ref_xy[:, :17], atol=6e-5)
    np.testing.assert_allclose(got[..., 2], ref_scores[:, :17], atol=6e-7)
    # rescoring: box score x mean of the 17 served scores above 0.2 (0 when none is)
    for p, d, s in zip(body["persons"], dets, ref_scores[:, :17]):
        keep = s > 0.2
        want = d["score"] * (s[keep].mean() if keep.any() else 0.0)
        assert p["score"] == pytest.approx(want, abs=2e-6)

    models = {m["name"]: m for m in httpx.get(random_gateway + "/models").json()["models"]}
    assert models[NAME]["output_keypoint_indices"] == list(range(17))
    assert len(models[NAME]["keypoint_names"]) == 19


def test_eval_job_scores_the_combine_model_on_coco(random_gateway, coco_dir, tmp_path, capsys):
    """hrnet-eval with the detection file on COCO: 17 keypoints per result, COCO's sigmas, and
    its AP equals plain pycocotools on its results file (random weights: the AP itself is ~0;
    --tolerance 1 so the comparison with the published 0.755 does not fail the run)."""
    ann = coco_dir / "test_coco.json"
    rc = eval_main(
        [
            "--url",
            random_gateway,
            "--model",
            NAME,
            "--dataset",
            "coco",
            "--ann",
            str(ann),
            "--images",
            str(coco_dir),
            "--boxes",
            str(coco_dir / "test_coco_det_AP_H_56.json"),
            "--limit",
            "1",
            "--out",
            str(tmp_path),
            "--quiet",
            "--concurrency",
            "1",
            "--tolerance",
            "1",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    results = json.loads((tmp_path / "results.json").read_text())
    assert results and all(len(r["keypoints"]) == 17 * 3 for r in results)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    ours = metrics.get("metrics", metrics)
    coco = json.loads(ann.read_text())
    first = min(im["id"] for im in coco["images"])
    one = dict(
        coco,
        images=[im for im in coco["images"] if im["id"] == first],
        annotations=[a for a in coco["annotations"] if a["image_id"] == first],
    )
    (tmp_path / "ann1.json").write_text(json.dumps(one))
    by_hand = pycocotools_keypoint_stats(
        tmp_path / "ann1.json", tmp_path / "results.json", get_pose_dataset("coco").sigmas
    )
    for k in ("AP", "AR"):
        assert round(ours[k], 4) == round(by_hand[k], 4), (k, ours[k], by_hand[k])


def test_output_keypoint_selection_card_rules():
    from pydantic import ValidationError

    from tests.fake_cards import pose_card

    card = pose_card(
        keypoint_names=["a", "b", "c"],
        skeleton=[(0, 1), (1, 2)],
        outputs=[{"name": "heatmaps", "dims": [3, 64, 48]}],
        output_keypoint_indices=[2, 1],
    )
    assert card.num_keypoints == 3 and card.output_keypoints == [2, 1]
    assert card.output_keypoint_names == ["c", "b"]
    assert card.output_skeleton == [(1, 0)]  # (b, c) renumbered; (a, b) loses a
    assert pose_card().output_keypoints == [0, 1]
    for bad in ([], [0, 0], [2], [-1]):
        with pytest.raises(ValidationError, match="output_keypoint_indices"):
            pose_card(output_keypoint_indices=bad)
