"""Failure isolation, API keys, CORS, model-name safety, request ids, access logs and metrics,
through the real gateway app and the real embedded ONNX Runtime backend on tiny hand-made models.

``toy_pose`` (:func:`tests.tiny_onnx.write_failing_pose_onnx`) pools the 16x12 input to 8x6
heatmaps and adds ``[0.0][peak > 250]``: a crop with a pixel above 250 makes ONNX Runtime's
Gather index its one-element table out of bounds, a genuine ORT runtime error for that request
only.
``broken`` is a model whose ONNX file ONNX Runtime refuses to load.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from service.app import create_app
from service.auth import configured_keys, key_matches
from service.cards import CodecSpec, Normalization, TensorSpec
from service.observability import (
    JsonFormatter,
    accepted_request_id,
    parse_server_timing,
    server_timing,
)
from service.settings import Settings
from tests.fake_cards import pose_card, seg_card, write_repository
from tests.tiny_onnx import write_failing_pose_onnx

pytest.importorskip("onnx")


def _toy_card(name: str):
    return pose_card(
        name,
        input_size=(12, 16),
        inputs=[TensorSpec(name="image", dims=[3, 16, 12])],
        outputs=[TensorSpec(name="heatmaps", dims=[2, 8, 6])],
        normalization=Normalization(mean=(0, 0, 0), std=(1, 1, 1), channel_order="bgr"),
        codec=CodecSpec(input_size=(12, 16), heatmap_size=(6, 8)),
        flip_test=False,
    )


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    root = write_repository(
        tmp_path_factory.mktemp("reliability_repo"),
        [
            _toy_card("toy_pose"),
            _toy_card("broken"),
            seg_card("toy_seg", ["a", "b"], scale=(64, 64)),
        ],
    )
    write_failing_pose_onnx(root / "toy_pose" / "1" / "model.onnx")
    (root / "broken" / "1").mkdir()
    (root / "broken" / "1" / "model.onnx").write_bytes(b"this is not an ONNX model")
    return root


def _settings(repo: Path, **kw) -> Settings:
    base = dict(
        model_repository=repo,
        default_pose_model="toy_pose",
        default_detector_model="",
        default_segment_model="toy_seg",
        pose_max_concurrency=2,
    )
    base.update(kw)
    return Settings(**base)


@pytest.fixture(scope="module")
def client(repo):
    with TestClient(create_app(_settings(repo))) as c:
        yield c


def _png(value: int, w: int = 48, h: int = 64) -> bytes:
    return cv2.imencode(".png", np.full((h, w, 3), value, np.uint8))[1].tobytes()


def _pose(c, value: int = 100, **data):
    data.setdefault("boxes", "[[8, 8, 24, 32]]")
    return c.post("/pose", files={"image": ("x.png", _png(value))}, data=data)


def _error(r, status: int, code: str) -> str:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    assert r.json()["error"]["code"] == code, r.text
    return r.json()["error"]["message"]


def _sample(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# ----------------------------------------------------------------------------- failure isolation


def test_ort_error_fails_that_request_only(client):
    before = _sample("hrnet_errors_total", route="/pose", code="inference_failed")
    assert _pose(client, 100).status_code == 200
    # more failures than the endpoint has concurrency slots: each slot comes back
    for _ in range(5):
        msg = _error(_pose(client, 255), 500, "inference_failed")
        assert "toy_pose" in msg and "Gather" not in msg  # ORT's own words stay in the log
    r = _pose(client, 100)
    assert r.status_code == 200, r.text
    assert len(r.json()["persons"][0]["keypoints"]) == 2
    assert client.get("/healthz").status_code == 200
    assert _sample("hrnet_errors_total", route="/pose", code="inference_failed") == before + 5


def test_unloadable_model_is_503_and_the_others_serve(client):
    r = _pose(client, 100, model="broken")
    assert "'broken' is not loaded" in _error(r, 503, "backend_unavailable")
    assert r.headers["Retry-After"] == "30"
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["models_not_ready"] == ["broken", "toy_seg"]
    assert _pose(client, 100).status_code == 200


# ----------------------------------------------------------------------------- API keys


@pytest.fixture(scope="module")
def keyed(repo):
    with TestClient(create_app(_settings(repo, api_key="key-one, key-two"))) as c:
        yield c


def test_keys_parse_and_compare():
    s = Settings(api_key=" a ,, b")
    assert configured_keys(s) == ["a", "b"] and configured_keys(Settings()) == []
    assert key_matches("b", ["a", "b"]) and not key_matches("c", ["a", "b"])
    assert not key_matches("a", []) and not key_matches("", ["a"])
    assert "a ,, b" not in repr(s)  # a SecretStr: never printed


def test_every_key_is_compared_in_constant_time(monkeypatch):
    import service.auth as auth

    calls = []
    real = auth.hmac.compare_digest

    def spy(a, b):
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    assert key_matches("first", ["first", "second", "a-much-longer-third-key"])
    assert calls == [(32, 32)] * 3  # every key, as equal-length SHA-256 digests


@pytest.mark.parametrize(
    "headers, message",
    [
        ({}, "an API key is required"),
        ({"Authorization": "Bearer nope"}, "not valid"),
        ({"X-API-Key": "key-one "}, "not valid"),
        ({"Authorization": "Basic a2V5LW9uZQ=="}, "an API key is required"),
    ],
)
def test_missing_or_wrong_key_is_401(keyed, headers, message):
    before = _sample("hrnet_errors_total", route="/pose", code="unauthorized")
    r = keyed.post(
        "/pose",
        files={"image": ("x.png", _png(100))},
        data={"boxes": "[[8,8,24,32]]"},
        headers=headers,
    )
    assert message in _error(r, 401, "unauthorized")
    assert r.headers["WWW-Authenticate"] == "Bearer"
    assert _sample("hrnet_errors_total", route="/pose", code="unauthorized") == before + 1
    _error(keyed.get("/models", headers=headers), 401, "unauthorized")
    _error(
        keyed.post("/segment", files={"image": ("x.png", _png(100))}, headers=headers),
        401,
        "unauthorized",
    )


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer key-two"},
        {"X-API-Key": "key-one"},
        {"Authorization": "Bearer wrong", "X-API-Key": "key-two"},
    ],
)
def test_a_right_key_passes(keyed, headers):
    assert _pose(keyed, 100).status_code == 401  # no key sent
    r = keyed.post(
        "/pose",
        files={"image": ("x.png", _png(100))},
        data={"boxes": "[[8,8,24,32]]"},
        headers=headers,
    )
    assert r.status_code == 200, r.text
    assert keyed.get("/models", headers=headers).status_code == 200


def test_eval_and_bench_clients_send_the_key(keyed, monkeypatch):
    from benchmarks.eval_client import api_key_headers

    monkeypatch.setenv("HRNET_API_KEY", " key-two ,key-one")
    headers = api_key_headers()
    assert headers == {"X-API-Key": "key-two"} and api_key_headers("x") == {"X-API-Key": "x"}
    assert keyed.get("/models", headers=headers).status_code == 200
    monkeypatch.delenv("HRNET_API_KEY")
    assert api_key_headers() == {}


def test_health_ready_metrics_docs_stay_open(keyed, repo):
    assert keyed.get("/healthz").status_code == 200
    assert keyed.get("/readyz").status_code == 503  # not ready (broken model), but not 401
    assert keyed.get("/metrics").status_code == 200
    assert keyed.get("/openapi.json").status_code == 200
    with TestClient(create_app(_settings(repo, api_key="k", metrics_require_api_key=True))) as c:
        _error(c.get("/metrics"), 401, "unauthorized")
        assert c.get("/metrics", headers={"X-API-Key": "k"}).status_code == 200


def test_openapi_declares_the_security_schemes(client):
    spec = client.get("/openapi.json").json()
    schemes = spec["components"]["securitySchemes"]
    assert schemes["BearerKey"] == {
        "type": "http",
        "scheme": "bearer",
        "description": schemes["BearerKey"]["description"],
    }
    assert schemes["ApiKeyHeader"]["type"] == "apiKey"
    assert schemes["ApiKeyHeader"]["in"] == "header"
    assert schemes["ApiKeyHeader"]["name"] == "X-API-Key"
    for path, method in (("/pose", "post"), ("/segment", "post"), ("/models", "get")):
        assert {"BearerKey": []} in spec["paths"][path][method]["security"], path
    for path in ("/healthz", "/readyz"):
        assert "security" not in spec["paths"][path]["get"], path


# ----------------------------------------------------------------------------- CORS


def test_cors_is_off_by_default(client):
    r = client.get("/healthz", headers={"Origin": "https://app.example"})
    assert "access-control-allow-origin" not in r.headers
    pre = client.options(
        "/pose", headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    )
    assert "access-control-allow-origin" not in pre.headers


def test_cors_allow_list(repo):
    settings = _settings(repo, cors_allow_origins="https://app.example, https://b.example")
    with TestClient(create_app(settings)) as c:
        pre = c.options(
            "/pose",
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "x-api-key",
            },
        )
        assert pre.status_code == 200
        assert pre.headers["access-control-allow-origin"] == "https://app.example"
        assert "x-api-key" in pre.headers["access-control-allow-headers"].lower()
        r = c.get("/healthz", headers={"Origin": "https://b.example"})
        assert r.headers["access-control-allow-origin"] == "https://b.example"
        assert "X-Request-ID" in r.headers["access-control-expose-headers"]
        assert "Server-Timing" in r.headers["access-control-expose-headers"]
        other = c.get("/healthz", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
        bad = c.options(
            "/pose",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        )
        assert bad.status_code == 400 and "access-control-allow-origin" not in bad.headers


# ----------------------------------------------------------------------------- model names


@pytest.fixture()
def outside_model(repo, tmp_path):
    """A loadable model outside the repository (card + ONNX), which a name that reached the file
    system could address."""
    root = write_repository(tmp_path, [_toy_card("evil_model")])
    write_failing_pose_onnx(root / "evil_model" / "1" / "model.onnx")
    return root / "evil_model"


def _traversal_names(repo: Path, outside: Path) -> list[str]:
    rel = os.path.relpath(outside, repo)
    return [
        rel,
        "../" + rel,
        str(outside),
        str(outside) + "/",
        "%2e%2e/" + rel,
        "..%2f" + rel.replace("/", "%2f"),
        "toy_pose\x00",
        "toy_pose\x00/../evil_model",
        "toy_pose/../toy_pose",
        "./toy_pose",
        "..",
        ".",
        "/",
        "\\..\\evil_model",
        "evil_model",
    ]


def test_model_names_never_reach_the_file_system(client, repo, outside_model, monkeypatch):
    import builtins

    touched = []
    real_open, real_stat = builtins.open, os.stat

    def spy_open(file, *a, **k):
        if "evil" in str(file):
            touched.append(file)
        return real_open(file, *a, **k)

    def spy_stat(path, *a, **k):
        if "evil" in str(path):
            touched.append(path)
        return real_stat(path, *a, **k)

    monkeypatch.setattr(builtins, "open", spy_open)
    monkeypatch.setattr(os, "stat", spy_stat)
    for name in _traversal_names(repo, outside_model):
        for field in ("model", "detector"):
            data = {field: name} if field == "model" else {field: name, "boxes": ""}
            r = client.post("/pose", files={"image": ("x.png", _png(100))}, data=data)
            assert "unknown model" in _error(r, 404, "unknown_model"), (field, name)
        r = client.post("/segment", files={"image": ("x.png", _png(100))}, data={"model": name})
        assert "unknown model" in _error(r, 404, "unknown_model"), name
    assert touched == []


def test_unknown_model_message_is_bounded(client):
    r = _pose(client, 100, model="x" * 5000)
    assert len(_error(r, 404, "unknown_model")) < 400


# ----------------------------------------------------------------------------- request ids, logs


@pytest.mark.parametrize(
    "sent, kept",
    [
        ("abc-123_x.y:z", True),
        ("A" * 128, True),
        ("A" * 129, False),
        ("has space", False),
        ("semi;colon", False),
        ("", False),
        ("ünï", False),
    ],
)
def test_request_id_accepted_or_replaced(client, sent, kept):
    assert (accepted_request_id(sent) == sent) is kept
    if sent.isascii():
        r = client.get("/healthz", headers={"X-Request-ID": sent})
        got = r.headers["X-Request-ID"]
        assert got == sent if kept else re.fullmatch(r"[0-9a-f]{32}", got)


def test_request_id_generated_when_absent(client):
    a = client.get("/healthz").headers["X-Request-ID"]
    b = client.get("/healthz").headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", a) and a != b


def _access_lines(caplog) -> list[dict]:
    return [r.fields for r in caplog.records if r.name == "service.access"]


def test_one_access_line_per_request_with_stages(client, caplog):
    caplog.set_level(logging.INFO, logger="service.access")
    r = client.post(
        "/pose",
        files={"image": ("x.png", _png(100))},
        data={"boxes": "[[8, 8, 24, 32], [2, 2, 20, 20]]"},
        headers={"X-Request-ID": "req-42"},
    )
    assert r.status_code == 200
    lines = _access_lines(caplog)
    assert len(lines) == 1
    line = lines[0]
    assert line["route"] == "/pose" and line["method"] == "POST" and line["status"] == 200
    assert (line["model"], line["boxes"], line["people"]) == ("toy_pose", 2, 2)
    assert line["box_source"] == "given" and "error" not in line
    stages = line["latency_ms"]
    for stage in ("decode_image", "preprocess", "inference", "decode_heatmaps", "serialise"):
        assert 0 <= stages[stage] <= stages["total"], stage
    assert r.headers["X-Request-ID"] == "req-42"
    # the same stages and total, in milliseconds, in the Server-Timing header
    assert parse_server_timing(r.headers["Server-Timing"]) == pytest.approx(stages, abs=1e-3)
    assert r.headers["Server-Timing"].endswith(f"total;dur={stages['total']:.3f}")
    access = next(rec for rec in caplog.records if rec.name == "service.access")
    formatted = json.loads(JsonFormatter().format(access))
    assert formatted["message"] == "request" and formatted["latency_ms"] == stages
    assert formatted["status"] == 200 and formatted["boxes"] == 2
    assert formatted["level"] == "INFO" and formatted["ts"].endswith("+00:00")


def test_server_timing_format_and_parse():
    value = server_timing({"decode_image": 1.23449, "inference": 20.0}, 0.0251)
    assert value == "decode_image;dur=1.234, inference;dur=20.000, total;dur=25.100"
    assert parse_server_timing(value) == {"decode_image": 1.234, "inference": 20.0, "total": 25.1}
    # other servers' forms: a description, a quoted duration, an entry without one
    assert parse_server_timing('db;desc="x";dur="3.5", cache, app;DUR=2') == {"db": 3.5, "app": 2.0}
    with pytest.raises(ValueError):
        parse_server_timing("db;dur=fast")


def test_error_responses_carry_server_timing(client):
    r = client.post("/pose", files={"image": ("x.png", _png(100))}, data={"model": "nope"})
    assert r.status_code == 404
    assert set(parse_server_timing(r.headers["Server-Timing"])) >= {"total"}


def test_error_lines_name_the_cause_and_carry_the_request_id(client, caplog):
    caplog.set_level(logging.INFO)
    r = client.post(
        "/pose",
        files={"image": ("x.png", _png(255))},
        data={"boxes": "[[8, 8, 24, 32]]"},
        headers={"X-Request-ID": "req-fail"},
    )
    assert "request id req-fail" in _error(r, 500, "inference_failed")
    line = _access_lines(caplog)[-1]
    assert (line["status"], line["error"], line["model"]) == (500, "inference_failed", "toy_pose")
    failure = next(rec for rec in caplog.records if rec.getMessage().startswith("inference failed"))
    out = json.loads(JsonFormatter().format(failure))
    assert out["request_id"] == "req-fail" and "Gather" in out["message"]


def test_json_formatter_outside_a_request():
    rec = logging.LogRecord("service", logging.WARNING, __file__, 1, "hello %s", ("there",), None)
    out = json.loads(JsonFormatter().format(rec))
    assert out["message"] == "hello there" and out["level"] == "WARNING"
    assert "request_id" not in out


# ----------------------------------------------------------------------------- metrics


def test_stage_histograms_and_error_counters(client):
    def count(stage):
        return _sample("hrnet_stage_seconds_count", route="/pose", stage=stage)

    before = {s: count(s) for s in ("decode_image", "inference", "decode_heatmaps")}
    bad_boxes = _sample("hrnet_errors_total", route="/pose", code="invalid_boxes")
    assert _pose(client, 100).status_code == 200
    _error(_pose(client, 100, boxes="[[1, 2, 3]]"), 422, "invalid_boxes")
    for s, n in before.items():
        # the 422 request also decoded its image, before its boxes were parsed
        assert count(s) == n + (2 if s == "decode_image" else 1), s
    assert _sample("hrnet_errors_total", route="/pose", code="invalid_boxes") == bad_boxes + 1
    text = client.get("/metrics").text
    assert 'hrnet_stage_seconds_bucket{le="0.001",route="/pose",stage="inference"}' in text
    assert 'hrnet_errors_total{code="invalid_boxes",route="/pose"}' in text


def test_admin_key_is_its_own_secret_sent_either_way(repo):
    settings = _settings(repo, api_key="client-key", admin_api_key="admin-key")
    with TestClient(create_app(settings)) as c:
        _error(c.post("/admin/reload", headers={"X-API-Key": "client-key"}), 401, "unauthorized")
        _error(c.post("/admin/reload"), 401, "unauthorized")
        for headers in ({"X-API-Key": "admin-key"}, {"Authorization": "Bearer admin-key"}):
            r = c.post("/admin/reload", headers=headers)
            assert r.status_code == 200, r.text
            assert r.json()["unchanged"] == ["broken", "toy_pose", "toy_seg"]
        # the admin key is not a client key
        _error(c.get("/models", headers={"X-API-Key": "admin-key"}), 401, "unauthorized")
