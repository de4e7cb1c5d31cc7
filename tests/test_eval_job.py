"""``hrnet-eval`` end to end against a fake gateway (no model): GT keypoints (or GT + known
offsets) come back from ``/pose``, GT label maps from ``/segment``; the job's metrics, resume,
retries and exit codes are checked against hand-derived values."""
from __future__ import annotations

import base64
import json
import math
import threading
import time
from pathlib import Path

import numpy as np
import pytest

fastapi = pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
cv2 = pytest.importorskip("cv2")

from fastapi import FastAPI, File, Form, Request, UploadFile  # noqa: E402
from fastapi.responses import JSONResponse, Response  # noqa: E402

from benchmarks import eval as hrnet_eval  # noqa: E402
from benchmarks.eval_data import build_pose_items  # noqa: E402

COCO_SIGMAS = np.array([.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07,
                        .87, .87, .89, .89]) / 10.0
COCO_NAMES = ["nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder",
              "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
              "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle"]


class FakeGateway:
    """A tiny stand-in for the gateway, answering per the HTTP contract from ground truth."""

    def __init__(self, shared: Path) -> None:
        self.shared = shared
        self.reset()
        self.app = self._build()

    def reset(self) -> None:
        self.cards: list[dict] = []
        self.anns: dict[str, list[dict]] = {}   # image file name -> annotations
        self.images: dict[str, dict] = {}
        self.offset = lambda ann, kp: kp[:, :2]  # GT keypoints (K, 3) -> returned (K, 2)
        self.pose_calls: list[str] = []
        self.fail_after: int | None = None     # 500 for every /pose request after this many
        self.fail_503_first: int = 0           # 503 for the first n tries of each image
        self.tries: dict[str, int] = {}
        self.labels: dict[str, Path] = {}

    def load_coco(self, ann_path: Path) -> None:
        data = json.loads(ann_path.read_text())
        self.images = {im["file_name"]: im for im in data["images"]}
        by_id = {im["id"]: im["file_name"] for im in data["images"]}
        self.anns = {}
        for a in data["annotations"]:
            self.anns.setdefault(by_id[a["image_id"]], []).append(a)

    def _match(self, fname: str, box: list[float]) -> dict:
        """The annotation whose (clipped) box is closest to the given xyxy box."""
        im = self.images[fname]
        W, H = im["width"], im["height"]
        best, best_d = None, math.inf
        for a in self.anns[fname]:
            x, y, w, h = a["bbox"]
            cands = [[x, y, x + w, y + h],
                     [min(max(x, 0), W - 1), min(max(y, 0), H - 1),
                      min(max(x + w, 0), W - 1), min(max(y + h, 0), H - 1)]]
            for c in cands:
                d = sum(abs(u - v) for u, v in zip(c, box))
                if d < best_d:
                    best, best_d = a, d
        assert best is not None and best_d < 1e-2, (fname, box)
        return best

    def _build(self) -> FastAPI:
        app = FastAPI()

        @app.get("/models")
        async def models():
            return {"models": self.cards}

        @app.post("/pose")
        async def pose(image: UploadFile = File(...), boxes: str = Form(None),
                       box_format: str = Form("xywh"), model: str = Form(None),
                       flip_test: str = Form(None)):
            fname = image.filename
            await image.read()
            self.pose_calls.append(fname)
            self.tries[fname] = self.tries.get(fname, 0) + 1
            if self.fail_after is not None and len(self.pose_calls) > self.fail_after:
                return JSONResponse({"error": {"code": "internal", "message": "down"}}, 500)
            if self.tries[fname] <= self.fail_503_first:
                return JSONResponse({"error": {"code": "unavailable", "message": "busy"}}, 503,
                                    headers={"Retry-After": "0"})
            assert box_format == "xyxy"
            persons = []
            for b in json.loads(boxes):
                a = self._match(fname, b[:4])
                kp = np.asarray(a["keypoints"], dtype=np.float64).reshape(-1, 3)
                xy = self.offset(a, kp)
                sc = (kp[:, 2] > 0).astype(float)  # labelled -> 1, unlabelled -> 0
                persons.append({"bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                                "bbox_score": b[4],
                                "keypoints": np.column_stack([xy, sc]).tolist(),
                                "score": b[4]})
            return {"model": model, "image_size": [1, 1], "flip_test": flip_test == "true",
                    "box_source": "given", "keypoint_names": COCO_NAMES, "skeleton": [],
                    "persons": persons, "timing_ms": {}}

        @app.post("/segment")
        async def segment(request: Request, image: UploadFile = File(...),
                          model: str = Form(None)):
            await image.read()
            lab = cv2.imread(str(self.labels[image.filename]), cv2.IMREAD_UNCHANGED)
            ok, png = cv2.imencode(".png", lab)
            assert ok
            if "image/png" in request.headers.get("accept", ""):
                return Response(png.tobytes(), media_type="image/png")
            return {"label_png": base64.b64encode(png.tobytes()).decode()}

        return app


class ServerThread:
    def __init__(self, app) -> None:
        cfg = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(cfg)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> str:
        self.thread.start()
        t0 = time.monotonic()
        while not self.server.started:
            assert time.monotonic() - t0 < 20, "fake gateway did not start"
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def gateway(shared):
    gw = FakeGateway(shared)
    srv = ServerThread(gw.app)
    gw.url = srv.start()
    yield gw
    srv.stop()


def pose_card(name="fake_pose", metrics=None, k_names=COCO_NAMES, sigmas=None):
    return {"name": name, "task": "topdown_pose", "input_size": [192, 256], "bbox_padding": 1.25,
            "keypoint_names": list(k_names), "sigmas": list(sigmas or []),
            "source": {"metrics": metrics or {}}}


@pytest.fixture
def coco(gateway, shared):
    gateway.reset()
    ann = shared / "data/mmpose_tests/coco/test_coco.json"
    gateway.load_coco(ann)
    gateway.cards = [pose_card()]
    return ann, shared / "data/mmpose_tests/coco"


def shift_to_oks(s):
    """Move each labelled person's keypoints along x so each OKS term (and the OKS) is s."""
    def f(ann, kp):
        xy = kp[:, :2].copy()
        if ann["num_keypoints"] > 0:
            xy[:, 0] += 2 * COCO_SIGMAS * math.sqrt(-2 * ann["area"] * math.log(s))
        return xy
    return f


def run(gw, ann, images, out, *extra):
    argv = ["--url", gw.url, "--model", "fake_pose", "--dataset", "coco", "--ann", str(ann),
            "--images", str(images), "--gt-boxes", "--out", str(out), "--quiet",
            "--backoff", "0.01", *extra]
    return hrnet_eval.main(argv)


def metrics_of(out):
    return json.loads((Path(out) / "metrics.json").read_text())


def test_ground_truth_keypoints_give_ap_one(coco, gateway, tmp_path):
    ann, images = coco
    rc = run(gateway, ann, images, tmp_path / "a", "--reference", "AP=1.0", "AR=1.0")
    m = metrics_of(tmp_path / "a")
    assert rc == 0
    for k in ("AP", "AP50", "AP75", "AR", "AR50"):
        assert m["metrics"][k] == pytest.approx(1.0), k
    assert m["metrics"]["meanOKS"] == pytest.approx(1.0)
    # MMPose's top-down list keeps the 12 non-crowd annotations with keypoints (of 14), in 4 images
    assert sorted(set(gateway.pose_calls)) == sorted(p.name for p in images.glob("*.jpg"))
    results = json.loads((tmp_path / "a" / "results.json").read_text())
    assert len(results) == 12 and all(r["category_id"] == 1 for r in results)
    assert len(results[0]["keypoints"]) == 51


def test_known_oks_gives_derived_ap_and_reference_comparison(coco, gateway, tmp_path):
    # every labelled person has OKS 0.72 -> matched at 0.50..0.70, i.e. 5 of 10 thresholds
    ann, images = coco
    gateway.cards = [pose_card(metrics={"AP": 0.5, "AP .5": 1.0, "AR": 50.0})]
    gateway.offset = shift_to_oks(0.72)
    rc = run(gateway, ann, images, tmp_path / "a")
    m = metrics_of(tmp_path / "a")
    assert m["metrics"]["AP"] == pytest.approx(0.5)
    assert m["metrics"]["AP50"] == pytest.approx(1.0)
    assert m["metrics"]["AP75"] == pytest.approx(0.0)
    assert m["metrics"]["AR"] == pytest.approx(0.5)
    assert m["metrics"]["meanOKS"] == pytest.approx(0.72)
    # the card's published AP 0.5 / AP50 1.0 / AR 50 % agree -> exit 0
    assert rc == 0 and m["within_tolerance"]
    assert m["references"]["AP50"] == 1.0 and m["reference_origin"]["AP50"] == "card"
    assert m["references"]["AR"] == 0.5
    # a command-line reference beyond the tolerance -> exit 1 (predictions reused, no requests)
    n = len(gateway.pose_calls)
    assert run(gateway, ann, images, tmp_path / "a", "--reference", "AP=0.52") == 1
    assert len(gateway.pose_calls) == n
    assert run(gateway, ann, images, tmp_path / "a", "--reference", "AP=0.52",
               "--tolerance", "0.05") == 0


def test_resume_after_failures_matches_uninterrupted_run(coco, gateway, tmp_path):
    ann, images = coco
    gateway.offset = shift_to_oks(0.72)
    assert run(gateway, ann, images, tmp_path / "full") == 0
    full = metrics_of(tmp_path / "full")["metrics"]

    gateway.pose_calls.clear()
    gateway.fail_after = 2  # the gateway breaks after two images
    rc = run(gateway, ann, images, tmp_path / "part", "--concurrency", "1", "--retries", "0")
    assert rc == 3  # incomplete
    part = metrics_of(tmp_path / "part")
    assert part["summary"]["failed"] == 2 and part["summary"]["failures"] == {
        "http_500:internal": 2}
    lines = (tmp_path / "part" / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 2

    gateway.fail_after = None
    gateway.pose_calls.clear()
    assert run(gateway, ann, images, tmp_path / "part") == 0
    assert len(gateway.pose_calls) == 2  # only the two missing images were sent
    keys = [json.loads(x)["key"] for x in
            (tmp_path / "part" / "predictions.jsonl").read_text().splitlines()]
    assert len(keys) == 4 and len(set(keys)) == 4
    assert metrics_of(tmp_path / "part")["metrics"] == full


def test_torn_last_line_and_duplicates_are_tolerated(coco, gateway, tmp_path):
    ann, images = coco
    gateway.offset = shift_to_oks(0.72)
    out = tmp_path / "a"
    assert run(gateway, ann, images, out) == 0
    full = metrics_of(out)["metrics"]
    log = out / "predictions.jsonl"
    data = log.read_bytes()
    lines = data.splitlines(keepends=True)
    # a killed writer: the last line is cut short
    log.write_bytes(b"".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])
    gateway.pose_calls.clear()
    assert run(gateway, ann, images, out) == 0
    assert len(gateway.pose_calls) == 1
    assert metrics_of(out)["metrics"] == full
    assert metrics_of(out)["summary"]["log"]["torn_bytes"] > 0

    # a repeated image (e.g. two runs appending) with different keypoints: the first one counts
    first = json.loads(log.read_text().splitlines()[0])
    for p in first["persons"]:
        p["keypoints"] = [[0.0, 0.0, 1.0]] * 17
    with log.open("a") as f:
        f.write(json.dumps(first) + "\n")
    gateway.pose_calls.clear()
    assert run(gateway, ann, images, out) == 0
    assert gateway.pose_calls == []
    assert metrics_of(out)["metrics"] == full
    assert metrics_of(out)["summary"]["log"]["duplicates"] == 1


def test_503_then_ok_is_retried(coco, gateway, tmp_path):
    ann, images = coco
    gateway.fail_503_first = 2
    rc = run(gateway, ann, images, tmp_path / "a", "--retries", "3")
    m = metrics_of(tmp_path / "a")
    assert rc == 0 and m["metrics"]["AP"] == pytest.approx(1.0)
    assert len(gateway.pose_calls) == 4 * 3  # two 503s then success, per image
    assert m["summary"]["retries"] == {"retry:http_503:unavailable": 8}
    assert m["summary"]["failed"] == 0


def test_retries_exhausted_is_a_failure_by_cause(coco, gateway, tmp_path):
    ann, images = coco
    gateway.fail_503_first = 5
    rc = run(gateway, ann, images, tmp_path / "a", "--retries", "1", "--limit", "2")
    assert rc == 2  # nothing could be evaluated
    gateway.tries.clear()
    gateway.fail_503_first = 0
    assert run(gateway, ann, images, tmp_path / "a", "--limit", "2") == 0


def test_limit_evaluates_a_subset(coco, gateway, tmp_path):
    ann, images = coco
    assert run(gateway, ann, images, tmp_path / "a", "--limit", "1") == 0
    m = metrics_of(tmp_path / "a")
    assert m["summary"]["images"] == 1 and m["metrics"]["AP"] == pytest.approx(1.0)
    assert len(set(gateway.pose_calls)) == 1


def test_many_boxes_are_split_over_requests(coco, gateway, tmp_path):
    # 1, 2, 4 and 5 valid people (keypoints, not crowd) in the four images; 2 boxes per
    # request -> 1+1+2+3
    ann, images = coco
    assert run(gateway, ann, images, tmp_path / "a", "--max-boxes", "2") == 0
    assert len(gateway.pose_calls) == 7
    m = metrics_of(tmp_path / "a")["metrics"]
    assert m["AP"] == pytest.approx(1.0) and m["meanOKS"] == pytest.approx(1.0)


def test_changed_settings_in_same_out_are_refused(coco, gateway, tmp_path):
    ann, images = coco
    assert run(gateway, ann, images, tmp_path / "a", "--limit", "1") == 0
    assert run(gateway, ann, images, tmp_path / "a", "--limit", "1", "--no-flip-test") == 2
    assert run(gateway, ann, images, tmp_path / "a", "--limit", "1", "--no-flip-test",
               "--restart") == 0


def test_unreachable_gateway_or_unknown_model(coco, gateway, tmp_path):
    ann, images = coco
    argv = ["--url", "http://127.0.0.1:9", "--model", "fake_pose", "--dataset", "coco",
            "--ann", str(ann), "--images", str(images), "--gt-boxes", "--out",
            str(tmp_path / "x"), "--quiet", "--retries", "1", "--backoff", "0.01"]
    assert hrnet_eval.main(argv) == 2
    assert hrnet_eval.main(["--url", gateway.url, "--model", "nope", "--dataset", "coco",
                            "--ann", str(ann), "--images", str(images), "--out",
                            str(tmp_path / "y"), "--quiet"]) == 2
    assert hrnet_eval.main(["--bogus"]) == 2


def test_detection_boxes_are_loaded_like_mmpose(shared):
    ann = json.loads((shared / "data/mmpose_tests/coco/test_coco.json").read_text())
    det = shared / "data/mmpose_tests/coco/test_coco_det_AP_H_56.json"
    dets = json.loads(det.read_text())
    items, skipped, ids = build_pose_items(ann, "imgs", "coco", box_source="det", det_file=det)
    assert sum(len(it.boxes) for it in items) + sum(skipped.values()) == len(dets)
    first = next(it for it in items if it.image_id == dets[0]["image_id"])
    x, y, w, h = dets[0]["bbox"]
    assert first.box_ids[0] == 0
    assert first.boxes[0][:4] == pytest.approx([x, y, x + w, y + h], rel=1e-6)
    assert first.boxes[0][4] == pytest.approx(dets[0]["score"], rel=1e-6)
    thr, _, _ = build_pose_items(ann, "imgs", "coco", box_source="det", det_file=det,
                                 bbox_score_thr=0.5)
    assert sum(len(it.boxes) for it in thr) == sum(d["score"] >= 0.5 for d in dets)


def test_horse10_pck_and_nme(gateway, shared, tmp_path):
    gateway.reset()
    ann = shared / "data/mmpose_tests/horse10/test_horse10.json"
    gateway.load_coco(ann)
    names = [f"k{i}" for i in range(22)]
    gateway.cards = [pose_card(k_names=names, metrics={"PCK@0.3": 1.0, "NME": 0.2})]

    def offset(a, kp):  # 0.2 nose-eye distances along x: PCK@0.3 = 1, NME = 0.2
        xy = kp[:, :2].copy()
        xy[:, 0] += 0.2 * math.hypot(*(kp[0, :2] - kp[1, :2]))
        return xy
    gateway.offset = offset
    argv = ["--url", gateway.url, "--model", "fake_pose", "--dataset", "horse10", "--ann",
            str(ann), "--images", str(ann.parent), "--gt-boxes", "--out", str(tmp_path / "h"),
            "--quiet"]
    assert hrnet_eval.main(argv) == 0
    m = metrics_of(tmp_path / "h")["metrics"]
    assert m["PCK"] == pytest.approx(1.0) and m["NME"] == pytest.approx(0.2, rel=1e-5)


def test_segmentation_ground_truth_gives_miou_100(gateway, shared, tmp_path):
    gateway.reset()
    d = shared / "data/cityscapes_sample"
    gateway.labels = {p.name.replace("_gtFine_labelTrainIds", "_leftImg8bit"): p
                      for p in d.glob("*_gtFine_labelTrainIds.png")}
    classes = [f"c{i}" for i in range(19)]
    gateway.cards = [{"name": "fake_seg", "task": "segmentation", "classes": classes,
                      "source": {"metrics": {"mIoU": 80.0}}}]
    base = ["--url", gateway.url, "--model", "fake_seg", "--dataset", "cityscapes",
            "--images", str(d), "--quiet"]
    # published 80.0 vs ours 100.0 -> beyond tolerance -> 1
    assert hrnet_eval.main(base + ["--out", str(tmp_path / "s")]) == 1
    m = metrics_of(tmp_path / "s")
    assert m["metrics"] == {"aAcc": 100.0, "mIoU": 100.0, "mAcc": 100.0}
    assert m["summary"]["evaluated"] == 1
    assert hrnet_eval.main(base + ["--out", str(tmp_path / "s"), "--reference",
                                   "mIoU=100"]) == 0


def test_connection_errors_are_retried_with_backoff():
    import asyncio

    import httpx

    from benchmarks.eval_client import RequestFailed, RetryPolicy, request_with_retries

    calls = []

    def handler(request):
        calls.append(request.url.path)
        if len(calls) <= 2:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, json={"ok": True})

    async def go(policy):
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler),
                                     base_url="http://x") as c:
            return await request_with_retries(c, "GET", "/models", policy)

    policy = RetryPolicy(retries=2, backoff=0.001)
    assert asyncio.run(go(policy)).json() == {"ok": True}
    assert len(calls) == 3 and policy.stats == {"retry:ConnectError": 2}
    # delays double: backoff * 2**attempt, capped
    assert [RetryPolicy(backoff=0.5).delay(a) for a in range(3)] == [0.5, 1.0, 2.0]
    assert RetryPolicy(backoff=0.5).delay(20) == 30.0

    calls.clear()
    with pytest.raises(RequestFailed) as err:
        asyncio.run(go(RetryPolicy(retries=1, backoff=0.001)))
    assert err.value.cause == "ConnectError" and len(calls) == 2


def test_reference_names_scales_and_priority(monkeypatch):
    from benchmarks import eval_report as rep

    monkeypatch.setattr(rep, "registry_metrics",
                        lambda names: {"mIoU": 78.65, "mIoU(ms+flip)": 80.35, "AP": 74.9})
    card = {"source": {"metrics": {"AP .5": 0.906, "AP": 0.75}}}
    refs, origin = rep.gather_references("m", card, {"AR@0.5": 94.5})
    assert refs["AP"] == 0.75 and origin["AP"] == "card"      # card beats registry
    assert refs["AP50"] == 0.906
    assert refs["AR50"] == pytest.approx(0.945) and origin["AR50"] == "cli"  # % -> fraction
    assert refs["mIoU"] == 78.65 and "mIoU(ms+flip)" not in refs
    refs, _ = rep.gather_references("m", card, {}, ms_flip=True)
    assert refs["mIoU"] == 80.35
    rows, ok = rep.compare({"AP": 0.76, "AP50": 0.904, "AP75": 0.8, "AR": 0.7, "AR50": 0.9},
                           {"AP": 0.75, "AP50": 0.906, "APm": 0.7}, "coco", 0.005)
    by = {r["metric"]: r for r in rows}
    assert not ok and not by["AP"]["ok"] and by["AP50"]["ok"]
    assert by["APm"]["ours"] is None and by["APm"]["ok"]  # not computed: listed, not failed
    assert rep.parse_reference_args(["AP=0.7"]) == {"AP": 0.7}
    with pytest.raises(ValueError):
        rep.parse_reference_args(["AP"])
