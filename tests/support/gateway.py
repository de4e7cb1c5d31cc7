"""The fake gateway of the hardening tests: a model repository of fake cards (pose, detector,
two segmentation models), a fake backend answering them, and the app around it.

Detector rows (:data:`RAW_DETS`) are in network-input pixels; the comments derive the image
boxes by hand. Fixtures ``repo``, ``backend`` and ``client`` are module-scoped: import them into a
test module to use them there.
"""

from __future__ import annotations

import asyncio

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.cards import DetectorSpec, ModelCard, Normalization, TensorSpec, make_card
from service.settings import Settings
from tests.fake_cards import pose_card, seg_card, write_repository
from tests.support.fake_backend import FakeBackend as SupportFakeBackend
from tests.support.fake_backend import conv_1x1_every_4th


def det_card() -> ModelCard:
    return make_card(
        name="fake_det",
        task="detection",
        input_size=(320, 320),
        inputs=[TensorSpec(name="input", dims=[3, 320, 320])],
        outputs=[
            TensorSpec(name="dets", dims=[-1, 5]),
            TensorSpec(name="labels", dtype="INT64", dims=[-1]),
        ],
        normalization=Normalization(
            mean=(103.53, 116.28, 123.675), std=(57.375, 57.12, 58.395), channel_order="bgr"
        ),
        detector=DetectorSpec(),
    )


# Raw detector rows in network-input pixels. The 640x480 test image letterboxes into 320x320 with
# factor min(320/640, 320/480) = 0.5 -> 320x240, so image pixels are input pixels x 2.
RAW_DETS = np.array(
    [
        [10, 10, 60, 110, 0.9],  # 0 person -> image [20, 20, 120, 220]
        [0, 0, 0, 0, 0.0],  # 1 the graph's all-zero padding row
        [330, 10, 340, 100, 0.8],  # 2 right of the image: x clipped to 640..640, 0 px wide
        [100, 10, 150, 110, 0.7],  # 3 label 1, not a person
        [12, 10, 62, 110, 0.6],  # 4 overlaps 0: (+1) IoU 97*201 / (2*101*201 - 97*201) = 0.924
        [200, 50, 250, 150, 0.5],  # 5 person -> image [400, 100, 500, 300]
        [200.2, 50, 200.4, 150, 0.4],  # 6 0.4 px wide in the image
    ],
    np.float32,
)
RAW_LABELS = np.array([0, 0, 0, 1, 0, 0, 0], np.int64)


class FakeBackend(SupportFakeBackend):
    """Detector: :data:`RAW_DETS`; pose: all-zero heatmaps; segmentation: a fixed 1x1 conv of
    every 4th pixel, ``(N,3,h,w) -> (N,3,ceil(h/4),ceil(w/4))``. Records calls and the loop thread;
    with ``seg_wait_s`` a segmentation call waits (up to that long) until two have been in flight
    at once, and ``max_active`` tells how many were."""

    def __init__(self):
        super().__init__(
            conv_1x1_every_4th(3),
            models={
                "fake_det": lambda x: {
                    "dets": RAW_DETS[None].copy(),
                    "labels": RAW_LABELS[None].copy(),
                },
                "fake_pose": lambda x: {"heatmaps": np.zeros((len(x), 2, 64, 48), np.float32)},
            },
        )
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
    cards = (
        pose_card("fake_pose", flip_indices=[1, 0], flip_test=False),
        det_card(),
        seg_card("fake_seg", ["a", "b", "c"], scale=(2048, 1024)),
        seg_card("fake_seg_slide", ["a", "b", "c"], crop_size=(16, 16), stride=(12, 12)),
    )
    return write_repository(tmp_path_factory.mktemp("hardening_repo"), cards)


def gateway_settings(repo, **kw) -> Settings:
    base = dict(
        model_repository=repo,
        default_pose_model="fake_pose",
        default_detector_model="fake_det",
        default_segment_model="fake_seg",
    )
    base.update(kw)
    return Settings(**base)


@pytest.fixture(scope="module")
def backend():
    return FakeBackend()


@pytest.fixture(scope="module")
def client(repo, backend):
    with TestClient(create_app(gateway_settings(repo), backend=backend)) as c:
        yield c


def png_image(w=640, h=480) -> bytes:
    return cv2.imencode(".png", np.full((h, w, 3), 100, np.uint8))[1].tobytes()


def error_of(r, status: int, code: str) -> str:
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code, r.text
    return r.json()["error"]["message"]
