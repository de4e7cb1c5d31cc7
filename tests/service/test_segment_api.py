"""``POST /segment`` through the gateway app with a fake backend and a temporary model repository."""

from __future__ import annotations

import base64

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.datasets.segmentation import CITYSCAPES
from service.settings import Settings
from tests.fake_cards import pose_card, seg_card, write_repository
from tests.support.fake_backend import FakeBackend, conv_1x1_every_4th


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    seg = seg_card(
        "hrnet_seg",
        [c for c, _ in CITYSCAPES],
        [p for _, p in CITYSCAPES],
        scale=(2048, 1024),
        keep_ratio=True,
        mode="whole",
    )
    return write_repository(
        tmp_path_factory.mktemp("model_repository"), (seg, pose_card("a_pose_model"))
    )


@pytest.fixture(scope="module")
def backend():
    return FakeBackend(conv_1x1_every_4th(19))


@pytest.fixture(scope="module")
def client(repo, backend):
    settings = Settings(
        model_repository=repo, max_image_pixels=1024 * 512, default_segment_model=None
    )
    with TestClient(create_app(settings, backend=backend)) as c:
        yield c


@pytest.fixture(scope="module")
def demo(shared):
    path = shared / "data" / "cityscapes_sample" / "demo.png"
    return path.read_bytes(), cv2.imread(str(path), cv2.IMREAD_COLOR)


@pytest.fixture(scope="module")
def small(shared):
    path = shared / "data" / "cityscapes_sample" / "frankfurt_000000_000294_leftImg8bit.png"
    return path.read_bytes()


def _decode_png(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)


def test_segment_json(client, backend, demo):
    data, img = demo
    backend.calls.clear()
    r = client.post(
        "/segment", files={"image": ("demo.png", data, "image/png")}, data={"model": "hrnet_seg"}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "hrnet_seg"
    assert (body["width"], body["height"]) == (1024, 512)
    assert body["classes"][0] == "road" and len(body["classes"]) == 19
    # keep-ratio resize to (2048, 1024): the 1024x512 photo is doubled for the network
    assert backend.calls == [("hrnet_seg", (1, 3, 1024, 2048))]
    label = _decode_png(base64.b64decode(body["label_png"]))
    assert label.shape == (512, 1024) and label.dtype == np.uint8 and label.max() < 19
    counts = np.bincount(label.ravel(), minlength=19)
    assert body["pixel_counts"] == {body["classes"][i]: int(n) for i, n in enumerate(counts) if n}
    assert sum(body["pixel_counts"].values()) == 512 * 1024
    for stage in ("decode_image", "preprocess", "inference", "postprocess", "total"):
        assert body["timing_ms"][stage] >= 0


def test_segment_png_and_default_model(client, demo):
    data, _ = demo
    # no model field: the only segmentation card of the repository is used
    r_json = client.post("/segment", files={"image": ("demo.png", data)})
    r_png = client.post(
        "/segment", files={"image": ("demo.png", data)}, headers={"Accept": "image/png"}
    )
    assert r_json.status_code == 200 and r_png.status_code == 200, r_png.text
    assert r_png.headers["content-type"] == "image/png"
    label = _decode_png(r_png.content)
    assert label.shape == (512, 1024) and label.dtype == np.uint8
    np.testing.assert_array_equal(label, _decode_png(base64.b64decode(r_json.json()["label_png"])))
    # JSON wins when both are acceptable with the same weight; q-values decide otherwise
    r = client.post(
        "/segment",
        files={"image": ("demo.png", data)},
        headers={"Accept": "application/json, image/png"},
    )
    assert r.headers["content-type"].startswith("application/json")
    r = client.post(
        "/segment",
        files={"image": ("demo.png", data)},
        headers={"Accept": "application/json;q=0.5, image/png"},
    )
    assert r.headers["content-type"] == "image/png"


def test_segment_render_overlay(client, demo):
    data, img = demo
    r = client.post("/segment", files={"image": ("demo.png", data)}, data={"render": "true"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    over = cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_COLOR)
    assert over.shape == (512, 1024, 3)
    label = _decode_png(
        client.post(
            "/segment", files={"image": ("demo.png", data)}, headers={"Accept": "image/png"}
        ).content
    )
    # every pixel is int(photo * 0.5 + palette colour (BGR) * 0.5) of its class
    colour = np.array([p for _, p in CITYSCAPES], np.float64)[:, ::-1][label]
    expected = (img * 0.5 + colour * 0.5).astype(np.uint8)
    np.testing.assert_array_equal(over, expected)


def test_segment_flip_and_multiscale(client, backend, small):
    backend.calls.clear()
    r = client.post(
        "/segment", files={"image": ("f.png", small)}, data={"flip": "true", "scales": "[0.5, 1.0]"}
    )
    assert r.status_code == 200, r.text
    # the 256x128 crop at ratios 0.5 and 1.0 of the image (MMSeg 1.x TTA), each with its mirror
    assert backend.calls == [("hrnet_seg", (2, 3, 64, 128)), ("hrnet_seg", (2, 3, 128, 256))]
    label = _decode_png(base64.b64decode(r.json()["label_png"]))
    assert label.shape == (128, 256)
    backend.calls.clear()
    r = client.post("/segment", files={"image": ("f.png", small)}, data={"scales": "ms"})
    assert r.status_code == 200, r.text
    assert [c[1][2:] for c in backend.calls] == [
        (64, 128),
        (96, 192),
        (128, 256),
        (160, 320),
        (192, 384),
        (224, 448),
    ]


def test_segment_slide_mode(client, backend, small):
    backend.calls.clear()
    r = client.post("/segment", files={"image": ("f.png", small)}, data={"mode": "slide"})
    assert r.status_code == 200, r.text
    # 256x128 -> (2048, 1024) input; default 1024 crops, stride 768: 1 row x 3 columns, sent
    # seg_max_call_pixels // 1024**2 = 2 windows per backend call
    assert backend.calls == [("hrnet_seg", (2, 3, 1024, 1024)), ("hrnet_seg", (1, 3, 1024, 1024))]


@pytest.mark.parametrize(
    "field,value",
    [
        ("mode", "tiles"),
        ("scales", "[0, 1]"),
        ("scales", "[5.0]"),
        ("scales", "[NaN]"),
        ("scales", "[1,1,1,1,1,1,1,1,1]"),
        ("scales", "0.5"),
        ("scales", "big"),
        ("scales", '["1"]'),
        ("scales", "[0.001]"),  # 256x128 at 0.001 is int(0.256 + .5) = 0 pixels wide
    ],
)
def test_segment_invalid_parameters(client, small, field, value):
    r = client.post("/segment", files={"image": ("f.png", small)}, data={field: value})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_parameter"


def test_segment_errors(client, small):
    r = client.post("/segment", files={"image": ("f.png", small)}, data={"flip": "maybe"})
    assert r.status_code == 422
    r = client.post("/segment", files={"image": ("f.png", small)}, data={"model": "nope"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_model"
    r = client.post("/segment", files={"image": ("f.png", small)}, data={"model": "a_pose_model"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "wrong_task"
    r = client.post("/segment", files={"image": ("f.txt", b"not an image")})
    assert r.status_code == 415
    big = cv2.imencode(".png", np.zeros((600, 1024, 3), np.uint8))[1].tobytes()  # > 1024*512 px
    r = client.post("/segment", files={"image": ("big.png", big)})
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"


def test_segment_network_input_limit(client, small, monkeypatch):
    monkeypatch.setattr(client.app.state.settings, "seg_max_input_pixels", 300 * 150)
    # 256x128 at ratio 1.0 = 32768 pixels: fine; at 1.25 = 320x160 = 51200 > 45000: 413
    assert (
        client.post(
            "/segment", files={"image": ("f.png", small)}, data={"scales": "[1.0]"}
        ).status_code
        == 200
    )
    r = client.post("/segment", files={"image": ("f.png", small)}, data={"scales": "[1.0, 1.25]"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
    # the card's own resize to (2048, 1024) is over the limit too
    assert client.post("/segment", files={"image": ("f.png", small)}).status_code == 413


def test_segment_mode_is_checked_by_seg_options_before_decoding(client):
    """One validator for ``mode`` (SegOptions): a bad one is a 422 naming it, before the upload
    is decoded (a non-image file would otherwise be a 415)."""
    from service.pipelines.seg_plan import SegOptions

    with pytest.raises(ValueError, match="unknown mode 'tiles'; expected one of whole, slide"):
        SegOptions(mode="tiles")
    assert SegOptions(mode="slide", flip=True, ratios=(0.5,)).mode == "slide"
    r = client.post("/segment", files={"image": ("f.txt", b"not an image")}, data={"mode": "tiles"})
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_parameter"
    assert err["message"] == "unknown mode 'tiles'; expected one of whole, slide"
