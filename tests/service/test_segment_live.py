"""``POST /segment`` on a live gateway (embedded ONNX Runtime, loopback HTTP) serving the
fixed-seed random-weight fcn_hr18s Cityscapes export of ``random_repo``, on the shared 1024x512
street photo. The labels are meaningless (random weights); what is checked is the contract of
``notes/api.md``: sizes, class list, the label PNG in its three forms, the TTA options and the
4xx answers to bad input.
"""

from __future__ import annotations

import base64

import cv2
import httpx
import numpy as np
import pytest

pytestmark = pytest.mark.slow  # end-to-end: live gateway / real models

MODEL = "fcn_hr18s_cityscapes_random"
W, H = 1024, 512
CITYSCAPES_CLASSES = [
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
]


@pytest.fixture(scope="module")
def gateway(random_gateway):
    with httpx.Client(base_url=random_gateway, timeout=300) as client:
        yield client


@pytest.fixture(scope="module")
def demo(shared):
    path = shared / "data" / "cityscapes_sample" / "demo.png"
    return path.read_bytes(), cv2.imread(str(path), cv2.IMREAD_COLOR)


def _post(client, data: bytes, fields=None, headers=None, name="demo.png"):
    return client.post(
        "/segment",
        files={"image": (name, data, "image/png")},
        data={"model": MODEL, **(fields or {})},
        headers=headers or {},
    )


def _decode(png: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)


def _check_json(body: dict) -> np.ndarray:
    """Contract of the JSON answer for the demo photo; returns the decoded label map."""
    assert body["model"] == MODEL
    assert (body["width"], body["height"]) == (W, H)
    assert body["classes"] == CITYSCAPES_CLASSES
    label = _decode(base64.b64decode(body["label_png"]))
    assert label.shape == (H, W) and label.dtype == np.uint8
    assert label.max() < 19
    counts = np.bincount(label.ravel(), minlength=19)
    assert body["pixel_counts"] == {c: int(n) for c, n in zip(CITYSCAPES_CLASSES, counts) if n > 0}
    assert sum(body["pixel_counts"].values()) == W * H
    return label


@pytest.fixture(scope="module")
def whole_json(gateway, demo):
    r = _post(gateway, demo[0])
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    return r.json()


def test_segment_json(whole_json):
    label = _check_json(whole_json)
    assert len(np.unique(label)) > 1  # a real map, not a constant fill
    for stage in ("decode_image", "inference", "total"):
        assert whole_json["timing_ms"][stage] >= 0


def test_segment_png_equals_json(gateway, demo, whole_json):
    r = _post(gateway, demo[0], headers={"Accept": "image/png"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    label = _decode(r.content)
    assert label.ndim == 2 and label.dtype == np.uint8
    np.testing.assert_array_equal(label, _decode(base64.b64decode(whole_json["label_png"])))


def test_segment_render_overlay(gateway, demo, whole_json, tmp_path):
    data, photo = demo
    r = _post(gateway, data, fields={"render": "true"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    (tmp_path / "overlay.png").write_bytes(r.content)
    over = cv2.imread(str(tmp_path / "overlay.png"), cv2.IMREAD_UNCHANGED)
    assert over.shape == (H, W, 3) and over.dtype == np.uint8
    assert np.abs(over.astype(np.int16) - photo).mean() > 5  # the photo is visibly recoloured
    # half photo, half the class colour (card palette, RGB) of the same label map as the JSON's
    palette = np.array(
        next(c for c in gateway.get("/models").json()["models"] if c["name"] == MODEL)["palette"],
        np.float64,
    )
    assert palette.shape == (19, 3)
    label = _decode(base64.b64decode(whole_json["label_png"]))
    expected = 0.5 * photo + 0.5 * palette[:, ::-1][label]
    assert np.abs(over - expected).max() <= 1.0


def test_segment_slide_mode(gateway, demo):
    r = _post(gateway, demo[0], fields={"mode": "slide"})
    assert r.status_code == 200, r.text
    _check_json(r.json())


def test_segment_flip_and_scales(gateway, demo):
    r = _post(gateway, demo[0], fields={"flip": "true", "scales": "[0.5, 1.0]"})
    assert r.status_code == 200, r.text
    _check_json(r.json())


@pytest.mark.parametrize(
    "fields,status,code,words",
    [
        ({"mode": "bogus"}, 422, "invalid_parameter", ["mode", "bogus"]),
        ({"scales": "[-1]"}, 422, "invalid_parameter", ["scale", "-1"]),
        ({"scales": "[0.5, nan]"}, 422, "invalid_parameter", ["scales"]),
        (
            {"model": "hrnet_w32_coco_random"},
            422,
            "wrong_task",
            ["hrnet_w32_coco_random", "segmentation"],
        ),
        ({"model": "no_such_model"}, 404, "unknown_model", ["no_such_model"]),
    ],
)
def test_segment_bad_parameters(gateway, demo, fields, status, code, words):
    r = _post(gateway, demo[0], fields=fields)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code
    for w in words:
        assert w in err["message"], (w, err["message"])


def test_segment_not_an_image(gateway):
    r = _post(gateway, b"this is plain text, not a picture", name="notes.txt")
    assert r.status_code == 415, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_image" and "image" in err["message"]
