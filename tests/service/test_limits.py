"""Request limits (review finding 10): detector boxes cut to max_boxes, body size limits before and
while reading, oversized form fields (service.limits, service.routers.pose).
"""

from __future__ import annotations

import asyncio
import json

import pytest
from fastapi import HTTPException
from fastapi.testclient import TestClient

from service.app import create_app
from service.limits import BodySizeLimit
from tests.support.gateway import (
    FakeBackend,
    backend,
    client,
    error_of,
    gateway_settings,
    png_image,
    repo,
)


def test_detector_boxes_are_cut_to_max_boxes(repo):
    with TestClient(create_app(gateway_settings(repo, max_boxes=1), backend=FakeBackend())) as c:
        r = c.post("/pose", files={"image": ("x.png", png_image())}, data={"score_threshold": "0"})
    assert r.status_code == 200
    # of the two surviving boxes (0.9, 0.5), the top-scoring one
    assert [p["bbox_score"] for p in r.json()["persons"]] == pytest.approx([0.9])


def test_content_length_over_limit_is_413_before_the_endpoint(repo, monkeypatch):
    import service.routers.uploads as uploads

    monkeypatch.setattr(uploads, "decode_image", lambda *a: pytest.fail("endpoint ran"))
    with TestClient(
        create_app(gateway_settings(repo, max_upload_bytes=1000), backend=FakeBackend())
    ) as c:
        big = b"\x89PNG" + b"\x00" * ((1 << 20) + 1000)  # > 1000 + 1 MiB with the framing
        r = c.post("/pose", files={"image": ("x.png", big)}, data={"boxes": "[[1,1,5,5]]"})
        assert "exceeds the limit of 1049576 bytes" in error_of(r, 413, "payload_too_large")


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
    chunks = iter(
        [
            {"type": "http.request", "body": b"x" * 8, "more_body": True},
            {"type": "http.request", "body": b"x" * 8, "more_body": False},
        ]
    )

    async def app(scope, receive, send):
        while (await receive()).get("more_body"):
            pass

    async def receive():
        return next(chunks)

    async def send(message):
        pass

    with pytest.raises(HTTPException) as exc:  # 16 bytes > 10: refused at the second chunk
        asyncio.run(
            BodySizeLimit(app, max_bytes=10)({"type": "http", "headers": []}, receive, send)
        )
    assert exc.value.status_code == 413


def test_chunked_upload_over_limit_is_413(repo):
    with TestClient(
        create_app(gateway_settings(repo, max_upload_bytes=1000), backend=FakeBackend())
    ) as c:
        boundary = "b0undary"
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="x"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n"
        ).encode()

        def body():
            yield head
            for _ in range(20):
                yield b"\x00" * 65536  # 1.25 MiB in total, no Content-Length
            yield f"\r\n--{boundary}--\r\n".encode()

        r = c.post(
            "/pose",
            content=body(),
            headers={"content-type": f"multipart/form-data; boundary={boundary}"},
        )
        error_of(r, 413, "payload_too_large")


def test_oversized_form_field_is_413(client):
    r = client.post(
        "/pose",
        files={"image": ("x.png", png_image(8, 8))},
        data={"boxes": "[" + " " * (1 << 20) + "]"},
    )
    assert "exceeded maximum size" in error_of(r, 413, "payload_too_large")
