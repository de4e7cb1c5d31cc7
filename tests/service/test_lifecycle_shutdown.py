"""Graceful shutdown of a real ``hrnet-serve`` process (service/lifecycle.py).

A gateway subprocess serves only the random-weight HRNet-W32 (about 7 GFLOPs per 256x192 crop, so a
request with 4 boxes and flip test runs 8 crops: slow on purpose) one request at a time
(``HRNET_POSE_MAX_CONCURRENCY=1``). SIGTERM arrives while a batch of such requests is in flight:
every one of them must still get its 200 with 4 persons, ``/readyz`` and a new request must get
503 during the drain window, and the process must exit with status 0.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from benchmarks.bench_pose import start_gateway_process

pytestmark = pytest.mark.slow

MODEL = "hrnet_w32_coco_random"
BOXES = [[280, 42, 220, 342], [10, 10, 100, 200], [300, 100, 150, 250], [50, 200, 120, 180]]
N_REQUESTS = 4


@pytest.fixture(scope="module")
def w32_repo(random_repo, tmp_path_factory):
    """A repository holding only the random HRNet-W32 (linked from ``random_repo``): the gateway
    process starts faster than with every random model."""
    repo = tmp_path_factory.mktemp("w32_repo")
    (repo / MODEL).symlink_to(random_repo / MODEL, target_is_directory=True)
    return repo


def _start(repo, tmp_path, **env):
    return start_gateway_process(
        repo,
        env={
            "HRNET_POSE_MAX_CONCURRENCY": "1",
            "HRNET_DEFAULT_POSE_MODEL": MODEL,
            "HRNET_DEFAULT_DETECTOR_MODEL": "",
            **env,
        },
        log_path=tmp_path / "gateway.log",
    )


def _in_flight(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=5).text
    m = re.search(r"^hrnet_requests_in_flight (\S+)$", text, re.M)
    return float(m.group(1)) if m else -1.0


def test_sigterm_drains_in_flight_requests_and_exits_0(w32_repo, shared, tmp_path):
    photo = (shared / "data/samples/coco_val2017_000000000785.jpg").read_bytes()
    url, proc = _start(
        w32_repo, tmp_path, HRNET_SHUTDOWN_DRAIN_S="2", HRNET_SHUTDOWN_TIMEOUT_S="120"
    )
    try:

        def slow_request(_):
            r = httpx.post(
                url + "/pose",
                files={"image": ("p.jpg", photo)},
                data={"boxes": json.dumps(BOXES), "flip_test": "true"},
                timeout=180,
            )
            return r.status_code, r.json(), time.monotonic()

        with ThreadPoolExecutor(N_REQUESTS) as pool:
            futures = [pool.submit(slow_request, i) for i in range(N_REQUESTS)]
            deadline = time.monotonic() + 30
            while _in_flight(url) < N_REQUESTS and time.monotonic() < deadline:
                time.sleep(0.02)
            assert _in_flight(url) == N_REQUESTS  # all admitted, at most one running
            t_signal = time.monotonic()
            proc.send_signal(signal.SIGTERM)

            # the drain window (2 s): the listener still answers, with 503s
            ready = httpx.get(url + "/readyz", timeout=5)
            assert ready.status_code == 503 and ready.json() == {"status": "draining"}
            late = httpx.post(
                url + "/pose",
                files={"image": ("p.jpg", photo)},
                data={"boxes": json.dumps(BOXES[:1])},
                timeout=5,
            )
            assert late.status_code == 503, late.text
            assert late.headers["retry-after"] == "1"
            assert late.json()["error"]["code"] == "shutting_down"
            assert httpx.get(url + "/healthz", timeout=5).status_code == 200

            results = [f.result(timeout=240) for f in futures]
        for status, body, _ in results:
            assert status == 200, body
            assert body["model"] == MODEL and len(body["persons"]) == 4
            assert all(len(p["keypoints"]) == 17 for p in body["persons"])
        # one at a time, so the signal came before the last ones were even started: the drain
        # waited for them
        assert sum(done > t_signal for _, _, done in results) >= 2
        assert proc.wait(timeout=150) == 0
        log = (tmp_path / "gateway.log").read_text()
        assert "SIGTERM: draining" in log and "Finished server process" in log
        with pytest.raises(httpx.ConnectError):  # gone: the port no longer accepts
            httpx.get(url + "/healthz", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_in_flight_wait_is_bounded_by_shutdown_timeout(w32_repo, shared, tmp_path):
    """``HRNET_SHUTDOWN_TIMEOUT_S=1``: requests still running (or queued) 1 s after the drain are
    cancelled by uvicorn, and the process still exits 0 instead of waiting for them."""
    photo = (shared / "data/samples/coco_val2017_000000000785.jpg").read_bytes()
    url, proc = _start(w32_repo, tmp_path, HRNET_SHUTDOWN_DRAIN_S="0", HRNET_SHUTDOWN_TIMEOUT_S="1")
    try:

        def slow_request(_):
            try:
                return httpx.post(
                    url + "/pose",
                    files={"image": ("p.jpg", photo)},
                    data={"boxes": json.dumps(BOXES * 4), "flip_test": "true"},
                    timeout=180,
                ).status_code
            except httpx.HTTPError as exc:  # the connection closed under it
                return type(exc).__name__

        with ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(slow_request, i) for i in range(3)]
            deadline = time.monotonic() + 30
            while _in_flight(url) < 3 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert _in_flight(url) == 3
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0
            outcomes = [f.result(timeout=60) for f in futures]
        assert sum(o != 200 for o in outcomes) >= 2, outcomes  # 3 x 32 crops >> 1 s
        assert "timeout graceful shutdown exceeded" in (tmp_path / "gateway.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ----------------------------------------------------------------------------- in-process pieces


def test_draining_app_answers_503_except_probes(tmp_path):
    """The drain flag alone (no signal): API requests get the JSON 503 with Retry-After and
    Connection: close, /readyz says draining, /healthz and /metrics still answer 200."""
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    app = create_app(Settings(model_repository=tmp_path, default_detector_model=""))
    with TestClient(app) as client:
        assert client.get("/models").status_code == 200
        app.state.drain.begin()
        r = client.post("/pose", files={"image": ("a.png", b"x")})
        assert r.status_code == 503 and r.json()["error"]["code"] == "shutting_down"
        assert r.headers["retry-after"] == "1" and r.headers["connection"] == "close"
        assert client.get("/models").status_code == 503
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json() == {"status": "draining"}
        assert client.get("/healthz").status_code == 200
        assert "hrnet_requests_in_flight 0.0" in client.get("/metrics").text


def test_server_keeps_serving_for_the_drain_window():
    """GatewayServer.on_tick: after SIGTERM it reports 'keep going' until drain_s has passed,
    then uvicorn's own answer (exit); SIGINT has no drain window."""
    import asyncio

    import uvicorn

    from service.lifecycle import Drain, GatewayServer

    async def tick(server):
        return await server.on_tick(1)

    drain = Drain()
    server = GatewayServer(uvicorn.Config(app=None), drain, drain_s=5.0)
    assert asyncio.run(tick(server)) is False  # serving, no signal
    server.handle_exit(signal.SIGTERM, None)
    assert drain.active and server.should_exit
    assert asyncio.run(tick(server)) is False  # inside the 5 s window
    drain.started_at -= 5.0  # the window has passed
    assert asyncio.run(tick(server)) is True
    other = GatewayServer(uvicorn.Config(app=None), Drain(), drain_s=5.0)
    other.handle_exit(signal.SIGINT, None)
    assert not other.drain.active and asyncio.run(tick(other)) is True
