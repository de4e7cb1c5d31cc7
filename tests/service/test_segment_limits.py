"""/segment memory and concurrency (review findings 5, 6): slide above seg_slide_pixels, extreme
aspect ratios, the concurrency limit (service.routers.segment, service.pipelines.segmentation).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
from fastapi.testclient import TestClient

from service.app import create_app
from service.cards import SegTestPipeline
from service.geometry import rescale_size
from service.pipelines.seg_plan import plan_augmentations
from service.settings import Settings
from tests.support.gateway import FakeBackend, backend, client, gateway_settings, png_image, repo


def test_seg_defaults():
    s = Settings()
    assert s.seg_max_input_pixels == 2048 * 1024 * 8 and s.seg_max_call_pixels == 1024 * 1024 * 2
    # MMSeg's Cityscapes ms+flip views (ratios up to 1.75 of 2048x1024) stay in whole mode
    assert s.seg_slide_pixels >= 3584 * 1792
    assert s.seg_max_concurrency == 1 and s.pose_max_concurrency == 8


def test_whole_is_forced_to_slide_above_slide_pixels(repo):
    be = FakeBackend()
    with TestClient(
        create_app(
            gateway_settings(repo, seg_slide_pixels=1000, seg_max_call_pixels=1000), backend=be
        )
    ) as c:
        # 40 x 30 = 1200 network-input pixels (no resize) > 1000: slide, 16x16 windows stride 12:
        # rows max(30-16+11, 0)//12 + 1 = 3, columns max(40-16+11, 0)//12 + 1 = 3 -> 9 crops,
        # sent 1000 // 256 = 3 per backend call
        r = c.post(
            "/segment",
            files={"image": ("x.png", png_image(40, 30))},
            data={"model": "fake_seg_slide", "mode": "whole"},
        )
        assert r.status_code == 200, r.text
        assert r.headers["x-inference-mode"] == "slide"
        assert be.calls == [("fake_seg_slide", (3, 3, 16, 16))] * 3
        # a random image, split 3+3+3 and then (1199 // 256 = 4 per call) 4+4+1: same label map
        noise = cv2.imencode(
            ".png", np.random.default_rng(1).integers(0, 255, (30, 40, 3), np.uint8)
        )[1]
        r = c.post(
            "/segment",
            files={"image": ("x.png", noise.tobytes())},
            data={"model": "fake_seg_slide", "mode": "whole"},
        )
        be.calls.clear()
        c.app.state.settings.seg_max_call_pixels = 1199
        r2 = c.post(
            "/segment",
            files={"image": ("x.png", noise.tobytes())},
            data={"model": "fake_seg_slide", "mode": "whole"},
        )
        assert be.calls == [("fake_seg_slide", (4, 3, 16, 16))] * 2 + [
            ("fake_seg_slide", (1, 3, 16, 16))
        ]
        assert r2.json()["label_png"] == r.json()["label_png"]
        c.app.state.settings.seg_max_call_pixels = 1000
        be.calls.clear()
        # 20 x 30 = 600 <= 1000: whole, as asked
        r = c.post(
            "/segment",
            files={"image": ("x.png", png_image(20, 30))},
            data={"model": "fake_seg_slide", "mode": "whole"},
        )
        assert r.headers["x-inference-mode"] == "whole"
        assert be.calls[-1] == ("fake_seg_slide", (1, 3, 30, 20))


def test_extreme_aspect_ratio_resizes_to_one_pixel(client, backend):
    # mmcv: factor min(2048/20000, 1024/1) = 0.1024; w = int(1 * 0.1024 + 0.5) = 0 -> clamped to 1,
    # h = int(20000 * 0.1024 + 0.5) = 2048
    assert rescale_size((1, 20000), (2048, 1024)) == ((1, 2048), 0.1024)
    assert rescale_size((20000, 1), (2048, 1024)) == ((2048, 1), 0.1024)
    assert plan_augmentations((1, 20000), SegTestPipeline(scale=(2048, 1024)))[0].size_wh == (
        1,
        2048,
    )
    thin = cv2.imencode(".png", np.zeros((20000, 1, 3), np.uint8))[1].tobytes()
    r = client.post("/segment", files={"image": ("x.png", thin)}, headers={"accept": "image/png"})
    assert r.status_code == 200, r.text
    assert backend.calls[-1] == ("fake_seg", (1, 3, 2048, 1))
    label = cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_UNCHANGED)
    assert label.shape == (20000, 1)


def _concurrent_max(repo, limit: int, requests: int, wait_s: float) -> int:
    be = FakeBackend()
    be.seg_wait_s = wait_s  # a seg call waits (up to wait_s) for a second one to be in flight
    settings = gateway_settings(repo, seg_max_concurrency=limit)
    with TestClient(create_app(settings, backend=be)) as c:

        def one(_):
            return c.post(
                "/segment",
                files={"image": ("x.png", png_image(8, 8))},
                data={"model": "fake_seg_slide"},
            ).status_code

        with ThreadPoolExecutor(requests) as ex:
            assert list(ex.map(one, range(requests))) == [200] * requests
    return be.max_active


def test_segment_concurrency_limit(repo):
    # limit 1: the second request cannot enter while the first waits for it
    assert _concurrent_max(repo, limit=1, requests=2, wait_s=0.5) == 1
    # limit 2: both get in (each waits until the other has arrived)
    assert _concurrent_max(repo, limit=2, requests=2, wait_s=20.0) == 2
