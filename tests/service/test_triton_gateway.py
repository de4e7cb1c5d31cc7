"""The gateway on Triton against the gateway on embedded ONNX Runtime (issue #5, gateway level).

A real ``tritonserver`` serves :mod:`export.triton_adapter` entries converted from the
``random_repo`` models this module needs (PP-TinyPose, RTMDet-nano, the random COCO HRNet-W32 and
the random Cityscapes fcn_hr18s). Two gateways run over the same model cards: one embedded
(``backend="onnxruntime"``) and one on Triton (``backend="triton"``). On real photos ``/pose``
(detector + PP-TinyPose, and given boxes on HRNet-W32 with and without flip test) and ``/segment``
(whole and slide) must answer the same numbers. Then Triton is frozen, killed and restarted under
a live Triton gateway: 503 ``backend_unavailable`` with ``Retry-After`` within the configured
deadline, ``/readyz`` 503 while down, and service resumes with the same app (no gateway restart).

Skips only when tritonserver is not installed (``tests/triton_env.sh``); with
``HRNET_REQUIRE_TRITON=1`` (CI) that is a failure instead.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from export.triton_adapter import convert_repository
from service.app import create_app
from service.settings import Settings
from tests.triton_fixtures import find_tritonserver, triton_factory_module

pytestmark = pytest.mark.slow  # end-to-end: a real tritonserver behind a live gateway

if find_tritonserver() is None and os.environ.get("HRNET_REQUIRE_TRITON", "") in ("", "0"):
    # before the session's random_repo export (minutes), which is useless without a server
    pytest.skip(
        "tritonserver not installed: run tests/triton_env.sh (or set HRNET_TRITONSERVER)",
        allow_module_level=True,
    )

POSE = "pp_tinypose_256x192"
DETECTOR = "rtmdet_nano_person_320"
HRNET = "hrnet_w32_coco_random"
SEG = "fcn_hr18s_cityscapes_random"
MODELS = [POSE, DETECTOR, HRNET, SEG]

KPT_TOL_PX = 1e-3
# Scores travel rounded to 5 decimals (service/routers/pose.py): equal raw scores can still land
# one rounding step apart, so the bound is 1e-5 plus float noise of the decimal repr.
SCORE_TOL = 1e-5 + 1e-9
OUTAGE_TIMEOUT_S = 2.0
DEADLINE_MARGIN_S = 3.0  # request path around the backend call (decode, preprocess) on 2 cores

#: measured numbers, printed at the end of the module (run with -s to see them)
MEASURED: dict[str, float] = {}


@pytest.fixture(scope="module", autouse=True)
def _print_measured():
    yield
    if MEASURED:
        print(
            "\n[triton gateway] " + ", ".join(f"{k}={v:.6g}" for k, v in sorted(MEASURED.items()))
        )


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def gateway_repo(random_repo, tmp_path_factory) -> Path:
    """The four models' folders of ``random_repo`` (symlinks): the cards both gateways serve.

    A subset, because the Triton backend waits at start-up for every carded model to be ready
    on Triton, and this module's tritonserver serves only these four."""
    root = tmp_path_factory.mktemp("gateway_repo")
    for name in MODELS:
        (root / name).symlink_to((random_repo / name).resolve(), target_is_directory=True)
    return root


@pytest.fixture(scope="module")
def server(gateway_repo, triton_factory_module, tmp_path_factory):
    """tritonserver on adapter entries converted from the same repository."""
    dst = tmp_path_factory.mktemp("triton_repo")
    assert convert_repository(gateway_repo, dst, models=MODELS) == sorted(MODELS)
    t0 = time.perf_counter()
    srv = triton_factory_module(dst)
    MEASURED["triton_start_s"] = time.perf_counter() - t0
    return srv


def _triton_settings(repo: Path, server, timeout_s: float) -> Settings:
    return Settings(
        backend="triton",
        triton_url=server.grpc_url,
        triton_protocol="grpc",
        triton_timeout_s=timeout_s,
        model_repository=repo,
        default_pose_model=POSE,
        default_detector_model=DETECTOR,
        default_segment_model=SEG,
    )


@pytest.fixture(scope="module")
def embedded(gateway_repo):
    settings = Settings(
        backend="onnxruntime",
        model_repository=gateway_repo,
        default_pose_model=POSE,
        default_detector_model=DETECTOR,
        default_segment_model=SEG,
    )
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture(scope="module")
def triton(gateway_repo, server):
    # generous deadline: whole-image segmentation at 2048x1024 runs on one adapter thread
    with TestClient(create_app(_triton_settings(gateway_repo, server, 120.0))) as client:
        yield client


@pytest.fixture(scope="module")
def photos(shared) -> list[tuple[str, bytes]]:
    paths = sorted((shared / "data" / "samples").glob("*.jpg"))
    paths.append(shared / "data" / "mmpose_tests" / "coco" / "000000196141.jpg")
    assert len(paths) >= 5
    return [(p.name, p.read_bytes()) for p in paths]


@pytest.fixture(scope="module")
def coco_boxes_196141(shared) -> list[list[float]]:
    """The annotated person boxes (xywh, image pixels) of COCO val 196141 in the MMPose test set."""
    ann = json.loads((shared / "data" / "mmpose_tests" / "coco" / "test_coco.json").read_text())
    boxes = [a["bbox"] for a in ann["annotations"] if a["image_id"] == 196141]
    assert len(boxes) >= 2
    return boxes


# ----------------------------------------------------------------------------- helpers


def post_pose(client: TestClient, name: str, data: bytes, **fields):
    form = {
        k: (json.dumps(v) if k == "boxes" else str(v).lower() if isinstance(v, bool) else str(v))
        for k, v in fields.items()
    }
    return client.post("/pose", files={"image": (name, data, "image/jpeg")}, data=form)


def pose_ok(client: TestClient, name: str, data: bytes, **fields) -> dict:
    r = post_pose(client, name, data, **fields)
    assert r.status_code == 200, (r.status_code, r.text[:500])
    return r.json()


def kpt_arrays(body: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(bbox [N,4], bbox_score [N], keypoints [N,K,2], keypoint scores [N,K], score [N])."""
    persons = body["persons"]
    k = len(body["keypoint_names"])
    kp = np.array([p["keypoints"] for p in persons], np.float64).reshape(len(persons), k, 3)
    return (
        np.array([p["bbox"] for p in persons], np.float64).reshape(-1, 4),
        np.array([p["bbox_score"] for p in persons], np.float64),
        kp[..., :2],
        kp[..., 2],
        np.array([p["score"] for p in persons], np.float64),
    )


def assert_same_persons(a: dict, b: dict) -> float:
    """Same boxes (1e-3 px), keypoints (1e-3 px) and scores (1e-5); returns the max keypoint diff."""
    assert len(a["persons"]) == len(b["persons"])
    ba, bsa, ka, ksa, sa = kpt_arrays(a)
    bb, bsb, kb, ksb, sb = kpt_arrays(b)
    np.testing.assert_allclose(ba, bb, rtol=0, atol=KPT_TOL_PX)
    np.testing.assert_allclose(ka, kb, rtol=0, atol=KPT_TOL_PX)
    np.testing.assert_allclose(bsa, bsb, rtol=0, atol=SCORE_TOL)
    np.testing.assert_allclose(ksa, ksb, rtol=0, atol=SCORE_TOL)
    np.testing.assert_allclose(sa, sb, rtol=0, atol=SCORE_TOL)
    return float(np.abs(ka - kb).max()) if ka.size else 0.0


def segment_png(client: TestClient, data: bytes, **fields) -> np.ndarray:
    r = client.post(
        "/segment",
        files={"image": ("demo.png", data, "image/png")},
        data={k: str(v) for k, v in fields.items()},
        headers={"Accept": "image/png"},
    )
    assert r.status_code == 200, (r.status_code, r.text[:500])
    assert r.headers["content-type"] == "image/png"
    label = cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_UNCHANGED)
    assert label is not None and label.dtype == np.uint8
    return label


def triton_samples(server, model: str) -> int:
    """Samples (batch items) Triton has run for ``model`` so far (``inference_count`` statistic)."""
    with urllib.request.urlopen(
        f"http://{server.http_url}/v2/models/{model}/stats", timeout=5
    ) as r:
        return int(json.load(r)["model_stats"][0]["inference_count"])


def poll(fn, attempts: int, pause_s: float):
    """Call ``fn`` until it returns a truthy value, at most ``attempts`` times; returns the last."""
    out = None
    for _ in range(attempts):
        out = fn()
        if out:
            return out
        time.sleep(pause_s)
    return out


# ----------------------------------------------------------------------------- parity


def test_models_report_triton_and_ready(triton):
    r = triton.get("/models")
    assert r.status_code == 200
    body = r.json()
    assert body["backend"] == "triton"
    assert sorted(m["name"] for m in body["models"]) == sorted(MODELS)
    assert all(m["ready"] is True for m in body["models"]), body["models"]
    assert triton.get("/readyz").status_code == 200


def test_pose_detector_tinypose_parity(embedded, triton, server, photos):
    worst, total = 0.0, 0
    det0, pose0 = triton_samples(server, DETECTOR), triton_samples(server, POSE)
    for name, data in photos:
        a = pose_ok(embedded, name, data)
        b = pose_ok(triton, name, data)
        assert a["model"] == b["model"] == POSE
        assert a["box_source"] == b["box_source"] == "detector"
        assert a["image_size"] == b["image_size"]
        worst = max(worst, assert_same_persons(a, b))
        total += len(a["persons"])
    assert total > 0  # the detector found people: the comparison is not vacuous
    # the Triton gateway really ran on Triton: one detector sample per photo, and per person a
    # crop plus its flipped copy (PP-TinyPose's card has flip_test on)
    assert triton_samples(server, DETECTOR) - det0 == len(photos)
    assert triton_samples(server, POSE) - pose0 == 2 * total
    MEASURED["tinypose_max_kpt_diff_px"] = worst
    MEASURED["tinypose_persons"] = total


@pytest.mark.parametrize("flip", [True, False])
def test_pose_given_boxes_hrnet_parity(embedded, triton, server, photos, coco_boxes_196141, flip):
    data = dict(photos)
    h, w = 346, 218  # mmdeploy_human-pose.jpg, 218x346
    jobs = [
        ("000000196141.jpg", coco_boxes_196141),
        # the whole image, an inner box and one reaching past the left/top border
        ("mmdeploy_human-pose.jpg", [[0, 0, w, h], [30.5, 40.25, 120, 200], [-20, -10, 100, 150]]),
    ]
    worst = 0.0
    n0 = triton_samples(server, HRNET)
    for name, boxes in jobs:
        a = pose_ok(embedded, name, data[name], model=HRNET, boxes=boxes, flip_test=flip)
        b = pose_ok(triton, name, data[name], model=HRNET, boxes=boxes, flip_test=flip)
        for body in (a, b):
            assert body["model"] == HRNET and body["flip_test"] is flip
            assert body["box_source"] == "given" and len(body["persons"]) == len(boxes)
        worst = max(worst, assert_same_persons(a, b))
    # one network sample per box, two with flip test (the crop and its mirror)
    assert triton_samples(server, HRNET) - n0 == sum(len(b) for _, b in jobs) * (2 if flip else 1)
    MEASURED[f"hrnet_flip_{flip}_max_kpt_diff_px"] = worst


def test_segment_parity_whole_and_slide(embedded, triton, server, shared):
    data = (shared / "data" / "cityscapes_sample" / "demo.png").read_bytes()
    # 1024x512 resized to the card's 2048x1024: whole = one view; slide with the 1024x1024 crop
    # and 768 stride = 1 row x ((2048 - 1024 + 767) // 768 + 1) = 3 windows
    for mode, views in (("whole", 1), ("slide", 3)):
        n0 = triton_samples(server, SEG)
        a = segment_png(embedded, data, model=SEG, mode=mode)
        b = segment_png(triton, data, model=SEG, mode=mode)
        assert triton_samples(server, SEG) - n0 == views
        assert a.shape == b.shape == (512, 1024)  # demo.png is 1024x512; label map at input size
        assert a.max() < 19 and b.max() < 19
        assert len(np.unique(a)) > 1  # not a constant map: equality is a real check
        MEASURED[f"segment_{mode}_pixels_differing"] = float((a != b).sum())
        np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- outage


def test_outage_503_and_recovery_without_gateway_restart(gateway_repo, server, photos):
    """Freeze, kill and restart Triton under one live Triton gateway (short deadline)."""
    name, data = photos[-1]  # COCO val 196141: several people
    settings = _triton_settings(gateway_repo, server, OUTAGE_TIMEOUT_S)
    bound = OUTAGE_TIMEOUT_S + DEADLINE_MARGIN_S

    def unavailable(r) -> None:
        assert r.status_code == 503, (r.status_code, r.text[:300])
        assert r.json()["error"]["code"] == "backend_unavailable"
        assert int(r.headers["Retry-After"]) >= 1

    with TestClient(create_app(settings)) as client:
        before = pose_ok(client, name, data)
        assert len(before["persons"]) > 0

        # 1. hung Triton (SIGSTOP): the deadline fires, 503 within timeout + margin
        server.pause()
        try:
            t0 = time.perf_counter()
            r = post_pose(client, name, data)
            MEASURED["hung_time_to_503_s"] = elapsed = time.perf_counter() - t0
            unavailable(r)
            assert elapsed < bound, elapsed
            t0 = time.perf_counter()
            assert client.get("/readyz").status_code == 503
            assert time.perf_counter() - t0 < bound

            # 2. killed while a request is in flight (sent to the frozen server)
            box: dict = {}
            worker = threading.Thread(
                target=lambda: box.update(r=post_pose(client, name, data), t=time.perf_counter())
            )
            t0 = time.perf_counter()
            worker.start()
            time.sleep(0.5)
            t_kill = time.perf_counter()
            server.kill()
        finally:
            server.resume()
        worker.join(timeout=3 * bound)
        assert not worker.is_alive(), "request hung after Triton was killed"
        MEASURED["inflight_kill_to_503_s"] = box["t"] - t_kill
        unavailable(box["r"])
        assert box["t"] - t0 < bound

        # 3. Triton down: /pose and /readyz answer 503 at once-ish, never hang
        t0 = time.perf_counter()
        r = post_pose(client, name, data)
        MEASURED["killed_time_to_503_s"] = elapsed = time.perf_counter() - t0
        unavailable(r)
        assert elapsed < bound, elapsed
        r = client.get("/readyz")
        assert r.status_code == 503 and "Retry-After" in r.headers
        assert client.get("/healthz").status_code == 200  # the gateway itself is alive

        # 4. restart on the same ports: the SAME app serves again, bounded polling
        t0 = time.perf_counter()
        server.restart()
        t_up = time.perf_counter()
        MEASURED["triton_restart_s"] = t_up - t0

        def try_pose():
            r = post_pose(client, name, data)
            if r.status_code == 503:
                return None
            assert r.status_code == 200, (r.status_code, r.text[:300])
            return r.json()

        after = poll(try_pose, attempts=80, pause_s=0.25)
        assert after is not None, "service did not resume after Triton restarted"
        MEASURED["recover_after_restart_s"] = time.perf_counter() - t_up
        assert_same_persons(before, after)

        assert poll(lambda: client.get("/readyz").status_code == 200, attempts=40, pause_s=0.25)
        MEASURED["readyz_200_after_restart_s"] = time.perf_counter() - t_up
        models = client.get("/models").json()
        assert models["backend"] == "triton" and all(m["ready"] for m in models["models"])
