"""``/docs`` without internet: a real headless Chromium (Debian's ``chromium`` package, installed by
.ci/run) opens the gateway's Swagger UI with every non-loopback host unreachable (all traffic sent
to a dead proxy, every name but 127.0.0.1 unresolvable). The operations are listed in the DOM only
if Swagger UI's JavaScript ran, i.e. came from the gateway (fastapi-offline's assets); the same
check on FastAPI's stock page (CDN assets) finds none, so the check can fail.

Chromium missing: skipped, or a failure with ``HRNET_REQUIRE_CHROMIUM=1`` (CI).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time

import pytest

from benchmarks.bench_pose import _free_port, start_local_gateway
from tests.fake_cards import pose_card, write_repository

pytest.importorskip("onnx")
from tests.tiny_onnx import write_constant_pose_onnx

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None and os.environ.get("HRNET_REQUIRE_CHROMIUM", "") in ("", "0"):
    pytest.skip("chromium is not installed (apt-get install chromium)", allow_module_level=True)

OFFLINE_FLAGS = [
    "--proxy-server=127.0.0.1:9",  # loopback bypasses proxies; the rest goes nowhere
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
]


def _dump_dom(url: str) -> str:
    assert CHROMIUM is not None, "HRNET_REQUIRE_CHROMIUM=1 but chromium is not installed"
    out = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            *OFFLINE_FLAGS,
            "--dump-dom",
            "--virtual-time-budget=10000",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def _operations(dom: str) -> list[str]:
    """Paths of the operations Swagger UI rendered."""
    return re.findall(r'class="opblock-summary-path" data-path="([^"]+)"', dom)


def test_docs_render_from_local_assets_without_network(tmp_path, monkeypatch):
    write_repository(tmp_path, [pose_card("pose_a")])
    write_constant_pose_onnx(tmp_path / "pose_a" / "1" / "model.onnx", 0.3)
    monkeypatch.setenv("HRNET_DEFAULT_POSE_MODEL", "pose_a")
    monkeypatch.setenv("HRNET_DEFAULT_DETECTOR_MODEL", "")
    url, server = start_local_gateway(tmp_path)
    try:
        dom = _dump_dom(url + "/docs")
    finally:
        server.should_exit = True
    ops = _operations(dom)
    assert {"/pose", "/segment", "/models", "/readyz", "/admin/reload"} <= set(ops), ops
    assert "cdn.jsdelivr.net" not in dom


def test_stock_cdn_docs_do_not_render_offline():
    """Control: FastAPI's default /docs (assets from a CDN) shows no operation under the same
    flags, so the test above would catch a page that needs the internet."""
    import uvicorn
    from fastapi import FastAPI

    app = FastAPI()

    @app.post("/pose")
    async def pose() -> dict:
        return {}

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        dom = _dump_dom(url + "/docs")
    finally:
        server.should_exit = True
    assert "swagger-ui" in dom and "cdn.jsdelivr.net" in dom
    assert _operations(dom) == []
