"""Person detector edge cases (review findings 2, 3, 10): score threshold 0, hand-made NMS cases, real
detector boxes (service.pipelines.detector).
"""

from __future__ import annotations

import asyncio

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.cards import DetectorSpec, parse_card
from service.pipelines.detector import filter_detections, nms
from service.repository import ModelRepository
from service.settings import Settings
from tests.support.gateway import RAW_DETS, RAW_LABELS, backend, client, det_card, png_image, repo


def test_filter_detections_hand_made():
    kw = dict(person_label=0, nms_threshold=0.3, max_detections=100)
    d = filter_detections(RAW_DETS, RAW_LABELS, (0.5, 0.5), (640, 480), score_threshold=0.0, **kw)
    # kept: row 0 and row 5; row 1 (score 0 is not > 0), 2 (0 px after clipping), 3 (label),
    # 4 (NMS under row 0) and 6 (0.4 px) are gone
    np.testing.assert_allclose(d.boxes, [[20, 20, 120, 220], [400, 100, 500, 300]])
    np.testing.assert_allclose(d.scores, [0.9, 0.5])
    # score > thr, strictly: row 5 (0.5) is not above 0.5
    d = filter_detections(RAW_DETS, RAW_LABELS, (0.5, 0.5), (640, 480), score_threshold=0.5, **kw)
    np.testing.assert_allclose(d.scores, [0.9])
    # without NMS (threshold 1: no IoU exceeds it) row 4 comes back, ordered by score
    d = filter_detections(
        RAW_DETS,
        RAW_LABELS,
        (0.5, 0.5),
        (640, 480),
        score_threshold=0.0,
        person_label=0,
        nms_threshold=1.0,
        max_detections=100,
    )
    np.testing.assert_allclose(d.scores, [0.9, 0.6, 0.5])
    np.testing.assert_allclose(d.boxes[1], [24, 20, 124, 220])


def test_pose_with_threshold_zero_is_not_a_500(client):
    r = client.post("/pose", files={"image": ("x.png", png_image())}, data={"score_threshold": "0"})
    assert r.status_code == 200, r.text
    persons = r.json()["persons"]
    assert [p["bbox"] for p in persons] == [[20, 20, 100, 200], [400, 100, 100, 200]]
    assert [p["bbox_score"] for p in persons] == pytest.approx([0.9, 0.5])


def test_pose_threshold_zero_real_detector(shared, shared_repo):
    """mmdeploy_human-pose.jpg makes RTMDet-nano emit an all-zero row (the former LinAlgError)."""
    data = (shared / "data" / "samples" / "mmdeploy_human-pose.jpg").read_bytes()
    with TestClient(create_app(Settings(model_repository=shared_repo))) as c:
        r = c.post("/pose", files={"image": ("x.jpg", data)}, data={"score_threshold": "0"})
    assert r.status_code == 200, r.text
    boxes = np.array([p["bbox"] for p in r.json()["persons"]])
    assert len(boxes) >= 1 and (boxes[:, 2:] >= 1).all()
    assert all(p["bbox_score"] > 0 for p in r.json()["persons"])


def test_nms_hand_made_boxes():
    boxes = np.array(
        [
            [0, 0, 9, 9],  # A 0.9: area (9-0+1)^2 = 100
            [5, 0, 14, 9],  # B 0.8: inter with A 5*10 = 50, IoU 50/150 = 0.333 > 0.3 -> gone
            [7, 0, 16, 9],  # C 0.7: IoU with A 30/170 = 0.176 -> kept (B, which overlaps it by
            #   80/120, was suppressed first, so it suppresses nothing)
            [100, 100, 109, 109],  # D 0.95: alone, first
            [0, 0, 2, 9],  # F 0.6: inside A, IoU exactly 30/100 = 0.3 -> kept (<=)
        ],
        np.float32,
    )
    scores = np.array([0.9, 0.8, 0.7, 0.95, 0.6], np.float32)
    assert nms(boxes, scores, 0.3).tolist() == [3, 0, 2, 4]
    # without the +1 convention A-B would be 36/126 = 0.286 and B would survive: it must not
    # a lower threshold also removes C (0.176 > 0.1) and F (0.3 > 0.1)
    assert nms(boxes, scores, 0.1).tolist() == [3, 0]
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.3).tolist() == []


def test_nms_equal_scores_take_the_later_box_first():
    # upstream visits scores.argsort()[::-1]: with a stable sort, ties go later-index first
    boxes = np.array([[0, 0, 9, 9], [1, 0, 10, 9]], np.float32)  # IoU 90/110 = 0.82
    assert nms(boxes, np.array([0.5, 0.5], np.float32), 0.3).tolist() == [1]


def test_detector_spec_nms_threshold_default_and_old_cards():
    assert DetectorSpec().nms_threshold == 0.3
    # a card written before the field existed still loads (and gets the default)
    d = det_card().model_dump(mode="json")
    del d["detector"]["nms_threshold"]
    assert parse_card(d).detector.nms_threshold == 0.3


def test_real_detector_boxes_overlap_at_most_nms_threshold(shared, shared_repo):
    """coco_val2017_000000001000.jpg (a crowd): after NMS no two person boxes overlap by more than
    IoU 0.3 (pixel-inclusive), and NMS removed boxes the graph's class NMS had kept."""
    from service.backends.onnxruntime import OnnxRuntimeBackend
    from service.pipelines.detector import detect_persons

    repo = ModelRepository(shared_repo)
    be = OnnxRuntimeBackend(repo, models=["rtmdet_nano_person_320"])
    asyncio.run(be.start())
    card = repo.get("rtmdet_nano_person_320")
    no_nms = card.model_copy(deep=True)
    no_nms.detector.nms_threshold = 1.0
    img = cv2.imread(str(shared / "data" / "samples" / "coco_val2017_000000001000.jpg"))
    before = asyncio.run(detect_persons(img, no_nms, be, 0.3))
    after = asyncio.run(detect_persons(img, card, be, 0.3))
    b = after.boxes.astype(np.float64)
    area = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    iw = np.clip(
        np.minimum(b[:, None, 2], b[None, :, 2]) - np.maximum(b[:, None, 0], b[None, :, 0]) + 1,
        0,
        None,
    )
    ih = np.clip(
        np.minimum(b[:, None, 3], b[None, :, 3]) - np.maximum(b[:, None, 1], b[None, :, 1]) + 1,
        0,
        None,
    )
    iou = iw * ih / (area[:, None] + area[None, :] - iw * ih)
    np.fill_diagonal(iou, 0)
    assert iou.max() <= 0.3 + 1e-6
    assert 0 < len(after.boxes) < len(before.boxes)
    assert (np.diff(after.scores) <= 0).all()


def test_no_person_is_an_empty_list_not_a_whole_image_box(client):
    # every raw row is at most 0.9: above that nothing is a person; MMPose's inferencer would
    # fall back to one whole-image box, we answer no persons
    r = client.post(
        "/pose", files={"image": ("x.png", png_image())}, data={"score_threshold": "0.95"}
    )
    assert r.status_code == 200 and r.json()["persons"] == []
