"""Model-repository changes without a restart (service/reload.py, ``POST /admin/reload``,
SIGHUP) on real ONNX Runtime sessions of tiny constant models (tests/tiny_onnx.py): each
``pose_*`` model's heatmaps equal one number everywhere, so every keypoint score of its ``/pose``
answer is that number and tells which model (version) served the request.
"""

from __future__ import annotations

import shutil
import signal
import threading
import time

import cv2
import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings

pytest.importorskip("onnx")
from tests.tiny_onnx import write_constant_pose_entry as _entry
from tests.tiny_onnx import write_constant_pose_onnx

KEY = {"X-API-Key": "s3cret"}
PNG = cv2.imencode(".png", np.full((100, 100, 3), 100, np.uint8))[1].tobytes()


def _scores(client, model: str) -> list[float]:
    r = client.post(
        "/pose",
        files={"image": ("a.png", PNG)},
        data={"boxes": "[[10, 10, 50, 50]]", "model": model},
    )
    assert r.status_code == 200, r.text
    return [k[2] for k in r.json()["persons"][0]["keypoints"]]


@pytest.fixture()
def repo(tmp_path):
    _entry(tmp_path, "pose_a", 0.3)
    return tmp_path


def _app(repo, **kw):
    return create_app(
        Settings(
            model_repository=repo,
            default_pose_model="pose_a",
            default_detector_model="",
            admin_api_key="s3cret",
            pose_max_concurrency=1,
            **kw,
        )
    )


def _reload(client, status: int = 200) -> dict:
    r = client.post("/admin/reload", headers=KEY)
    assert r.status_code == status, r.text
    return r.json()


def test_reload_needs_the_admin_key(repo):
    with TestClient(_app(repo)) as client:
        for headers in ({}, {"X-API-Key": "wrong"}):
            r = client.post("/admin/reload", headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
            assert r.headers["www-authenticate"] == "Bearer"
        assert _reload(client)["unchanged"] == ["pose_a"]
        bearer = client.post("/admin/reload", headers={"Authorization": "Bearer s3cret"})
        assert bearer.status_code == 200 and bearer.json()["unchanged"] == ["pose_a"]
    with TestClient(create_app(Settings(model_repository=repo, default_detector_model=""))) as c:
        r = c.post("/admin/reload", headers=KEY)  # no key configured: disabled
        assert r.status_code == 403 and r.json()["error"]["code"] == "admin_disabled"


def test_new_model_appears_and_removed_model_goes(repo):
    with TestClient(_app(repo)) as client:
        assert (
            client.post(
                "/pose",
                files={"image": ("a.png", PNG)},
                data={"boxes": "[[10, 10, 50, 50]]", "model": "pose_b"},
            ).status_code
            == 404
        )
        _entry(repo, "pose_b", 0.6)
        report = _reload(client)
        assert report == {
            "added": ["pose_b"],
            "updated": [],
            "removed": [],
            "unchanged": ["pose_a"],
            "refused": {},
        }
        assert [m["name"] for m in client.get("/models").json()["models"]] == ["pose_a", "pose_b"]
        assert client.get("/readyz").status_code == 200
        assert _scores(client, "pose_b") == pytest.approx([0.6, 0.6])
        assert _scores(client, "pose_a") == pytest.approx([0.3, 0.3])

        shutil.rmtree(repo / "pose_b")
        assert _reload(client)["removed"] == ["pose_b"]
        r = client.post(
            "/pose",
            files={"image": ("a.png", PNG)},
            data={"boxes": "[[10, 10, 50, 50]]", "model": "pose_b"},
        )
        assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_model"


def test_changed_model_is_swapped(repo):
    with TestClient(_app(repo)) as client:
        assert _scores(client, "pose_a") == pytest.approx([0.3, 0.3])
        _entry(repo, "pose_a", 0.7)
        assert _reload(client)["updated"] == ["pose_a"]
        assert _scores(client, "pose_a") == pytest.approx([0.7, 0.7])
        assert _reload(client)["unchanged"] == ["pose_a"]  # nothing changed since


@pytest.mark.parametrize(
    "breakage, reason",
    [
        ("garbage_onnx", "ONNX Runtime cannot load"),
        ("missing_onnx", "model.onnx is missing"),
        ("invalid_card", "invalid model card"),
        ("renamed_input", "lacks the tensors image"),
    ],
)
def test_broken_entry_is_refused_and_old_one_keeps_serving(repo, breakage, reason):
    with TestClient(_app(repo)) as client:
        onnx_path = repo / "pose_a" / "1" / "model.onnx"
        if breakage == "garbage_onnx":
            onnx_path.write_bytes(b"not an onnx file")
        elif breakage == "missing_onnx":
            onnx_path.unlink()
        elif breakage == "invalid_card":
            (repo / "pose_a" / "card.json").write_text('{"name": "pose_a", "task": ')
        else:  # a valid ONNX whose input is not the 'image' the card names
            write_constant_pose_onnx(onnx_path, 0.9, input_name="pixels")
        # a broken *new* entry beside it is refused too, and a good new one still lands
        (repo / "pose_x").mkdir()
        (repo / "pose_x" / "card.json").write_text("{}")
        _entry(repo, "pose_b", 0.6)

        body = _reload(client, 422)
        assert body["error"]["code"] == "reload_refused"
        assert set(body["refused"]) == {"pose_a", "pose_x"}
        assert reason in body["refused"]["pose_a"] and reason in body["error"]["message"]
        assert "invalid model card" in body["refused"]["pose_x"]
        assert body["added"] == ["pose_b"] and body["updated"] == []
        assert _scores(client, "pose_a") == pytest.approx([0.3, 0.3])  # the old one serves
        assert _scores(client, "pose_b") == pytest.approx([0.6, 0.6])
        assert [m["name"] for m in client.get("/models").json()["models"]] == ["pose_a", "pose_b"]

        _entry(repo, "pose_a", 0.7)  # fixed: the next reload takes it
        shutil.rmtree(repo / "pose_x")
        assert _reload(client)["updated"] == ["pose_a"]
        assert _scores(client, "pose_a") == pytest.approx([0.7, 0.7])


def test_in_flight_request_completes_on_the_old_session(repo):
    """A request admitted before the swap (waiting for the one /pose slot, so its inference runs
    only after the reload) is answered by the old model; the next one by the new."""
    app = _app(repo)
    with TestClient(app) as client:
        slot = app.state.endpoint_limits["pose"]  # pose_max_concurrency=1
        client.portal.call(slot.acquire)  # hold the slot: requests queue behind it
        result = {}
        t = threading.Thread(target=lambda: result.update(scores=_scores(client, "pose_a")))
        t.start()
        deadline = time.monotonic() + 10
        while app.state.drain.in_flight < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)  # the request's form is parsed and it waits for the slot
        assert app.state.drain.in_flight == 1 and "scores" not in result
        old_backend = app.state.backend

        _entry(repo, "pose_a", 0.7)
        assert _reload(client)["updated"] == ["pose_a"]
        assert app.state.backend is not old_backend
        assert "pose_a" in old_backend.sessions  # the old session is untouched
        client.portal.call(slot.release)
        t.join(timeout=30)
        assert result["scores"] == pytest.approx([0.3, 0.3])
        assert _scores(client, "pose_a") == pytest.approx([0.7, 0.7])


def test_sighup_reloads_a_real_gateway_process(repo, tmp_path):
    from benchmarks.bench_pose import start_gateway_process

    url, proc = start_gateway_process(
        repo,
        env={
            "HRNET_DEFAULT_POSE_MODEL": "pose_a",
            "HRNET_DEFAULT_DETECTOR_MODEL": "",
            "HRNET_SHUTDOWN_DRAIN_S": "0",
        },
        log_path=tmp_path / "gateway.log",
    )
    try:
        _entry(repo, "pose_b", 0.6)
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        names: list[str] = []
        while names != ["pose_a", "pose_b"] and time.monotonic() < deadline:
            names = [m["name"] for m in httpx.get(url + "/models", timeout=5).json()["models"]]
            time.sleep(0.1)
        assert names == ["pose_a", "pose_b"]
        assert _scores(httpx.Client(base_url=url, timeout=30), "pose_b") == pytest.approx(
            [0.6, 0.6]
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
