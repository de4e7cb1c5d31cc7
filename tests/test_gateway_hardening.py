"""Regression tests for the gateway hardening review: hostile JSON, detector edge cases and NMS,
decompression bombs, /segment memory and concurrency, work off the event loop, JPEG trailers,
start-up cleanup and request limits.

Most tests run the real app against a fake backend (deterministic outputs, no ONNX) built on a
temporary model repository; a few use the shared real models where the behaviour is about them.
Every expected number is derived by hand in the comments.
"""
from __future__ import annotations

import asyncio
import json
import os
import struct
import subprocess
import sys
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest
from fastapi import HTTPException
from fastapi.testclient import TestClient

from service.app import create_app
from service.backends.base import BackendError, BackendUnavailable
from service.boxes import parse_boxes
from service.cards import (CodecSpec, DetectorSpec, ModelCard, Normalization, SegTestPipeline,
                           TensorSpec, make_card, parse_card)
from service.errors import InvalidBoxes
from service.geometry import (crop_persons, get_udp_warp_matrix, get_warp_matrix, rescale_size,
                              warp_matrices)
from service.imaging import decode_image, header_size, jpeg_is_complete, jpeg_scan
from service.limits import BodySizeLimit
from service.pipelines.detector import filter_detections, nms
from service.pipelines.seg_plan import parse_scales, plan_augmentations
from service.repository import ModelRepository
from service.settings import Settings

from tests.fake_cards import pose_card, seg_card, write_repository
from tests.support.fake_backend import FakeBackend as SupportFakeBackend
from tests.support.fake_backend import conv_1x1_every_4th

REPO_ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- fake models

def _det_card() -> ModelCard:
    return make_card(
        name="fake_det", task="detection", input_size=(320, 320),
        inputs=[TensorSpec(name="input", dims=[3, 320, 320])],
        outputs=[TensorSpec(name="dets", dims=[-1, 5]),
                 TensorSpec(name="labels", dtype="INT64", dims=[-1])],
        normalization=Normalization(mean=(103.53, 116.28, 123.675), std=(57.375, 57.12, 58.395),
                                    channel_order="bgr"),
        detector=DetectorSpec())


# Raw detector rows in network-input pixels. The 640x480 test image letterboxes into 320x320 with
# factor min(320/640, 320/480) = 0.5 -> 320x240, so image pixels are input pixels x 2.
RAW_DETS = np.array([
    [10, 10, 60, 110, 0.9],     # 0 person -> image [20, 20, 120, 220]
    [0, 0, 0, 0, 0.0],          # 1 the graph's all-zero padding row
    [330, 10, 340, 100, 0.8],   # 2 right of the image: x clipped to 640..640, 0 px wide
    [100, 10, 150, 110, 0.7],   # 3 label 1, not a person
    [12, 10, 62, 110, 0.6],     # 4 overlaps 0: (+1) IoU 97*201 / (2*101*201 - 97*201) = 0.924
    [200, 50, 250, 150, 0.5],   # 5 person -> image [400, 100, 500, 300]
    [200.2, 50, 200.4, 150, 0.4],  # 6 0.4 px wide in the image
], np.float32)
RAW_LABELS = np.array([0, 0, 0, 1, 0, 0, 0], np.int64)


class FakeBackend(SupportFakeBackend):
    """Detector: :data:`RAW_DETS`; pose: all-zero heatmaps; segmentation: a fixed 1x1 conv of
    every 4th pixel, ``(N,3,h,w) -> (N,3,ceil(h/4),ceil(w/4))``. Records calls and the loop thread;
    with ``seg_wait_s`` a segmentation call waits (up to that long) until two have been in flight
    at once, and ``max_active`` tells how many were."""

    def __init__(self):
        super().__init__(conv_1x1_every_4th(3), models={
            "fake_det": lambda x: {"dets": RAW_DETS[None].copy(), "labels": RAW_LABELS[None].copy()},
            "fake_pose": lambda x: {"heatmaps": np.zeros((len(x), 2, 64, 48), np.float32)}})
        self.active = self.max_active = 0
        self.seg_wait_s = 0.0

    async def infer(self, model, inputs, outputs=None):
        if model in self.models:
            return await super().infer(model, inputs, outputs)
        (x,) = inputs.values()
        self.record(model, x)
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            waited = 0.0
            while self.seg_wait_s and self.max_active < 2 and waited < self.seg_wait_s:
                await asyncio.sleep(0.01)
                waited += 0.01
        finally:
            self.active -= 1
        return {self.output: self.fn(np.asarray(x))}


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    cards = (pose_card("fake_pose", flip_indices=[1, 0], flip_test=False), _det_card(),
             seg_card("fake_seg", ["a", "b", "c"], scale=(2048, 1024)),
             seg_card("fake_seg_slide", ["a", "b", "c"], crop_size=(16, 16), stride=(12, 12)))
    return write_repository(tmp_path_factory.mktemp("hardening_repo"), cards)


def _settings(repo, **kw) -> Settings:
    base = dict(model_repository=repo, default_pose_model="fake_pose",
                default_detector_model="fake_det", default_segment_model="fake_seg")
    base.update(kw)
    return Settings(**base)


@pytest.fixture(scope="module")
def backend():
    return FakeBackend()


@pytest.fixture(scope="module")
def client(repo, backend):
    with TestClient(create_app(_settings(repo), backend=backend)) as c:
        yield c


def _png(w=640, h=480) -> bytes:
    return cv2.imencode(".png", np.full((h, w, 3), 100, np.uint8))[1].tobytes()


def _error(r, status: int, code: str) -> str:
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code, r.text
    return r.json()["error"]["message"]


# ----------------------------------------------------------------------------- 1. hostile JSON

@pytest.mark.parametrize("boxes, fragment", [
    ("[" * 50000 + "]" * 50000, "nested too deeply"),
    (json.dumps([[10 ** 400, 0, 10, 10]]), "too large for a float"),
    ("[[" + "1" * 5000 + ", 0, 10, 10]]", "number is too long"),
])
def test_hostile_boxes_json_is_422(client, boxes, fragment):
    r = client.post("/pose", files={"image": ("x.png", _png())}, data={"boxes": boxes})
    assert fragment in _error(r, 422, "invalid_boxes")


def test_parse_boxes_hostile_json_direct():
    for text in ("[" * 50000 + "]" * 50000, "[[" + "9" * 5000 + ", 0, 1, 1]]",
                 json.dumps([[0, 0, -10 ** 400, 1]])):
        with pytest.raises(InvalidBoxes):
            parse_boxes(text, "xywh", (100, 100), max_boxes=100000)
    # a field longer than 1000 characters per allowed box is refused before parsing
    with pytest.raises(InvalidBoxes, match="at most 2000"):
        parse_boxes(" " * 2001 + "[]", "xywh", (100, 100), max_boxes=2)


@pytest.mark.parametrize("scales", [
    "[" * 50000 + "]" * 50000,        # over the 1000-character bound of the field
    "[" * 400 + "]" * 400,            # within it: parses, then "[[...]] is not a number"
    "[" + "1" * 5000 + "]",
    json.dumps([10 ** 400]),
])
def test_hostile_scales_json_is_422(client, scales):
    r = client.post("/segment", files={"image": ("x.png", _png(8, 8))}, data={"scales": scales})
    _error(r, 422, "invalid_parameter")


def test_parse_scales_rejects_huge_integer():
    with pytest.raises(ValueError, match="too large"):
        parse_scales([10 ** 400])


def test_load_json_field_turns_parser_failures_into_value_errors():
    from service.forms import load_json_field

    with pytest.raises(ValueError, match="nested too deeply"):  # RecursionError inside json
        load_json_field("[" * 100000 + "]" * 100000)
    with pytest.raises(ValueError, match="number is too long"):  # int_max_str_digits (4300)
        load_json_field("[" + "7" * 4301 + "]")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_json_field("[1,")
    assert load_json_field("[" + "7" * 4300 + "]") == [int("7" * 4300)]


# ----------------------------------------------------------------------------- 2. threshold 0, geometry

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
    d = filter_detections(RAW_DETS, RAW_LABELS, (0.5, 0.5), (640, 480), score_threshold=0.0,
                          person_label=0, nms_threshold=1.0, max_detections=100)
    np.testing.assert_allclose(d.scores, [0.9, 0.6, 0.5])
    np.testing.assert_allclose(d.boxes[1], [24, 20, 124, 220])


def test_pose_with_threshold_zero_is_not_a_500(client):
    r = client.post("/pose", files={"image": ("x.png", _png())}, data={"score_threshold": "0"})
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


@pytest.mark.parametrize("scale", [(0.0, 10.0), (10.0, 0.0), (-5.0, 10.0), (np.nan, 10.0)])
def test_warp_matrices_reject_non_positive_scale(scale):
    with pytest.raises(ValueError, match="finite and positive"):
        warp_matrices(np.array([[5.0, 5.0]]), np.array([scale]), (192, 256))
    with pytest.raises(ValueError, match="finite and positive"):
        warp_matrices(np.array([[5.0, 5.0]]), np.array([scale]), (192, 256), use_udp=True)
    with pytest.raises(ValueError, match="finite and positive"):
        get_warp_matrix((5.0, 5.0), scale, 0.0, (192, 256))
    with pytest.raises(ValueError, match="finite and positive"):
        get_udp_warp_matrix((5.0, 5.0), scale, 0.0, (192, 256))
    with pytest.raises(ValueError):
        crop_persons(np.zeros((10, 10, 3), np.uint8), np.array([[5.0, 5.0]]), np.array([scale]),
                     (192, 256))


# ----------------------------------------------------------------------------- 3. person NMS

def test_nms_hand_made_boxes():
    boxes = np.array([
        [0, 0, 9, 9],        # A 0.9: area (9-0+1)^2 = 100
        [5, 0, 14, 9],       # B 0.8: inter with A 5*10 = 50, IoU 50/150 = 0.333 > 0.3 -> gone
        [7, 0, 16, 9],       # C 0.7: IoU with A 30/170 = 0.176 -> kept (B, which overlaps it by
                             #   80/120, was suppressed first, so it suppresses nothing)
        [100, 100, 109, 109],  # D 0.95: alone, first
        [0, 0, 2, 9],        # F 0.6: inside A, IoU exactly 30/100 = 0.3 -> kept (<=)
    ], np.float32)
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
    d = _det_card().model_dump(mode="json")
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
    iw = np.clip(np.minimum(b[:, None, 2], b[None, :, 2]) - np.maximum(b[:, None, 0], b[None, :, 0]) + 1, 0, None)
    ih = np.clip(np.minimum(b[:, None, 3], b[None, :, 3]) - np.maximum(b[:, None, 1], b[None, :, 1]) + 1, 0, None)
    iou = iw * ih / (area[:, None] + area[None, :] - iw * ih)
    np.fill_diagonal(iou, 0)
    assert iou.max() <= 0.3 + 1e-6
    assert 0 < len(after.boxes) < len(before.boxes)
    assert (np.diff(after.scores) <= 0).all()


def test_no_person_is_an_empty_list_not_a_whole_image_box(client):
    # every raw row is at most 0.9: above that nothing is a person; MMPose's inferencer would
    # fall back to one whole-image box, we answer no persons
    r = client.post("/pose", files={"image": ("x.png", _png())}, data={"score_threshold": "0.95"})
    assert r.status_code == 200 and r.json()["persons"] == []


# ----------------------------------------------------------------------------- 4. decompression bombs

def _webp(fourcc: bytes, body: bytes) -> bytes:
    chunk = fourcc + len(body).to_bytes(4, "little") + body + (b"\x00" if len(body) % 2 else b"")
    return b"RIFF" + (4 + len(chunk)).to_bytes(4, "little") + b"WEBP" + chunk


def webp_vp8l(w: int, h: int) -> bytes:
    bits = (w - 1) | ((h - 1) << 14)
    return _webp(b"VP8L", b"\x2f" + bits.to_bytes(4, "little") + b"\x00" * 11)


def webp_vp8(w: int, h: int) -> bytes:
    return _webp(b"VP8 ", b"\x00\x00\x00\x9d\x01\x2a" + w.to_bytes(2, "little")
                 + h.to_bytes(2, "little") + b"\x00" * 10)


def webp_vp8x(w: int, h: int) -> bytes:
    return _webp(b"VP8X", b"\x00\x00\x00\x00" + (w - 1).to_bytes(3, "little")
                 + (h - 1).to_bytes(3, "little"))


def jpeg_with_fill_bytes(w: int, h: int) -> bytes:
    """SOI, APP0, three 0xFF fill bytes, SOF0 claiming w x h, SOS, a little data, EOI."""
    app0 = b"\xff\xe0" + (16).to_bytes(2, "big") + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof = b"\xff\xff\xff\xff\xc0" + (17).to_bytes(2, "big") + b"\x08" + h.to_bytes(2, "big") \
        + w.to_bytes(2, "big") + b"\x03\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    sos = b"\xff\xda" + (12).to_bytes(2, "big") + b"\x03\x01\x00\x02\x11\x03\x11\x00\x3f\x00"
    return b"\xff\xd8" + app0 + sof + sos + b"\x12\x34" * 8 + b"\xff\xd9"


def png_header(w: int, h: int) -> bytes:
    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("data, size", [
    (webp_vp8l(16383, 16383), (16383, 16383)),
    (webp_vp8(16383, 16383), (16383, 16383)),
    (webp_vp8x(20000, 30000), (20000, 30000)),
    (jpeg_with_fill_bytes(12000, 12000), (12000, 12000)),
    (png_header(20000, 20000), (20000, 20000)),
])
def test_bomb_headers_are_413_without_decoding(client, monkeypatch, data, size):
    fmt = {b"RIFF": "webp", b"\xff\xd8\xff\xe0": "jpeg", b"\x89PNG": "png"}
    assert header_size(data, next(v for k, v in fmt.items() if data.startswith(k))) == size

    def no_decode(*a, **k):
        raise AssertionError("cv2.imdecode must not be called for an oversized header")

    monkeypatch.setattr(cv2, "imdecode", no_decode)
    r = client.post("/pose", files={"image": ("x", data)}, data={"boxes": "[[1, 1, 5, 5]]"})
    assert f"{size[0]}x{size[1]}" in _error(r, 413, "payload_too_large")


def test_real_files_header_sizes():
    a = np.random.default_rng(0).integers(0, 255, (50, 61, 4), np.uint8)
    for img, ext, params in [(a[..., :3], ".webp", [cv2.IMWRITE_WEBP_QUALITY, 80]),   # VP8
                             (a, ".webp", [cv2.IMWRITE_WEBP_QUALITY, 80]),            # VP8X
                             (a[..., :3], ".webp", [cv2.IMWRITE_WEBP_QUALITY, 101]),  # VP8L
                             (a[..., :3], ".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]),
                             (a[..., :3], ".bmp", [])]:
        data = cv2.imencode(ext, img, params)[1].tobytes()
        fmt = {".webp": "webp", ".jpg": "jpeg", ".bmp": "bmp"}[ext]
        assert header_size(data, fmt) == (61, 50), (ext, params)
    # a fill byte before the SOF of a real JPEG: libjpeg decodes it, the header walk finds SOF
    jpg = cv2.imencode(".jpg", a[..., :3])[1].tobytes()
    i = jpg.find(b"\xff\xc0")
    filled = jpg[:i] + b"\xff\xff" + jpg[i:]
    assert header_size(filled, "jpeg") == (61, 50)
    assert decode_image(filled, 10_000).shape == (50, 61, 3)
    # BITMAPCOREHEADER (12 bytes): 16-bit width/height
    core = b"BM" + (26 + 3).to_bytes(4, "little") + b"\x00" * 4 + (26).to_bytes(4, "little") \
        + (12).to_bytes(4, "little") + (7).to_bytes(2, "little") + (5).to_bytes(2, "little") \
        + (1).to_bytes(2, "little") + (24).to_bytes(2, "little")
    assert header_size(core, "bmp") == (7, 5)


_SUBPROCESS_ENV = {k: v for k, v in os.environ.items() if k != "OPENCV_IO_MAX_IMAGE_PIXELS"}


def _run_python(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=_SUBPROCESS_ENV,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_opencv_reads_its_pixel_cap_when_the_library_loads_not_lazily():
    code = """
import os, numpy as np
{before}
import cv2
{after}
png = cv2.imencode('.png', np.zeros((20, 20, 3), np.uint8))[1]
try:
    print(cv2.imdecode(png, cv2.IMREAD_COLOR).shape)
except cv2.error:
    print('refused')
"""
    setenv = "os.environ['OPENCV_IO_MAX_IMAGE_PIXELS'] = '100'"
    # 20 x 20 = 400 pixels > 100: refused only when the variable was set before cv2 loaded
    assert _run_python(code.format(before=setenv, after="")) == "refused"
    assert _run_python(code.format(before="", after=setenv)) == "(20, 20, 3)"


def test_undetected_size_is_caught_by_the_opencv_cap():
    """With the header walk disabled, OpenCV's own ceiling (set by ``import service``) turns the
    16383 x 16383 WebP (268 Mpx > 67 Mpx) into a 413, before pixels are allocated."""
    code = f"""
import service.imaging as im
import service
assert service.OPENCV_PIXEL_CAP_ACTIVE
im.header_size = lambda data, fmt: None
try:
    im.decode_image({webp_vp8l(16383, 16383)!r}, 10 ** 12)
    print('decoded')
except im.PayloadTooLarge as exc:
    print('413', exc)
"""
    assert _run_python(code).startswith("413")


# ----------------------------------------------------------------------------- 5./6. /segment

def test_seg_defaults():
    s = Settings()
    assert s.seg_max_input_pixels == 2048 * 1024 * 8 and s.seg_max_call_pixels == 1024 * 1024 * 2
    # MMSeg's Cityscapes ms+flip views (ratios up to 1.75 of 2048x1024) stay in whole mode
    assert s.seg_slide_pixels >= 3584 * 1792
    assert s.seg_max_concurrency == 1 and s.pose_max_concurrency == 16


def test_whole_is_forced_to_slide_above_slide_pixels(repo):
    be = FakeBackend()
    with TestClient(create_app(_settings(repo, seg_slide_pixels=1000, seg_max_call_pixels=1000),
                               backend=be)) as c:
        # 40 x 30 = 1200 network-input pixels (no resize) > 1000: slide, 16x16 windows stride 12:
        # rows max(30-16+11, 0)//12 + 1 = 3, columns max(40-16+11, 0)//12 + 1 = 3 -> 9 crops,
        # sent 1000 // 256 = 3 per backend call
        r = c.post("/segment", files={"image": ("x.png", _png(40, 30))},
                   data={"model": "fake_seg_slide", "mode": "whole"})
        assert r.status_code == 200, r.text
        assert r.headers["x-inference-mode"] == "slide"
        assert be.calls == [("fake_seg_slide", (3, 3, 16, 16))] * 3
        # a random image, split 3+3+3 and then (1199 // 256 = 4 per call) 4+4+1: same label map
        noise = cv2.imencode(".png", np.random.default_rng(1).integers(0, 255, (30, 40, 3), np.uint8))[1]
        r = c.post("/segment", files={"image": ("x.png", noise.tobytes())},
                   data={"model": "fake_seg_slide", "mode": "whole"})
        be.calls.clear()
        c.app.state.settings.seg_max_call_pixels = 1199
        r2 = c.post("/segment", files={"image": ("x.png", noise.tobytes())},
                    data={"model": "fake_seg_slide", "mode": "whole"})
        assert be.calls == [("fake_seg_slide", (4, 3, 16, 16))] * 2 + [("fake_seg_slide", (1, 3, 16, 16))]
        assert r2.json()["label_png"] == r.json()["label_png"]
        c.app.state.settings.seg_max_call_pixels = 1000
        be.calls.clear()
        # 20 x 30 = 600 <= 1000: whole, as asked
        r = c.post("/segment", files={"image": ("x.png", _png(20, 30))},
                   data={"model": "fake_seg_slide", "mode": "whole"})
        assert r.headers["x-inference-mode"] == "whole"
        assert be.calls[-1] == ("fake_seg_slide", (1, 3, 30, 20))


def test_extreme_aspect_ratio_resizes_to_one_pixel(client, backend):
    # mmcv: factor min(2048/20000, 1024/1) = 0.1024; w = int(1 * 0.1024 + 0.5) = 0 -> clamped to 1,
    # h = int(20000 * 0.1024 + 0.5) = 2048
    assert rescale_size((1, 20000), (2048, 1024)) == ((1, 2048), 0.1024)
    assert rescale_size((20000, 1), (2048, 1024)) == ((2048, 1), 0.1024)
    assert plan_augmentations((1, 20000), SegTestPipeline(scale=(2048, 1024)))[0].size_wh == (1, 2048)
    thin = cv2.imencode(".png", np.zeros((20000, 1, 3), np.uint8))[1].tobytes()
    r = client.post("/segment", files={"image": ("x.png", thin)}, headers={"accept": "image/png"})
    assert r.status_code == 200, r.text
    assert backend.calls[-1] == ("fake_seg", (1, 3, 2048, 1))
    label = cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_UNCHANGED)
    assert label.shape == (20000, 1)


def _concurrent_max(repo, limit: int, requests: int, wait_s: float) -> int:
    be = FakeBackend()
    be.seg_wait_s = wait_s  # a seg call waits (up to wait_s) for a second one to be in flight
    settings = _settings(repo, seg_max_concurrency=limit)
    with TestClient(create_app(settings, backend=be)) as c:
        def one(_):
            return c.post("/segment", files={"image": ("x.png", _png(8, 8))},
                          data={"model": "fake_seg_slide"}).status_code
        with ThreadPoolExecutor(requests) as ex:
            assert list(ex.map(one, range(requests))) == [200] * requests
    return be.max_active


def test_segment_concurrency_limit(repo):
    # limit 1: the second request cannot enter while the first waits for it
    assert _concurrent_max(repo, limit=1, requests=2, wait_s=0.5) == 1
    # limit 2: both get in (each waits until the other has arrived)
    assert _concurrent_max(repo, limit=2, requests=2, wait_s=20.0) == 2


# ----------------------------------------------------------------------------- 7. off the event loop

def test_cpu_stages_run_off_the_event_loop(client, backend, monkeypatch):
    import service.pipelines.detector as det
    import service.pipelines.segmentation as seg
    import service.pipelines.topdown as td
    import service.routers.segment as seg_router
    import service.routers.uploads as uploads

    threads: dict[str, set[int]] = {}

    def spy(module, name):
        fn = getattr(module, name)

        def wrapper(*a, **k):
            threads.setdefault(name, set()).add(threading.get_ident())
            return fn(*a, **k)
        monkeypatch.setattr(module, name, wrapper)

    for module, name in [(uploads, "decode_image"), (det, "_prepare"), (td, "prepare_inputs"),
                         (td, "decode_outputs"), (seg, "_prepare"), (seg, "_finish_view"),
                         (seg, "cut_windows"), (seg_router, "overlay"),
                         (seg_router, "_encode_json_parts")]:
        spy(module, name)
    assert client.post("/pose", files={"image": ("x.png", _png())}).status_code == 200
    assert client.post("/segment", files={"image": ("x.png", _png(40, 30))},
                       data={"model": "fake_seg_slide", "mode": "slide"}).status_code == 200
    assert client.post("/segment", files={"image": ("x.png", _png(8, 8))},
                       data={"model": "fake_seg_slide", "render": "true"}).status_code == 200
    assert set(threads) == {"decode_image", "_prepare", "prepare_inputs", "decode_outputs", "_finish_view",
                            "cut_windows", "overlay", "_encode_json_parts"}
    loop = backend.loop_threads
    assert len(loop) == 1
    for name, ids in threads.items():
        assert not ids & loop, f"{name} ran on the event loop thread"


def test_healthz_answers_while_pose_preprocessing_is_busy(client, monkeypatch):
    import service.pipelines.topdown as td

    entered, released = threading.Event(), threading.Event()
    answered_in_time = []
    original = td.prepare_inputs

    def blocking(*a, **k):
        entered.set()
        answered_in_time.append(released.wait(10))  # on the event loop this would block /healthz
        return original(*a, **k)

    monkeypatch.setattr(td, "prepare_inputs", blocking)
    with ThreadPoolExecutor(1) as ex:
        fut = ex.submit(client.post, "/pose", files={"image": ("x.png", _png())},
                        data={"boxes": "[[10, 10, 50, 80]]"})
        assert entered.wait(30)
        assert client.get("/healthz").json() == {"status": "ok"}
        released.set()
        assert fut.result().status_code == 200
    assert answered_in_time == [True]


# ----------------------------------------------------------------------------- 8. JPEG trailers

def test_jpeg_trailing_bytes_accepted_truncation_rejected(client, shared):
    data = (shared / "data" / "samples" / "coco_val2017_000000000785.jpg").read_bytes()
    ok = client.post("/pose", files={"image": ("x.jpg", data + b"\x00\x00trailing bytes")},
                     data={"boxes": "[[10, 10, 100, 200]]"})
    assert ok.status_code == 200, ok.text
    assert ok.json()["image_size"] == [640, 425]
    r = client.post("/pose", files={"image": ("x.jpg", data[: len(data) // 2])},
                    data={"boxes": "[[10, 10, 100, 200]]"})
    assert "truncated" in _error(r, 415, "invalid_image")


def test_exif_thumbnail_eoi_does_not_hide_truncation(shared):
    """An APP1 segment carrying a complete thumbnail (its own SOS and EOI) before the main image:
    the main scan is found by walking segments, so a truncated main image is still caught (a plain
    ``find(FFDA)`` would stop at the thumbnail's SOS and accept it)."""
    data = (shared / "data" / "samples" / "coco_val2017_000000000785.jpg").read_bytes()
    thumb = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
    payload = b"Exif\x00\x00" + thumb
    app1 = b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload
    full = data[:2] + app1 + data[2:]
    sos = jpeg_scan(full)[1]
    assert sos is not None and sos > 2 + len(app1) and full[sos:sos + 2] == b"\xff\xda"
    assert jpeg_is_complete(full)
    assert jpeg_is_complete(full + b"junk after EOI")
    truncated = full[: sos + (len(full) - sos) // 2]
    assert not jpeg_is_complete(truncated)
    assert full.find(b"\xff\xda") < truncated.rfind(b"\xff\xd9")  # the naive rule would accept


# ----------------------------------------------------------------------------- 9. start-up cleanup

class FailingStart(FakeBackend):
    async def start(self, cards):
        raise RuntimeError("cannot reach the inference server")


def test_lifespan_closes_the_backend_when_start_fails(repo):
    be = FailingStart()
    with pytest.raises(RuntimeError, match="cannot reach"):
        with TestClient(create_app(_settings(repo), backend=be)):
            pass
    assert be.closed


def _toy_pose_card() -> ModelCard:
    return make_card(name="toy_pose", task="topdown_pose", input_size=(12, 16),
                     inputs=[TensorSpec(name="image", dims=[3, 16, 12])],
                     outputs=[TensorSpec(name="heatmaps", dims=[4, 8, 6])], max_batch_size=4,
                     normalization=Normalization(mean=(0, 0, 0), std=(1, 1, 1)),
                     codec=CodecSpec(input_size=(12, 16), heatmap_size=(6, 8)),
                     keypoint_names=["a", "b", "c", "d"])


class FakeTritonClient:
    def __init__(self, batch: int = 4):
        self.batch, self.closed, self.registered = batch, False, []

    async def is_server_ready(self, **kw):
        return True

    async def is_model_ready(self, name, version="", **kw):
        return True

    async def get_model_config(self, name, version="", **kw):
        return {"config": {"name": name, "backend": "onnxruntime", "max_batch_size": self.batch,
                           "input": [{"name": "image", "data_type": "TYPE_FP32", "dims": ["3", "16", "12"]}],
                           "output": [{"name": "heatmaps", "data_type": "TYPE_FP32", "dims": ["4", "8", "6"]}]}}

    async def unregister_system_shared_memory(self, name="", **kw):
        return None

    async def register_system_shared_memory(self, name, key, byte_size, **kw):
        raise RuntimeError("shared memory registration refused")

    async def close(self):
        self.closed = True


def _shm_regions() -> set[str]:
    return {n for n in os.listdir("/dev/shm") if n.startswith(f"hrnet_{os.getpid()}_")}


@pytest.mark.parametrize("batch", [4, 8])
def test_triton_start_failure_closes_client_and_destroys_shm(batch):
    """batch 8 disagrees with the card (TritonModelMismatch before shared memory exists); batch 4
    matches, the shared-memory region is created, and its registration with Triton fails."""
    pytest.importorskip("tritonclient")
    from service.backends.triton import TritonBackend, TritonModelMismatch

    fake = FakeTritonClient(batch)
    be = TritonBackend("127.0.0.1:1", shared_memory=True, startup_timeout_s=0)
    be._make_client = lambda: fake
    before = _shm_regions()
    with pytest.raises(BackendError) as exc:
        asyncio.run(be.start({"toy_pose": _toy_pose_card()}))
    assert isinstance(exc.value, TritonModelMismatch) is (batch == 8)
    if batch == 4:
        assert "registration refused" in str(exc.value)
    assert fake.closed and be._client is None and be._shm is None
    assert _shm_regions() == before


# ----------------------------------------------------------------------------- 10. limits

def test_detector_boxes_are_cut_to_max_boxes(repo):
    with TestClient(create_app(_settings(repo, max_boxes=1), backend=FakeBackend())) as c:
        r = c.post("/pose", files={"image": ("x.png", _png())}, data={"score_threshold": "0"})
    assert r.status_code == 200
    # of the two surviving boxes (0.9, 0.5), the top-scoring one
    assert [p["bbox_score"] for p in r.json()["persons"]] == pytest.approx([0.9])


def test_content_length_over_limit_is_413_before_the_endpoint(repo, monkeypatch):
    import service.routers.uploads as uploads

    monkeypatch.setattr(uploads, "decode_image", lambda *a: pytest.fail("endpoint ran"))
    with TestClient(create_app(_settings(repo, max_upload_bytes=1000), backend=FakeBackend())) as c:
        big = b"\x89PNG" + b"\x00" * ((1 << 20) + 1000)  # > 1000 + 1 MiB with the framing
        r = c.post("/pose", files={"image": ("x.png", big)}, data={"boxes": "[[1,1,5,5]]"})
        assert "exceeds the limit of 1049576 bytes" in _error(r, 413, "payload_too_large")


def test_body_limit_middleware_never_reads_an_oversized_body():
    sent, called = [], []

    async def app(scope, receive, send):
        called.append(True)

    async def receive():
        raise AssertionError("the body must not be read")

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "headers": [(b"content-length", b"11")]}
    asyncio.run(BodySizeLimit(app, max_bytes=10)(scope, receive, send))
    assert not called and sent[0]["status"] == 413
    assert json.loads(sent[1]["body"])["error"]["code"] == "payload_too_large"


def test_body_limit_middleware_counts_a_body_without_length():
    chunks = iter([{"type": "http.request", "body": b"x" * 8, "more_body": True},
                   {"type": "http.request", "body": b"x" * 8, "more_body": False}])

    async def app(scope, receive, send):
        while (await receive()).get("more_body"):
            pass

    async def receive():
        return next(chunks)

    async def send(message):
        pass

    with pytest.raises(HTTPException) as exc:  # 16 bytes > 10: refused at the second chunk
        asyncio.run(BodySizeLimit(app, max_bytes=10)({"type": "http", "headers": []}, receive, send))
    assert exc.value.status_code == 413


def test_chunked_upload_over_limit_is_413(repo):
    with TestClient(create_app(_settings(repo, max_upload_bytes=1000), backend=FakeBackend())) as c:
        boundary = "b0undary"
        head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"x\"\r\n"
                f"Content-Type: application/octet-stream\r\n\r\n").encode()

        def body():
            yield head
            for _ in range(20):
                yield b"\x00" * 65536  # 1.25 MiB in total, no Content-Length
            yield f"\r\n--{boundary}--\r\n".encode()

        r = c.post("/pose", content=body(),
                   headers={"content-type": f"multipart/form-data; boundary={boundary}"})
        _error(r, 413, "payload_too_large")


def test_oversized_form_field_is_413(client):
    r = client.post("/pose", files={"image": ("x.png", _png(8, 8))},
                    data={"boxes": "[" + " " * (1 << 20) + "]"})
    assert "exceeded maximum size" in _error(r, 413, "payload_too_large")


def test_card_without_onnx_is_503(repo):
    # the real embedded backend skips carded models without model.onnx (all of them here)
    with TestClient(create_app(_settings(repo))) as c:
        r = c.post("/pose", files={"image": ("x.png", _png())}, data={"boxes": "[[1, 1, 50, 80]]"})
    assert "fake_pose" in _error(r, 503, "backend_unavailable")
    assert "Retry-After" in r.headers


def test_unknown_model_in_ort_backend_is_still_a_backend_error(repo):
    from service.backends.onnxruntime import OnnxRuntimeBackend

    be = OnnxRuntimeBackend(ModelRepository(repo))
    asyncio.run(be.start())
    with pytest.raises(BackendUnavailable):
        asyncio.run(be.infer("fake_pose", {"image": np.zeros((1, 3, 256, 192), np.float32)}))
    with pytest.raises(BackendError) as exc:
        asyncio.run(be.infer("not_carded", {"image": np.zeros((1, 3, 2, 2), np.float32)}))
    assert not isinstance(exc.value, BackendUnavailable)
    asyncio.run(be.close())


def test_repository_has_no_model_dir():
    assert not hasattr(ModelRepository, "model_dir")
