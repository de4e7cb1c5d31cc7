"""Bottom-up pose through the real gateway: a fixed-seed random HigherHRNet-W32 exported by
``hrnet-export``, served by the embedded ONNX Runtime backend, asked by ``POST /pose`` without boxes,
rendered, and evaluated end to end by ``hrnet-eval`` on the shared COCO photos.

Grouping itself is pinned by hand-made cases in tests/service/test_associative_embedding.py; here
the wiring is checked: parameters, response contract, boxes around the found keypoints, render, eval.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

pytest.importorskip("torch")
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings

MODEL = "higherhrnet_w32_random"
PHOTO = "000000197388.jpg"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bu_repo(shared_repo, tmp_path_factory):
    """The shared models plus a fixed-seed random HigherHRNet-W32 (512) bottom-up model."""
    import shutil

    from export.cli import main as export_main

    repo = tmp_path_factory.mktemp("bu_repo")
    for entry in shared_repo.iterdir():
        if entry.is_dir():
            shutil.copytree(entry, repo / entry.name)
    rc = export_main(
        [
            "--arch",
            "higher_hrnet32_coco_512x512",
            "--random-init",
            "--seed",
            "0",
            "--name",
            MODEL,
            "--model-repository",
            str(repo),
            "--no-check",
            "--exporter",
            "legacy",
        ]
    )
    assert rc == 0
    return repo


@pytest.fixture(scope="module")
def client(bu_repo):
    with TestClient(create_app(Settings(model_repository=bu_repo))) as c:
        yield c


@pytest.fixture(scope="module")
def photo(shared):
    return (shared / "data" / "mmpose_tests" / "coco" / PHOTO).read_bytes()


def _post(client, photo, **fields):
    return client.post("/pose", files={"image": (PHOTO, photo)}, data={"model": MODEL, **fields})


def test_card_is_bottomup(client):
    cards = {m["name"]: m for m in client.get("/models").json()["models"]}
    card = cards[MODEL]
    assert card["task"] == "bottomup_pose" and card["ready"]
    assert [o["name"] for o in card["outputs"]] == ["heatmaps_tags_1_4", "heatmaps_1_2"]
    assert card["bottomup"]["max_num_people"] == 30 and card["bottomup"]["input_size"] == 512


@pytest.mark.parametrize(
    "fields, needle",
    [
        ({"boxes": "[[10, 10, 50, 80]]"}, "'boxes'"),
        ({"detector": "rtmdet_nano_person_320"}, "'detector'"),
        ({"score_threshold": "0.5"}, "'score_threshold'"),
        ({"scales": "[0.5, 2]"}, "scale 1"),
        ({"scales": "[1, -1]"}, "(0, 4]"),
        ({"scales": "bogus"}, "JSON list"),
    ],
)
def test_bottomup_parameter_errors(client, photo, fields, needle):
    r = _post(client, photo, **fields)
    assert r.status_code == 422, r.text
    assert needle in r.json()["error"]["message"]


def test_scales_with_a_topdown_model_is_422(client, photo):
    r = client.post(
        "/pose",
        files={"image": (PHOTO, photo)},
        data={"model": "pp_tinypose_256x192", "scales": "[1]", "boxes": "[[10, 10, 50, 80]]"},
    )
    assert r.status_code == 422 and "bottom-up" in r.json()["error"]["message"]


def _check_people(body, width, height):
    assert body["box_source"] == "bottomup" and body["model"] == MODEL
    assert body["image_size"] == [width, height]
    assert len(body["keypoint_names"]) == 17 and body["keypoint_names"][0] == "nose"
    persons = body["persons"]
    assert persons, "a random-weight model still finds peaks above the 0.1 detection threshold"
    for p in persons:
        kp = np.asarray(p["keypoints"])
        assert kp.shape == (17, 3) and np.isfinite(kp).all()
        found = kp[:, 2] > 0
        assert found.any()
        x, y, w, h = p["bbox"]
        # the box encloses exactly the found keypoints (3-decimal rounding of the response)
        np.testing.assert_allclose([x, y], kp[found, :2].min(0), atol=2e-3)
        np.testing.assert_allclose([x + w, y + h], kp[found, :2].max(0), atol=2e-3)
        assert p["bbox_score"] == p["score"]
        # keypoints lie within the network input's extent, mapped back (unclipped, as upstream):
        # 640x392 -> short side 512, long side 835.9 rounded up to 896, i.e. (896 - 835.9) / 2 *
        # 392 / 512 = 23 px of padding either side along x, none along y (plus a heatmap pixel)
        assert (kp[found, 0] > -23 - 2).all() and (kp[found, 0] < width + 23 + 2).all()
        assert (kp[found, 1] > -2).all() and (kp[found, 1] < height + 2).all()
    return persons


def test_bottomup_pose_flip_default(client, photo):
    r = _post(client, photo)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["flip_test"] is True
    _check_people(body, 640, 392)
    for stage in ("preprocess", "inference", "aggregate", "group", "total"):
        assert body["timing_ms"][stage] >= 0


def test_bottomup_multi_scale_and_render(client, photo):
    r = _post(client, photo, flip_test="false", scales="[1, 0.5]")
    assert r.status_code == 200, r.text
    persons = _check_people(r.json(), 640, 392)

    r = _post(client, photo, flip_test="false", scales="[1, 0.5]", render="true")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.headers["x-persons"] == str(len(persons))
    drawn = cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_COLOR)
    original = cv2.imdecode(np.frombuffer(photo, np.uint8), cv2.IMREAD_COLOR)
    assert drawn.shape == original.shape == (392, 640, 3)
    kp = np.concatenate([np.asarray(p["keypoints"]) for p in persons])
    shown = kp[
        (kp[:, 2] >= 0.3)
        & (kp[:, 0] >= 0)
        & (kp[:, 0] < 639.5)
        & (kp[:, 1] >= 0)
        & (kp[:, 1] < 391.5)
    ]
    if len(shown):  # every confident joint's centre pixel was drawn over
        changed = [
            not np.array_equal(
                drawn[int(round(y)), int(round(x))], original[int(round(y)), int(round(x))]
            )
            for x, y, _ in shown
        ]
        assert np.mean(changed) > 0.9
    assert (drawn != original).any()


def test_eval_job_against_the_bottomup_model(bu_repo, shared, tmp_path):
    """``hrnet-eval --dataset coco`` end to end: no boxes sent, every photo of the set scored."""
    from benchmarks import eval as hrnet_eval
    from benchmarks.bench_pose import start_local_gateway

    url, server = start_local_gateway(bu_repo)
    try:
        root = shared / "data" / "mmpose_tests" / "coco"
        out = tmp_path / "eval"
        rc = hrnet_eval.main(
            [
                "--url",
                url,
                "--model",
                MODEL,
                "--dataset",
                "coco",
                "--ann",
                str(root / "test_coco.json"),
                "--images",
                str(root),
                "--out",
                str(out),
                "--quiet",
                "--no-flip-test",
            ]
        )
    finally:
        server.should_exit = True
    assert rc == 0  # random weights publish nothing to compare with: all images evaluated
    m = json.loads((out / "metrics.json").read_text())
    assert m["config"]["box_source"] == "bottomup"
    assert m["summary"]["evaluated"] == m["summary"]["images"] == 4
    assert 0.0 <= m["metrics"]["AP"] <= 1.0 and "meanOKS" not in m["metrics"]
    results = json.loads((out / "results.json").read_text())
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(results) == sum(len(r["persons"]) for r in records)  # no NMS: every person scored
    assert {r["image_id"] for r in results} <= {r["image_id"] for r in records}
