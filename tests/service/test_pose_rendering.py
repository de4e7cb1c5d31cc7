"""Pose rendering (service.pose_rendering) and ``POST /pose`` with ``render=true``."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.pose_rendering import draw_poses, marker_sizes
from service.settings import Settings


def _turbo(score: float) -> np.ndarray:
    """The TURBO colour of a score, straight from OpenCV (BGR)."""
    return cv2.applyColorMap(np.uint8([[round(score * 255)]]), cv2.COLORMAP_TURBO)[0, 0]


def test_marker_sizes_follow_mmpose_defaults_and_grow():
    assert marker_sizes(640, 425) == (3, 1)  # MMPose: radius 3, line width 1
    assert marker_sizes(2000, 1000) == (10, 5)  # 2000 / 200


def test_draw_poses_by_hand():
    """Three joints in a row at scores 1.0 / 0.5 / 0.1 (threshold 0.3), skeleton 0-1-2, one box."""
    img = np.zeros((100, 200, 3), np.uint8)
    kpts = np.array([[[20, 30], [60, 30], [100, 30]]], np.float32)
    scores = np.array([[1.0, 0.5, 0.1]], np.float32)
    box = np.array([[10, 10, 150, 90]], np.float32)
    out = draw_poses(img, kpts, scores, [(0, 1), (1, 2)], box)
    assert out.shape == img.shape and out.dtype == np.uint8 and out is not img
    assert img.max() == 0  # input untouched
    np.testing.assert_array_equal(out[30, 20], _turbo(1.0))  # joint 0, centre pixel
    np.testing.assert_array_equal(out[30, 60], _turbo(0.5))  # joint 1
    np.testing.assert_array_equal(out[30, 100], 0)  # joint 2 below 0.3: not drawn
    assert (out[30, 40] > 200).all()  # link 0-1: white line
    np.testing.assert_array_equal(out[30, 80], 0)  # link 1-2 touches a hidden joint
    g = out[50, 10]  # left edge of the box: green
    assert g[1] > 200 and g[0] < 60 and g[2] < 60
    np.testing.assert_array_equal(out[50, 100], 0)  # inside the box, away from all drawing
    # radius 3: 3 px below joint 0 is coloured, 5 px below is not (the anti-aliased link at y=30
    # reaches one row either side only)
    assert out[33, 20].any() and not out[35, 20].any()


def test_draw_poses_rejects_mismatched_shapes():
    img = np.zeros((10, 10, 3), np.uint8)
    with pytest.raises(ValueError, match="keypoint_scores"):
        draw_poses(img, np.zeros((1, 3, 2)), np.zeros((1, 2)), [])
    with pytest.raises(ValueError, match="boxes"):
        draw_poses(img, np.zeros((1, 3, 2)), np.zeros((1, 3)), [], np.zeros((2, 4)))
    with pytest.raises(ValueError, match="uint8"):
        draw_poses(np.zeros((10, 10), np.uint8), np.zeros((0, 3, 2)), np.zeros((0, 3)), [])


@pytest.fixture(scope="module")
def client(shared_repo):
    with TestClient(create_app(Settings(model_repository=shared_repo))) as c:
        yield c


def test_pose_render_png_with_given_boxes(client, shared, tmp_path):
    """render=true on a real photo: a PNG of the photo's size whose joint centres carry the colour
    of the score that the JSON answer gives for the same request."""
    root = shared / "data" / "mmpose_tests" / "coco"
    ann = json.loads((root / "test_coco.json").read_text())
    img = next(i for i in ann["images"] if i["file_name"] == "000000196141.jpg")
    boxes = [
        a["bbox"]
        for a in ann["annotations"]
        if a["image_id"] == img["id"] and a["num_keypoints"] > 0
    ]
    data = (root / img["file_name"]).read_bytes()
    fields = {"boxes": json.dumps(boxes)}
    body = client.post("/pose", files={"image": ("x.jpg", data)}, data=fields).json()
    r = client.post("/pose", files={"image": ("x.jpg", data)}, data={**fields, "render": "true"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    assert r.headers["x-persons"] == str(len(boxes))
    drawn = cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_COLOR)
    photo = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert drawn.shape == photo.shape == (img["height"], img["width"], 3)
    (tmp_path / "render.png").write_bytes(r.content)
    kp = np.array([p["keypoints"] for p in body["persons"]]).reshape(-1, 3)  # drawing order
    radius, _ = marker_sizes(img["width"], img["height"])
    shown = kp[kp[:, 2] >= 0.3]
    assert len(shown) >= 40  # 4 people, most joints confident
    checked = 0
    for i, (x, y, s) in enumerate(shown):
        later = shown[i + 1 :, :2]
        if len(later) and np.hypot(*(later - (x, y)).T).min() <= radius + 2:  # AA edge + rounding
            continue  # a joint drawn later covers this centre
        np.testing.assert_array_equal(drawn[int(round(y)), int(round(x))], _turbo(s))
        checked += 1
    assert checked >= 0.6 * len(shown), (checked, len(shown))
    # away from every person the photo is untouched
    x1 = max(b[0] + b[2] for b in boxes) + 10
    if x1 < img["width"]:
        np.testing.assert_array_equal(drawn[:, int(x1) :], photo[:, int(x1) :])
