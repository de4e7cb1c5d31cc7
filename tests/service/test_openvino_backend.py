"""The embedded OpenVINO backend (service/backends/openvino.py) and what it shares with ONNX
Runtime (service/backends/embedded.py).

Tiny hand-made graphs (tests/tiny_onnx.py) give exact numbers: ``conv_pose`` is avgpool 4x4 ->
3x3 conv + bias -> ReLU -> 1x1 conv, recomputed here in float64 numpy from the file's own
weights. The real-model tests (slow) compare OpenVINO f32 and bf16 with ONNX Runtime on
PP-TinyPose through ``POST /pose`` on the shared COCO photos.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app, make_backend
from service.backends.base import BackendError, BackendUnavailable
from service.backends.embedded import cpu_cores
from service.batching import BatchConfig
from service.repository import ModelRepository
from service.settings import Settings
from tests.fake_cards import pose_card, write_repository
from tests.tiny_onnx import (
    write_constant_pose_entry,
    write_constant_pose_onnx,
    write_conv_pose_onnx,
)

pytest.importorskip("onnx")
pytest.importorskip("openvino")
from service.backends.openvino import OpenVinoBackend, import_openvino

PNG = cv2.imencode(".png", np.full((100, 100, 3), 100, np.uint8))[1].tobytes()
#: bf16 unit roundoff: 8 significant bits, round to nearest
U_BF16 = 2.0**-8


def conv_pose_closed_form(path: Path, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(heatmaps, bound)`` of :func:`tests.tiny_onnx.write_conv_pose_onnx`'s graph on ``x``
    ``(N, 3, 256, 192)``, float64, from the weights stored in ``path``; ``bound`` is the same
    network on absolute values (|w|, |b|, |activations|): every rounding error of one operand
    is at most its unit roundoff times that magnitude sum."""
    import onnx
    from onnx import numpy_helper

    w = {
        t.name: numpy_helper.to_array(t).astype(np.float64)
        for t in onnx.load(str(path)).graph.initializer
    }

    def net(x, w1, b1, w2):
        n = len(x)
        pooled = x.reshape(n, 3, 64, 4, 48, 4).mean(axis=(3, 5))
        p = np.pad(pooled, ((0, 0), (0, 0), (1, 1), (1, 1)))
        c1 = sum(
            np.einsum("oc,nchw->nohw", w1[:, :, i, j], p[:, :, i : i + 64, j : j + 48])
            for i in range(3)
            for j in range(3)
        )
        r = np.maximum(c1 + b1[None, :, None, None], 0)
        return np.einsum("ko,nohw->nkhw", w2[:, :, 0, 0], r)

    x = x.astype(np.float64)
    exact = net(x, w["w1"], w["b1"], w["w2"])
    bound = net(np.abs(x), np.abs(w["w1"]), np.abs(w["b1"]), np.abs(w["w2"]))
    return exact, bound


@pytest.fixture(scope="module")
def conv_repo(tmp_path_factory) -> Path:
    """``conv_a`` and ``conv_b``: the same conv_pose graph, max batch 2; ``const``: heatmaps 0.3."""
    root = tmp_path_factory.mktemp("ov_repo")
    write_repository(
        root, [pose_card("conv_a", max_batch_size=2), pose_card("conv_b", max_batch_size=2)]
    )
    for name in ("conv_a", "conv_b"):
        write_conv_pose_onnx(root / name / "1" / "model.onnx", keypoints=2, seed=0)
    write_constant_pose_entry(root, "const", 0.3)
    return root


def _x(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 3, 256, 192)).astype(np.float32)


def _run(backend, coro_fn):
    async def main():
        await backend.start()
        try:
            return await coro_fn(backend)
        finally:
            await backend.close()

    return asyncio.run(main())


def test_f32_is_the_closed_form_and_bf16_within_its_rounding_bound(conv_repo):
    """Batch 5 over max_batch_size 2: three runs, concatenated in order. f32 (default hint) agrees
    with float64 within 1e-5 of the magnitude sum (f32 roundoff 6e-8, a few dozen terms);
    bf16 (per-model override for conv_b) within 6 bf16 roundoffs of it (input, pooled, weights
    and ReLU output each rounded to bf16 once, products of two rounded operands, f32
    accumulation) and is visibly not f32."""
    be = OpenVinoBackend(ModelRepository(conv_repo), precisions={"conv_b": "bf16"})
    x = _x(5)
    runs = []
    run_chunk = be._run_chunk

    def counting(session, outputs, feed):
        runs.append(next(iter(feed.values())).shape[0])
        return run_chunk(session, outputs, feed)

    be._run_chunk = counting  # type: ignore[method-assign]

    async def both(be):
        a = (await be.infer("conv_a", {"image": x}))["heatmaps"]
        b = (await be.infer("conv_b", {"image": x}))["heatmaps"]
        return a, b, be.describe("conv_a"), be.describe("conv_b")

    a, b, desc_a, desc_b = _run(be, both)
    exact, bound = conv_pose_closed_form(conv_repo / "conv_a" / "1" / "model.onnx", x)
    assert runs == [2, 2, 1, 2, 2, 1]
    assert a.shape == b.shape == (5, 2, 64, 48) and a.dtype == np.float32
    err_a, err_b = np.abs(a - exact), np.abs(b - exact)
    print(
        f"f32 max err {err_a.max():.3g}, bf16 max err {err_b.max():.3g}, max bound {bound.max():.3g}"
    )
    assert (err_a <= 1e-5 * bound).all()
    assert (err_b <= 6 * U_BF16 * bound).all()
    assert err_b.max() > 100 * err_a.max()  # bf16 really ran
    assert desc_a == {"precision": "f32", "float_precision": "f32", "device": "CPU"}
    assert desc_b["precision"] == "bf16"


def test_int8_qdq_entry_runs_int8_whatever_the_hint(conv_repo, tmp_path):
    from export.quantize import quantize_int8

    root = write_repository(tmp_path, [pose_card("conv_int8")])
    src = write_conv_pose_onnx(tmp_path / "src" / "src.onnx", keypoints=2, seed=0)
    (root / "conv_int8" / "1").mkdir()
    quantize_int8(src, root / "conv_int8" / "1" / "model.onnx", _x(8, seed=1))
    be = OpenVinoBackend(ModelRepository(root), precision="bf16")
    x = _x(2)

    async def go(be):
        return (await be.infer("conv_int8", {"image": x}))["heatmaps"], be.describe("conv_int8")

    y, desc = _run(be, go)
    exact, bound = conv_pose_closed_form(src, x)
    assert desc["precision"] == "int8" and desc["float_precision"] == "bf16"
    # int8 activations/weights (2^-8 of the range) are far coarser than bf16 but still close
    assert np.abs(y - exact).max() < 0.05 * np.abs(exact).max()


def test_a_fixed_shape_model_gets_a_stream_per_concurrent_run(conv_repo):
    """Two runs at once need two streams (one stream serialises a compiled model's requests): the
    compiled model reads back NUM_STREAMS 2 and 2 threads in all; both runs' results exact."""
    be = OpenVinoBackend(ModelRepository(conv_repo), models=["conv_a"], concurrent_runs=2)

    async def go(be):
        compiled = be.sessions["conv_a"].compiled
        xs = [_x(2, seed=s) for s in range(2)]
        outs = await asyncio.gather(*(be.infer("conv_a", {"image": x}) for x in xs))
        streams = int(compiled.get_property("NUM_STREAMS"))
        return streams, int(compiled.get_property("INFERENCE_NUM_THREADS")), xs, outs

    streams, threads, xs, outs = _run(be, go)
    assert (streams, threads) == (2, 2 * be.threads)
    for x, y in zip(xs, outs):
        exact, bound = conv_pose_closed_form(conv_repo / "conv_a" / "1" / "model.onnx", x)
        assert (np.abs(y["heatmaps"] - exact) <= 1e-5 * bound).all()


def test_requests_share_runs_through_the_dynamic_batcher(conv_repo):
    """The one worker held: four 1-crop requests queue, then run as two full batches of 2 (the
    card's max), each answer its own crop's closed form."""
    be = OpenVinoBackend(
        ModelRepository(conv_repo), models=["conv_a"], batching=BatchConfig(), concurrent_runs=1
    )
    xs = [_x(1, seed=s) for s in range(4)]
    runs = []
    run_chunk = be._run_chunk
    be._run_chunk = lambda s, o, f: runs.append(len(f["image"])) or run_chunk(s, o, f)  # type: ignore[method-assign]

    async def go(be):
        gate = threading.Event()
        be._pool.submit(gate.wait, 30)
        tasks = [asyncio.ensure_future(be.infer("conv_a", {"image": x})) for x in xs]
        batcher = be.batcher("conv_a")
        while batcher.queued_items + batcher.inflight_items < 4:
            await asyncio.sleep(0.01)
        gate.set()
        return [t["heatmaps"] for t in await asyncio.gather(*tasks)]

    outs = _run(be, go)
    assert runs == [2, 2]
    for x, y in zip(xs, outs):
        exact, bound = conv_pose_closed_form(conv_repo / "conv_a" / "1" / "model.onnx", x)
        assert (np.abs(y - exact) <= 1e-5 * bound).all()


def test_unknown_model_is_a_backend_error_and_a_refused_one_503(conv_repo):
    be = OpenVinoBackend(ModelRepository(conv_repo), models=["conv_a"])

    async def go(be):
        with pytest.raises(BackendUnavailable) as unavailable:  # carded, not loaded
            await be.infer("conv_b", {"image": _x(1)})
        with pytest.raises(BackendError) as unknown:
            await be.infer("not_carded", {"image": _x(1)})
        return unavailable.value, unknown.value

    unavailable, unknown = _run(be, go)
    assert "'conv_b' is not loaded in the OpenVINO backend" in str(unavailable)
    assert unavailable.model == "conv_b" and unavailable.retry_after_s == 30.0
    assert not isinstance(unknown, BackendUnavailable) and unknown.model == "not_carded"


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_start_up_refuses_what_reload_refuses(tmp_path, backend):
    """Garbage ONNX and an ONNX whose input is not the card's ``image``: both refused at start-up
    (503 naming the model, listed by /readyz), the good entry serves (its scores are 0.3)."""
    write_constant_pose_entry(tmp_path, "good", 0.3)
    write_constant_pose_entry(tmp_path, "renamed", 0.5)
    write_constant_pose_onnx(tmp_path / "renamed" / "1" / "model.onnx", 0.5, input_name="pixels")
    write_constant_pose_entry(tmp_path, "garbage", 0.5)
    (tmp_path / "garbage" / "1" / "model.onnx").write_bytes(b"not an onnx file")
    settings = Settings(
        model_repository=tmp_path,
        backend=backend,
        default_pose_model="good",
        default_detector_model="",
    )
    with TestClient(create_app(settings)) as c:

        def pose(model):
            return c.post(
                "/pose",
                files={"image": ("a.png", PNG)},
                data={"boxes": "[[10, 10, 50, 50]]", "model": model},
            )

        r = pose("good")
        assert r.status_code == 200 and [
            k[2] for k in r.json()["persons"][0]["keypoints"]
        ] == pytest.approx([0.3, 0.3])
        for name in ("renamed", "garbage"):
            r = pose(name)
            assert r.status_code == 503, r.text
            assert f"'{name}' is not loaded" in r.json()["error"]["message"]
        assert pose("nope").status_code == 404
        ready = c.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["models_not_ready"] == ["garbage", "renamed"]
        errors = c.app.state.backend.load_errors
        assert "lacks the tensors image" in errors["renamed"]
        assert "cannot load" in errors["garbage"]


def test_reload_swaps_a_changed_model_and_models_shows_the_precision(tmp_path):
    write_constant_pose_entry(tmp_path, "pose_a", 0.3)
    settings = Settings(
        model_repository=tmp_path,
        backend="openvino",
        openvino_precision="bf16",
        default_pose_model="pose_a",
        default_detector_model="",
        admin_api_key="k",
    )

    def scores(c):
        r = c.post("/pose", files={"image": ("a.png", PNG)}, data={"boxes": "[[10, 10, 50, 50]]"})
        assert r.status_code == 200, r.text
        return [k[2] for k in r.json()["persons"][0]["keypoints"]]

    with TestClient(create_app(settings)) as c:
        # 0.3 is not a bf16 number: bf16 rounds it to 0.30078125 (8 significant bits)
        assert scores(c) == pytest.approx([0.30078125] * 2, abs=1e-6)  # answers have 6 decimals
        listing = c.get("/models").json()
        assert listing["backend"] == "openvino"
        assert listing["models"][0]["runtime"]["precision"] == "bf16"
        write_constant_pose_entry(tmp_path, "pose_a", 0.75)  # exact in bf16
        r = c.post("/admin/reload", headers={"X-API-Key": "k"})
        assert r.status_code == 200 and r.json()["updated"] == ["pose_a"], r.text
        assert scores(c) == pytest.approx([0.75, 0.75], abs=1e-6)


def test_settings_choose_the_backend_and_per_model_precisions(conv_repo, monkeypatch):
    monkeypatch.setenv("HRNET_BACKEND", "openvino")
    monkeypatch.setenv("HRNET_OPENVINO_PRECISIONS", '{"conv_b": "bf16"}')
    monkeypatch.setenv("HRNET_OPENVINO_THREADS", "1")
    be = make_backend(Settings(), ModelRepository(conv_repo))
    assert isinstance(be, OpenVinoBackend)
    assert be.config_for("conv_b")["INFERENCE_PRECISION_HINT"] == "bf16"
    # one stream per concurrent run (default: one per core), each run on HRNET_OPENVINO_THREADS
    runs = cpu_cores()
    assert be.concurrent_runs == runs
    assert be.config_for("conv_a") == {
        "INFERENCE_PRECISION_HINT": "f32",
        "INFERENCE_NUM_THREADS": runs,
        "NUM_STREAMS": runs,
        "ENABLE_CPU_PINNING": False,
    }
    # a dynamic-shape model: one stream on every core
    assert be.config_for("conv_a", dynamic=True)["NUM_STREAMS"] == 1
    assert be.config_for("conv_a", dynamic=True)["INFERENCE_NUM_THREADS"] == cpu_cores()
    monkeypatch.setenv("HRNET_OPENVINO_CONCURRENT_RUNS", "3")
    monkeypatch.setenv("HRNET_OPENVINO_THREADS", "2")
    be3 = make_backend(Settings(), ModelRepository(conv_repo))
    assert be3.config_for("conv_a")["NUM_STREAMS"] == 3
    assert be3.config_for("conv_a")["INFERENCE_NUM_THREADS"] == 6
    with pytest.raises(ValueError, match="unknown OpenVINO precision 'f8'"):
        OpenVinoBackend(ModelRepository(conv_repo), precision="f8")


def test_missing_extra_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    with pytest.raises(RuntimeError, match=r"pip install 'hrnet-serving\[openvino\]'"):
        import_openvino()


def test_the_gateway_imports_no_openvino_unless_selected():
    import subprocess

    code = (
        "import sys, service.app, service.backends.onnxruntime; "
        "sys.exit(1 if {'openvino', 'torch'} & set(sys.modules) else 0)"
    )
    root = Path(__file__).resolve().parents[2]
    assert subprocess.run([sys.executable, "-c", code], cwd=root).returncode == 0


# ----------------------------------------------------------------------------- real model (slow)


@pytest.fixture(scope="module")
def coco_requests(shared):
    """``(JPEG bytes, GT boxes xywh)`` per photo of ../shared/data/mmpose_tests/coco (people with
    labelled keypoints), and the matching GT ``(keypoints (N, 17, 3), areas (N,))``."""
    root = shared / "data" / "mmpose_tests" / "coco"
    ann = json.loads((root / "test_coco.json").read_text())
    out = []
    for im in ann["images"]:
        people = [
            a for a in ann["annotations"] if a["image_id"] == im["id"] and a["num_keypoints"] > 0
        ]
        out.append(((root / im["file_name"]).read_bytes(), people))
    return out


def _pose_keypoints(settings: Settings, requests) -> np.ndarray:
    """Every person's ``(17, 3)`` keypoints from ``POST /pose`` (GT boxes, flip on), stacked."""
    with TestClient(create_app(settings)) as c:
        out = []
        for data, people in requests:
            r = c.post(
                "/pose",
                files={"image": ("x.jpg", data)},
                data={"boxes": json.dumps([p["bbox"] for p in people]), "flip_test": "true"},
            )
            assert r.status_code == 200, r.text
            out += [p["keypoints"] for p in r.json()["persons"]]
    return np.asarray(out, np.float64)


@pytest.mark.slow
def test_pp_tinypose_openvino_f32_and_bf16_vs_onnxruntime(shared_repo, coco_requests):
    """PP-TinyPose through /pose on the 4 shared COCO photos' GT boxes (19 people), flip test on
    (DARK). f32: the same network on another engine, only the f32 summation order differs:
    measured max |dxy| 6e-4 px and max |dscore| 1.5e-5 (the answer's own rounding is 1e-4 px and
    1e-6) -> bounds 2e-3 px and 5e-5. bf16: measured max |dxy| 3.65 px (a low-score joint), median
    0.078 px, OKS vs ONNX Runtime f32 (GT areas, the card's sigmas) mean 0.9995, min 0.9985 ->
    bounds: median |dxy| <= 0.25 px, OKS mean >= 0.995 and min >= 0.99."""
    from service.metrics.coco_keypoints import per_instance_oks

    base = dict(model_repository=shared_repo, default_detector_model="")
    ort = _pose_keypoints(Settings(**base), coco_requests)
    ov32 = _pose_keypoints(Settings(backend="openvino", **base), coco_requests)
    ov16 = _pose_keypoints(
        Settings(backend="openvino", openvino_precision="bf16", **base), coco_requests
    )
    people = [p for _, ps in coco_requests for p in ps]
    assert ort.shape == (len(people), 17, 3)
    d32 = np.abs(ov32 - ort)
    d16 = np.abs(ov16 - ort)
    sigmas = ModelRepository(shared_repo).get("pp_tinypose_256x192").sigmas
    oks = per_instance_oks(
        ov16, ort, np.ones(ort.shape[:2]), np.array([p["area"] for p in people]), sigmas
    )
    print(
        f"OV f32 vs ORT: max |dxy| {d32[..., :2].max():.3g} px, max |dscore| {d32[..., 2].max():.3g}; "
        f"OV bf16 vs ORT: max |dxy| {d16[..., :2].max():.3g} px, median {np.median(d16[..., :2]):.3g}, "
        f"max |dscore| {d16[..., 2].max():.3g}, OKS mean {oks.mean():.4f} min {oks.min():.4f}"
    )
    assert d32[..., :2].max() <= 2e-3 and d32[..., 2].max() <= 5e-5
    assert oks.mean() >= 0.995 and oks.min() >= 0.99 and np.median(d16[..., :2]) <= 0.25
