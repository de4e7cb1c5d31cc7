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
from tests.support.coco import COCO_SIGMAS  # noqa: E402

COCO_NAMES = [
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
]


class FakeGateway:
    """A tiny stand-in for the gateway, answering per the HTTP contract from ground truth."""

    def __init__(self, shared: Path) -> None:
        self.shared = shared
        self.reset()
        self.app = self._build()

    def reset(self) -> None:
        self.cards: list[dict] = []
        self.anns: dict[str, list[dict]] = {}  # image file name -> annotations
        self.images: dict[str, dict] = {}
        self.offset = lambda ann, kp: kp[:, :2]  # GT keypoints (K, 3) -> returned (K, 2)
        self.pose_calls: list[str] = []
        self.fail_after: int | None = None  # 500 for every /pose request after this many
        self.fail_names: set[str] = set()  # 500 for every /pose request of these images
        self.fail_503_first: int = 0  # 503 for the first n tries of each image
        self.tries: dict[str, int] = {}
        self.labels: dict[str, Path] = {}
        self.boxes_sent: list = []  # the 'boxes' field of every /pose request
        # bottom-up answers (no boxes): a score per annotation, extra persons per image
        self.person_score = lambda ann: 1.0
        self.extra_persons: dict[str, list[dict]] = {}

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
            cands = [
                [x, y, x + w, y + h],
                [
                    min(max(x, 0), W - 1),
                    min(max(y, 0), H - 1),
                    min(max(x + w, 0), W - 1),
                    min(max(y + h, 0), H - 1),
                ],
            ]
            for c in cands:
                d = sum(abs(u - v) for u, v in zip(c, box))
                if d < best_d:
                    best, best_d = a, d
        assert best is not None and best_d < 1e-2, (fname, box)
        return best

    def _bottomup_persons(self, fname: str) -> list[dict]:
        """GT keypoints of the labelled, non-crowd people with joint values 0.1 (a top-down
        rescoring would zero every person) and the person score of ``self.person_score``."""
        persons = []
        for a in self.anns.get(fname, []):
            if a["num_keypoints"] == 0 or a.get("iscrowd", 0):
                continue
            kp = np.asarray(a["keypoints"], dtype=np.float64).reshape(-1, 3)
            s = self.person_score(a)
            persons.append(
                {
                    "bbox": a["bbox"],
                    "bbox_score": s,
                    "score": s,
                    "keypoints": np.column_stack([kp[:, :2], np.full(len(kp), 0.1)]).tolist(),
                }
            )
        return persons + self.extra_persons.get(fname, [])

    def _build(self) -> FastAPI:
        app = FastAPI()

        @app.get("/models")
        async def models():
            return {"models": self.cards}

        @app.post("/pose")
        async def pose(
            image: UploadFile = File(...),
            boxes: str = Form(None),
            box_format: str = Form("xywh"),
            model: str = Form(None),
            flip_test: str = Form(None),
        ):
            fname = image.filename
            await image.read()
            self.pose_calls.append(fname)
            self.tries[fname] = self.tries.get(fname, 0) + 1
            if (
                self.fail_after is not None and len(self.pose_calls) > self.fail_after
            ) or fname in self.fail_names:
                return JSONResponse({"error": {"code": "internal", "message": "down"}}, 500)
            if self.tries[fname] <= self.fail_503_first:
                return JSONResponse(
                    {"error": {"code": "unavailable", "message": "busy"}},
                    503,
                    headers={"Retry-After": "0"},
                )
            self.boxes_sent.append(boxes)
            if boxes is None:  # a bottom-up model: every labelled person of the image
                return {
                    "model": model,
                    "image_size": [1, 1],
                    "flip_test": False,
                    "box_source": "bottomup",
                    "keypoint_names": COCO_NAMES,
                    "skeleton": [],
                    "persons": self._bottomup_persons(fname),
                    "timing_ms": {},
                }
            assert box_format == "xyxy"
            persons = []
            for b in json.loads(boxes):
                a = self._match(fname, b[:4])
                kp = np.asarray(a["keypoints"], dtype=np.float64).reshape(-1, 3)
                xy = self.offset(a, kp)
                sc = (kp[:, 2] > 0).astype(float)  # labelled -> 1, unlabelled -> 0
                persons.append(
                    {
                        "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                        "bbox_score": b[4],
                        "keypoints": np.column_stack([xy, sc]).tolist(),
                        "score": b[4],
                    }
                )
            return {
                "model": model,
                "image_size": [1, 1],
                "flip_test": flip_test == "true",
                "box_source": "given",
                "keypoint_names": COCO_NAMES,
                "skeleton": [],
                "persons": persons,
                "timing_ms": {},
            }

        @app.post("/segment")
        async def segment(request: Request, image: UploadFile = File(...), model: str = Form(None)):
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
    return {
        "name": name,
        "task": "topdown_pose",
        "input_size": [192, 256],
        "bbox_padding": 1.25,
        "keypoint_names": list(k_names),
        "sigmas": list(sigmas or []),
        "source": {"metrics": metrics or {}},
    }


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
    argv = [
        "--url",
        gw.url,
        "--model",
        "fake_pose",
        "--dataset",
        "coco",
        "--ann",
        str(ann),
        "--images",
        str(images),
        "--gt-boxes",
        "--out",
        str(out),
        "--quiet",
        "--backoff",
        "0.01",
        *extra,
    ]
    return hrnet_eval.main(argv)


def metrics_of(out):
    return json.loads((Path(out) / "metrics.json").read_text())


def serve_cityscapes_labels(gw, shared, metrics):
    """Make the fake gateway echo the ground-truth label of each Cityscapes sample image as its
    prediction, under a 19-class ``fake_seg`` card publishing ``metrics`` (no ``source.url``, so
    no registry numbers); returns the sample folder."""
    gw.reset()
    d = shared / "data/cityscapes_sample"
    gw.labels = {
        p.name.replace("_gtFine_labelTrainIds", "_leftImg8bit"): p
        for p in d.glob("*_gtFine_labelTrainIds.png")
    }
    gw.cards = [
        {
            "name": "fake_seg",
            "task": "segmentation",
            "classes": [f"c{i}" for i in range(19)],
            "source": {"metrics": metrics},
        }
    ]
    return d


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
    assert (
        run(gateway, ann, images, tmp_path / "a", "--reference", "AP=0.52", "--tolerance", "0.05")
        == 0
    )


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
        "http_500:internal": 2
    }
    lines = (tmp_path / "part" / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 2

    gateway.fail_after = None
    gateway.pose_calls.clear()
    assert run(gateway, ann, images, tmp_path / "part") == 0
    assert len(gateway.pose_calls) == 2  # only the two missing images were sent
    keys = [
        json.loads(x)["key"]
        for x in (tmp_path / "part" / "predictions.jsonl").read_text().splitlines()
    ]
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
    assert (
        run(gateway, ann, images, tmp_path / "a", "--limit", "1", "--no-flip-test", "--restart")
        == 0
    )


def test_unreachable_gateway_or_unknown_model(coco, gateway, tmp_path):
    ann, images = coco
    argv = [
        "--url",
        "http://127.0.0.1:9",
        "--model",
        "fake_pose",
        "--dataset",
        "coco",
        "--ann",
        str(ann),
        "--images",
        str(images),
        "--gt-boxes",
        "--out",
        str(tmp_path / "x"),
        "--quiet",
        "--retries",
        "1",
        "--backoff",
        "0.01",
    ]
    assert hrnet_eval.main(argv) == 2
    assert (
        hrnet_eval.main(
            [
                "--url",
                gateway.url,
                "--model",
                "nope",
                "--dataset",
                "coco",
                "--ann",
                str(ann),
                "--images",
                str(images),
                "--out",
                str(tmp_path / "y"),
                "--quiet",
            ]
        )
        == 2
    )
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
    thr, _, _ = build_pose_items(
        ann, "imgs", "coco", box_source="det", det_file=det, bbox_score_thr=0.5
    )
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
    argv = [
        "--url",
        gateway.url,
        "--model",
        "fake_pose",
        "--dataset",
        "horse10",
        "--ann",
        str(ann),
        "--images",
        str(ann.parent),
        "--gt-boxes",
        "--out",
        str(tmp_path / "h"),
        "--quiet",
    ]
    assert hrnet_eval.main(argv) == 0
    m = metrics_of(tmp_path / "h")["metrics"]
    assert m["PCK"] == pytest.approx(1.0) and m["NME"] == pytest.approx(0.2, rel=1e-5)


def test_segmentation_ground_truth_gives_miou_100(gateway, shared, tmp_path):
    d = serve_cityscapes_labels(gateway, shared, {"mIoU": 80.0})
    base = [
        "--url",
        gateway.url,
        "--model",
        "fake_seg",
        "--dataset",
        "cityscapes",
        "--images",
        str(d),
        "--quiet",
    ]
    # published 80.0 vs ours 100.0 -> beyond tolerance -> 1
    assert hrnet_eval.main(base + ["--out", str(tmp_path / "s")]) == 1
    m = metrics_of(tmp_path / "s")
    assert m["metrics"] == {"aAcc": 100.0, "mIoU": 100.0, "mAcc": 100.0}
    assert m["summary"]["evaluated"] == 1
    assert hrnet_eval.main(base + ["--out", str(tmp_path / "s"), "--reference", "mIoU=100"]) == 0


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
        async with httpx.AsyncClient(
            transport=httpx.MockTransport(handler), base_url="http://x"
        ) as c:
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

    monkeypatch.setattr(
        rep, "registry_metrics", lambda names: {"mIoU": 78.65, "mIoU(ms+flip)": 80.35, "AP": 74.9}
    )
    card = {"source": {"url": "https://example.org/w.pth", "metrics": {"AP .5": 0.906, "AP": 0.75}}}
    refs, origin = rep.gather_references("m", card, {"AR@0.5": 94.5})
    assert refs["AP"] == 0.75 and origin["AP"] == "card"  # card beats registry
    assert refs["AP50"] == 0.906
    assert refs["AR50"] == pytest.approx(0.945) and origin["AR50"] == "cli"  # % -> fraction
    assert refs["mIoU"] == 78.65 and "mIoU(ms+flip)" not in refs
    refs, _ = rep.gather_references("m", card, {}, ms_flip=True)
    assert refs["mIoU"] == 80.35
    rows, ok = rep.compare(
        {"AP": 0.76, "AP50": 0.904, "AP75": 0.8, "AR": 0.7, "AR50": 0.9},
        {"AP": 0.75, "AP50": 0.906, "APm": 0.7},
        "coco",
        0.005,
    )
    by = {r["metric"]: r for r in rows}
    assert not ok and not by["AP"]["ok"] and by["AP50"]["ok"]
    assert by["APm"]["ours"] is None and by["APm"]["ok"]  # not computed: listed, not failed
    assert rep.parse_reference_args(["AP=0.7"]) == {"AP": 0.7}
    with pytest.raises(ValueError):
        rep.parse_reference_args(["AP"])


def test_random_weight_cards_get_no_registry_numbers(monkeypatch):
    """A card without a checkpoint URL (hrnet-export --random-init writes url None and no
    metrics) serves weights the registry's published numbers do not describe."""
    from benchmarks import eval_report as rep

    seen = []

    def registry(names):
        seen.append(list(names))
        return {"AP": 0.749, "AR": 0.804}

    monkeypatch.setattr(rep, "registry_metrics", registry)
    name = "td-hm_hrnet-w32_8xb64-210e_coco-256x192"
    random_card = {"source": {"arch": name, "url": None, "metrics": {}}}
    refs, origin = rep.gather_references(name, random_card, {})
    assert refs == {} and origin == {} and seen == []
    # the card's own numbers and --reference still apply
    random_card["source"]["metrics"] = {"AR": 0.5}
    refs, origin = rep.gather_references(name, random_card, {"AP": 0.25})
    assert refs == {"AR": 0.5, "AP": 0.25} and origin == {"AR": "card", "AP": "cli"}
    # the same model exported from its published checkpoint: registry numbers come back
    published = {
        "source": {"arch": name, "url": "https://download.openmmlab.com/x.pth", "metrics": {}}
    }
    refs, origin = rep.gather_references(name, published, {})
    assert refs == {"AP": 0.749, "AR": 0.804} and set(origin.values()) == {"registry"}


def test_tolerance_is_in_fraction_units_for_every_metric():
    from benchmarks.eval_report import compare, format_table

    # percent metrics: 0.01 = 1 percentage point. |100 - 99.5| = 0.5 pt ok, 1.5 pt beyond
    rows, ok = compare(
        {"mIoU": 100.0, "mAcc": 100.0, "aAcc": 100.0}, {"mIoU": 99.5, "aAcc": 98.5}, "seg", 0.01
    )
    by = {r["metric"]: r for r in rows}
    assert not ok and by["mIoU"]["ok"] and not by["aAcc"]["ok"]
    assert by["mIoU"]["diff"] == pytest.approx(0.5)  # reported in the metric's own unit
    # fractions: the same 0.01. |1 - 0.995| ok, |1 - 0.985| beyond
    rows, ok = compare(
        {"AP": 1.0, "AP50": 1.0, "AP75": 1.0, "AR": 1.0, "AR50": 1.0},
        {"AP": 0.995, "AR": 0.985},
        "coco",
        0.01,
    )
    by = {r["metric"]: r for r in rows}
    assert not ok and by["AP"]["ok"] and not by["AR"]["ok"]
    # 0.02 accepts both kinds' 1.5 (points / hundredths)
    assert compare({"mIoU": 100.0}, {"mIoU": 98.5}, "seg", 0.02)[1]
    assert compare({"AP": 1.0}, {"AP": 0.985}, "coco", 0.02)[1]
    text = format_table(compare({"mIoU": 100.0}, {"mIoU": 98.5}, "seg", 0.01)[0], 0.01)
    lines = text.splitlines()
    assert "fraction units" in lines[0] and "fraction units" in lines[-1]
    assert "1 percentage points" in lines[-1]
    assert "* |diff| > 1 pt" in text


def test_segmentation_tolerance_in_fraction_units_end_to_end(gateway, shared, tmp_path):
    d = serve_cityscapes_labels(gateway, shared, {"mIoU": 99.5})
    base = [
        "--url",
        gateway.url,
        "--model",
        "fake_seg",
        "--dataset",
        "cityscapes",
        "--images",
        str(d),
        "--quiet",
        "--out",
        str(tmp_path / "s"),
    ]
    # ours 100.0 vs 99.5: 0.005 in fraction units, within the default 0.01
    assert hrnet_eval.main(base) == 0
    m = metrics_of(tmp_path / "s")
    assert m["tolerance"] == 0.01 and m["tolerance_unit"] == "fraction"
    # 0.004 (0.4 percentage point) is not enough
    assert hrnet_eval.main(base + ["--tolerance", "0.004"]) == 1


def test_failed_image_is_left_out_of_the_scored_set(coco, gateway, tmp_path):
    """One image (000000196141, 4 valid people of the 12) fails: the metrics are those of the
    other three images, all perfect (AP = AR = 1). Scoring the whole file instead would count
    its 4 people as misses: AR = 8/12 at every threshold."""
    ann, images = coco
    gateway.fail_names = {"000000196141.jpg"}
    rc = run(gateway, ann, images, tmp_path / "a", "--retries", "0")
    assert rc == 3  # incomplete
    m = metrics_of(tmp_path / "a")
    assert m["summary"]["failed"] == 1 and m["summary"]["evaluated"] == 3
    assert m["summary"]["scored_images"] == 3
    for k in ("AP", "AP50", "AR", "AR50"):
        assert m["metrics"][k] == pytest.approx(1.0), k
    assert len(json.loads((tmp_path / "a" / "results.json").read_text())) == 8
    # the re-run sends the failed image only and scores all four
    gateway.fail_names = set()
    gateway.pose_calls.clear()
    assert run(gateway, ann, images, tmp_path / "a") == 0
    assert gateway.pose_calls == ["000000196141.jpg"]
    m = metrics_of(tmp_path / "a")
    assert m["summary"]["scored_images"] == 4 and m["metrics"]["AR"] == pytest.approx(1.0)


def test_box_rules_mirror_the_gateway():
    """Each box is refused by build-time filtering exactly when the gateway's parser refuses it
    (service.boxes: MIN_BOX_SIDE = 1 px, MAX_COORDINATE = 1e6 px), with the cause named."""
    from benchmarks.eval_data import box_rejection
    from service.boxes import parse_boxes
    from service.errors import InvalidBoxes

    W, H = 640, 480
    cases = [  # xyxy + score -> expected cause
        ([10, 10, 11, 11, 1.0], None),  # exactly 1 px: allowed
        ([10, 10, 10.5, 50, 1.0], "box_too_small"),  # 0.5 px wide
        ([10, 10, 50, 10.99, 0.3], "box_too_small"),
        ([10, 10, 10, 50, 1.0], "degenerate_box"),  # zero width
        ([50, 10, 10, 50, 1.0], "degenerate_box"),  # negative width
        ([-2e6, 10, 50, 50, 1.0], "coordinate_too_large"),  # partly inside, but absurd
        ([10, 10, 1e6, 50, 1.0], None),  # 1e6 itself is allowed
        ([10, 10, 1e6 + 1, 50, 1.0], "coordinate_too_large"),
        ([640, 10, 700, 50, 1.0], "box_outside_image"),  # starts at x = W
        ([-50, -50, 0, 0, 1.0], "box_outside_image"),
        ([-50, -50, 1, 1, 1.0], None),  # overlaps pixel (0, 0)
        ([10, 10, 50, 50, 1.5], "score_out_of_range"),
        ([10, float("nan"), 50, 50, 1.0], "non_finite_box"),
    ]
    for box, cause in cases:
        assert box_rejection(box[:4], W, H, box[4]) == cause, box
        if cause is None:
            parse_boxes(json.dumps([box]), "xyxy", (W, H), 10)
        else:
            with pytest.raises(InvalidBoxes):
                parse_boxes(json.dumps([box]), "xyxy", (W, H), 10)


def test_boxes_the_gateway_refuses_are_skipped_by_cause(tmp_path):
    coco = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 640, "height": 480}],
        "annotations": [],
        "categories": [{"id": 1, "keypoints": COCO_NAMES}],
    }
    dets = [  # xywh
        {"image_id": 1, "category_id": 1, "bbox": [10, 10, 100, 200], "score": 0.9},  # kept
        {"image_id": 1, "category_id": 1, "bbox": [10, 10, 0.5, 200], "score": 0.9},  # < 1 px
        {"image_id": 1, "category_id": 1, "bbox": [10, 10, 100, 0.25], "score": 0.9},  # < 1 px
        {"image_id": 1, "category_id": 1, "bbox": [5e6, 10, 100, 100], "score": 0.9},  # > 1e6
        {"image_id": 1, "category_id": 1, "bbox": [700, 10, 100, 100], "score": 0.9},  # outside
        {"image_id": 1, "category_id": 1, "bbox": [10, 10, 100, 100], "score": 2.0},  # score
        {"image_id": 1, "category_id": 1, "bbox": [20, 20, 50, 60], "score": 0.5},  # kept
    ]
    det = tmp_path / "det.json"
    det.write_text(json.dumps(dets))
    items, skipped, ids = build_pose_items(coco, tmp_path, "coco", box_source="det", det_file=det)
    assert skipped == {
        "box_too_small": 2,
        "coordinate_too_large": 1,
        "box_outside_image": 1,
        "score_out_of_range": 1,
    }
    assert len(items) == 1 and items[0].box_ids == [0, 6]  # instance ids in file order
    assert items[0].boxes == [
        [10.0, 10.0, 110.0, 210.0, pytest.approx(0.9)],
        [20.0, 20.0, 70.0, 80.0, 0.5],
    ]
    # ground-truth boxes (not clipped): a 0.5 px wide person is not sent either
    coco["annotations"] = [
        {
            "id": 7,
            "image_id": 1,
            "bbox": [10, 10, 0.5, 40],
            "keypoints": [11, 20, 2] * 17,
            "num_keypoints": 17,
            "iscrowd": 0,
            "area": 20,
        },
        {
            "id": 8,
            "image_id": 1,
            "bbox": [10, 10, 40, 40],
            "keypoints": [11, 20, 2] * 17,
            "num_keypoints": 17,
            "iscrowd": 0,
            "area": 1600,
        },
    ]
    items, skipped, _ = build_pose_items(
        coco, tmp_path, "coco", box_source="gt", clip_gt_boxes=False
    )
    assert skipped == {"box_too_small": 1} and items[0].box_ids == [8]


def test_bottomup_model_sends_no_boxes_and_scores_as_mmpose_0x(coco, gateway, tmp_path):
    """A bottom-up card: no boxes are sent, every image of the file is asked, persons keep the
    grouping's score and no OKS-NMS runs (MMPose 0.x BottomUpCocoDataset, use_nms False).

    Ranking: 6 true persons at 0.9, one far-off false person at 0.8, 6 true at 0.7, and a copy of a
    true person at 0.6. Precision is 1 up to recall 0.5 and 12/13 beyond (the copy comes after the
    last true person), at every OKS threshold: AP = (51 + 50 * 12/13) / 101 on COCO's 101 recall
    points. Top-down rescoring (joint values 0.1 < 0.2) would zero every score; OKS-NMS would drop
    the copy.
    """
    ann, images = coco
    gateway.cards = [{**pose_card(), "task": "bottomup_pose"}]
    labelled = sorted(
        a["id"]
        for anns in gateway.anns.values()
        for a in anns
        if a["num_keypoints"] > 0 and not a.get("iscrowd", 0)
    )
    assert len(labelled) == 12
    first = set(labelled[:6])
    gateway.person_score = lambda a: 0.9 if a["id"] in first else 0.7
    fname = sorted(gateway.anns)[0]
    far = [[1.0, 1.0, 0.1]] * 17
    true = next(a for a in gateway.anns[fname] if a["num_keypoints"] > 0)
    copy = np.asarray(true["keypoints"], float).reshape(-1, 3)
    copy[:, 2] = 0.1
    gateway.extra_persons = {
        fname: [
            {"bbox": [1, 1, 1, 1], "bbox_score": 0.8, "score": 0.8, "keypoints": far},
            {"bbox": true["bbox"], "bbox_score": 0.6, "score": 0.6, "keypoints": copy.tolist()},
        ]
    }
    rc = run(gateway, ann, images, tmp_path / "b")
    assert rc == 0
    m = metrics_of(tmp_path / "b")
    assert m["config"]["box_source"] == "bottomup"
    assert gateway.boxes_sent and all(b is None for b in gateway.boxes_sent)
    assert sorted(set(gateway.pose_calls)) == sorted(gateway.images)
    expected = (51 + 50 * 12 / 13) / 101
    for k in ("AP", "AP50", "AP75"):
        assert m["metrics"][k] == pytest.approx(expected, abs=1e-9), k
    assert m["metrics"]["AR"] == pytest.approx(1.0)
    results = json.loads((tmp_path / "b" / "results.json").read_text())
    assert len(results) == 14  # 12 + the false person + the copy: nothing suppressed
    assert sorted({r["score"] for r in results}) == pytest.approx([0.6, 0.7, 0.8, 0.9])
    # boxes with a bottom-up model are refused before anything is sent
    n = len(gateway.pose_calls)
    assert run(gateway, ann, images, tmp_path / "c", "--boxes", str(images / "x.json")) == 2
    assert len(gateway.pose_calls) == n
