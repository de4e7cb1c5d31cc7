"""``POST /pose`` through the real gateway app (embedded ONNX Runtime) with the shared real models."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings


@pytest.fixture(scope="module")
def client(shared_repo):
    settings = Settings(model_repository=shared_repo, max_image_pixels=1000 * 1000, max_boxes=10)
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture(scope="module")
def coco(shared):
    root = shared / "data" / "mmpose_tests" / "coco"
    return root, json.loads((root / "test_coco.json").read_text())


def _jpeg(path) -> bytes:
    return path.read_bytes()


def test_models_health_ready(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200
    models = {m["name"]: m for m in client.get("/models").json()["models"]}
    assert models["pp_tinypose_256x192"]["task"] == "topdown_pose"
    assert models["rtmdet_nano_person_320"]["task"] == "detection"
    assert all(m["ready"] for m in models.values())


def test_pose_given_boxes_lands_on_annotations(client, coco):
    """GT boxes in, keypoints out: each labelled keypoint lies within a few pixels' OKS of its GT."""
    root, ann = coco
    img = next(i for i in ann["images"] if i["file_name"] == "000000196141.jpg")
    people = [
        a for a in ann["annotations"] if a["image_id"] == img["id"] and a["num_keypoints"] > 0
    ]
    boxes = [a["bbox"] for a in people]
    r = client.post(
        "/pose",
        files={"image": ("x.jpg", _jpeg(root / img["file_name"]))},
        data={"boxes": json.dumps(boxes), "flip_test": "true"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["box_source"] == "given" and body["flip_test"] is True
    assert body["image_size"] == [img["width"], img["height"]]
    assert len(body["persons"]) == len(people)
    assert len(body["keypoint_names"]) == 17 and body["keypoint_names"][0] == "nose"
    for person, a in zip(body["persons"], people):
        np.testing.assert_allclose(person["bbox"], a["bbox"], atol=1e-2)
        kp = np.asarray(person["keypoints"])
        gt = np.asarray(a["keypoints"], dtype=float).reshape(-1, 3)
        vis = gt[:, 2] > 0
        err = np.linalg.norm(kp[vis, :2] - gt[vis, :2], axis=1)
        # median error below 5% of the box diagonal: the keypoints land on the person
        assert np.median(err) < 0.05 * np.hypot(*a["bbox"][2:]), err
        assert 0 < person["score"] <= 1
    for stage in ("decode_image", "preprocess", "inference", "decode_heatmaps", "total"):
        assert body["timing_ms"][stage] >= 0


def test_pose_with_detector_finds_the_large_people(client, coco):
    """RTMDet-nano finds the four large people of 000000196141.jpg (shared README: scores 0.69-0.86)."""
    root, ann = coco
    img = next(i for i in ann["images"] if i["file_name"] == "000000196141.jpg")
    r = client.post("/pose", files={"image": ("x.jpg", _jpeg(root / img["file_name"]))})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["box_source"] == "detector"
    persons = body["persons"]
    # the four annotated people (the fifth annotation, 17x32 px with no keypoints, is not sought)
    large = [a for a in ann["annotations"] if a["image_id"] == img["id"] and a["num_keypoints"] > 0]
    assert len(large) == 4 and len(persons) == 4

    def iou(a, b):
        ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
        iw = max(0.0, min(ax2, bx2) - max(a[0], b[0]))
        ih = max(0.0, min(ay2, by2) - max(a[1], b[1]))
        inter = iw * ih
        return inter / (a[2] * a[3] + b[2] * b[3] - inter)

    for a in large:
        best = max(persons, key=lambda p: iou(p["bbox"], a["bbox"]))
        assert iou(best["bbox"], a["bbox"]) > 0.6
        assert 0.65 < best["bbox_score"] < 0.9
        gt = np.asarray(a["keypoints"], float).reshape(-1, 3)
        kp = np.asarray(best["keypoints"])
        vis = gt[:, 2] > 0
        assert np.median(np.linalg.norm(kp[vis, :2] - gt[vis, :2], axis=1)) < 0.05 * np.hypot(
            *a["bbox"][2:]
        )


def test_xyxy_equals_xywh(client, coco):
    root, ann = coco
    a = ann["annotations"][0]
    img = next(i for i in ann["images"] if i["id"] == a["image_id"])
    x, y, w, h = a["bbox"]
    data = _jpeg(root / img["file_name"])
    r1 = client.post(
        "/pose", files={"image": ("x.jpg", data)}, data={"boxes": json.dumps([[x, y, w, h]])}
    )
    r2 = client.post(
        "/pose",
        files={"image": ("x.jpg", data)},
        data={"boxes": json.dumps([[x, y, x + w, y + h]]), "box_format": "xyxy"},
    )
    assert r1.status_code == r2.status_code == 200
    np.testing.assert_allclose(
        r1.json()["persons"][0]["keypoints"], r2.json()["persons"][0]["keypoints"], atol=1e-3
    )


# ---------------------------------------------------------------- bad input -> documented 4xx


def _png(w=64, h=48) -> bytes:
    return cv2.imencode(".png", np.full((h, w, 3), 127, np.uint8))[1].tobytes()


@pytest.mark.parametrize(
    "payload,status,code",
    [
        (b"this is not an image", 415, "invalid_image"),
        (b"", 415, "invalid_image"),
    ],
)
def test_not_an_image(client, payload, status, code):
    r = client.post("/pose", files={"image": ("x.jpg", payload)}, data={"boxes": "[[0,0,10,10]]"})
    assert r.status_code == status and r.json()["error"]["code"] == code


def test_truncated_jpeg(client, coco):
    root, ann = coco
    data = _jpeg(root / ann["images"][0]["file_name"])
    r = client.post(
        "/pose", files={"image": ("x.jpg", data[: len(data) // 2])}, data={"boxes": "[[0,0,10,10]]"}
    )
    assert r.status_code == 415
    assert "truncated" in r.json()["error"]["message"]


def test_truncated_png(client):
    data = cv2.imencode(".png", np.random.default_rng(0).integers(0, 255, (48, 64, 3), np.uint8))[
        1
    ].tobytes()
    r = client.post(
        "/pose", files={"image": ("x.png", data[:200])}, data={"boxes": "[[0,0,10,10]]"}
    )
    assert r.status_code == 415


@pytest.mark.parametrize(
    "boxes,fmt,fragment",
    [
        ("[[10, 10, 0, 20]]", "xywh", "zero or negative area"),
        ("[[10, 10, 5, 5]]", "xyxy", "zero or negative area"),
        ("[[10, NaN, 5, 5]]", "xywh", "non-finite"),
        ("[[10, 10, Infinity, 5]]", "xywh", "non-finite"),
        ("[[500, 500, 20, 20]]", "xywh", "entirely outside"),
        ("[[-50, -50, 20, 20]]", "xywh", "entirely outside"),
        ("[[1, 2, 3]]", "xywh", "4 numbers"),
        ('[[1, 2, 3, "a"]]', "xywh", "non-numeric"),
        ("{not json", "xywh", "not valid JSON"),
        ('{"a": 1}', "xywh", "JSON list"),
        ("[[1, 1, 10, 10, 1.5]]", "xywh", "score"),
        ("[[0, 0, 1e300, 1e300]]", "xywh", "beyond"),
        ("[[0, 0, 1e-30, 1e-30]]", "xywh", "smaller than 1 pixel"),
        ("[[0, 0, 0.5, 20]]", "xywh", "smaller than 1 pixel"),
        (json.dumps([[1, 1, 10, 10]] * 11), "xywh", "at most 10"),
    ],
)
def test_bad_boxes(client, boxes, fmt, fragment):
    r = client.post(
        "/pose", files={"image": ("x.png", _png())}, data={"boxes": boxes, "box_format": fmt}
    )
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_boxes"
    assert fragment in r.json()["error"]["message"]


def test_bad_box_format(client):
    r = client.post(
        "/pose",
        files={"image": ("x.png", _png())},
        data={"boxes": "[[1,1,10,10]]", "box_format": "cxcywh"},
    )
    assert r.status_code == 422 and "box_format" in r.json()["error"]["message"]


def test_unknown_model(client):
    r = client.post("/pose", files={"image": ("x.png", _png())}, data={"model": "nope"})
    assert r.status_code == 404
    assert (
        "nope" in r.json()["error"]["message"]
        and "pp_tinypose_256x192" in r.json()["error"]["message"]
    )


def test_wrong_task_model(client):
    r = client.post(
        "/pose",
        files={"image": ("x.png", _png())},
        data={"model": "rtmdet_nano_person_320", "boxes": "[[1,1,10,10]]"},
    )
    assert r.status_code == 422 and r.json()["error"]["code"] == "wrong_task"


def test_oversized_image(client):
    r = client.post(
        "/pose", files={"image": ("x.png", _png(1200, 900))}, data={"boxes": "[[1,1,10,10]]"}
    )
    assert r.status_code == 413
    assert "1200x900" in r.json()["error"]["message"]


def test_missing_image(client):
    r = client.post("/pose", data={"boxes": "[[1,1,10,10]]"})
    assert r.status_code == 422 and "image" in r.json()["error"]["message"]


def test_bad_flip_flag_and_threshold(client):
    r = client.post("/pose", files={"image": ("x.png", _png())}, data={"flip_test": "maybe"})
    assert r.status_code == 422
    r = client.post("/pose", files={"image": ("x.png", _png())}, data={"score_threshold": "2"})
    assert r.status_code == 422 and "score_threshold" in r.json()["error"]["message"]


def test_no_person_found_is_empty_not_error(client):
    r = client.post("/pose", files={"image": ("x.png", _png())})
    assert r.status_code == 200 and r.json()["persons"] == []


def test_no_detector_configured(shared_repo):
    settings = Settings(model_repository=shared_repo, default_detector_model="")
    with TestClient(create_app(settings)) as c:
        r = c.post("/pose", files={"image": ("x.png", _png())})
    assert r.status_code == 422 and "no person detector" in r.json()["error"]["message"]


def test_unknown_route_and_method_use_the_error_format(client):
    r = client.get("/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = client.get("/pose")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


@pytest.mark.parametrize(
    "encode",
    [
        lambda a: cv2.imencode(".png", a[..., 0])[1].tobytes(),  # grey
        lambda a: cv2.imencode(".png", np.dstack([a, a[..., :1]]))[1].tobytes(),  # with alpha
        lambda a: cv2.imencode(".png", a.astype(np.uint16) * 257)[1].tobytes(),  # 16-bit
        lambda a: cv2.imencode(".webp", a)[1].tobytes(),
        lambda a: cv2.imencode(".bmp", a)[1].tobytes(),
    ],
)
def test_other_image_kinds_decode_to_the_same_size(client, encode):
    a = np.random.default_rng(0).integers(0, 255, (50, 60, 3), np.uint8)
    r = client.post("/pose", files={"image": ("x", encode(a))}, data={"boxes": "[[5, 5, 20, 30]]"})
    assert r.status_code == 200, r.text
    assert r.json()["image_size"] == [60, 50] and len(r.json()["persons"]) == 1
    assert np.isfinite(np.asarray(r.json()["persons"][0]["keypoints"])).all()


def test_openapi_docs_and_metrics(client):
    spec = client.get("/openapi.json").json()
    assert {"/pose", "/segment", "/models", "/healthz", "/readyz"} <= set(spec["paths"])
    form = spec["paths"]["/pose"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert form["schema"]["$ref"].startswith("#/components/schemas/")
    assert client.get("/docs").status_code == 200
    client.get("/healthz")
    text = client.get("/metrics").text
    assert 'hrnet_requests_total{path="/healthz",status="200"}' in text
