"""Graceful shutdown of a real ``hrnet-serve`` process (service/lifecycle.py).

A gateway subprocess serves the random-weight HRNet-W32 (about 7 GFLOPs per 256x192 crop, so a
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


def _in_flight(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=5).text
    m = re.search(r"^hrnet_requests_in_flight (\S+)$", text, re.M)
    return float(m.group(1)) if m else -1.0


def test_sigterm_drains_in_flight_requests_and_exits_0(random_repo, shared, tmp_path):
    photo = (shared / "data/samples/coco_val2017_000000000785.jpg").read_bytes()
    url, proc = start_gateway_process(
        random_repo, env={"HRNET_POSE_MAX_CONCURRENCY": "1", "HRNET_SHUTDOWN_DRAIN_S": "2",
                          "HRNET_SHUTDOWN_TIMEOUT_S": "120",
                          "HRNET_DEFAULT_POSE_MODEL": MODEL},
        log_path=tmp_path / "gateway.log")
    try:
        def slow_request(_):
            r = httpx.post(url + "/pose", files={"image": ("p.jpg", photo)},
                           data={"boxes": json.dumps(BOXES), "flip_test": "true"}, timeout=180)
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
            late = httpx.post(url + "/pose", files={"image": ("p.jpg", photo)},
                              data={"boxes": json.dumps(BOXES[:1])}, timeout=5)
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
