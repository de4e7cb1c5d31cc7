"""TritonBackend against a real tritonserver (Python-backend adapter entries running the ONNX graphs).

Three small random ONNX models (made here with onnx.helper, dynamic batch) stand in for the pose,
detector and segmentation models; each is served through ``export.triton_adapter`` and the numbers
that come back through :class:`service.backends.triton.TritonBackend` must equal onnxruntime's on
the same graph. Then Triton is killed / frozen / restarted under a live backend object.

The card/config checks at the top need no server. The rest skip only when tritonserver is not
installed (``tests/triton_env.sh`` installs it; CI runs it).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from export.triton_adapter import write_python_entry
from service.backends.base import BackendError, BackendUnavailable
from service.backends.triton import (
    TritonBackend,
    TritonModelConfig,
    TritonModelMismatch,
    check_model_config,
)
from service.cards import ModelCard, make_card
from tests.triton_fixtures import triton_factory, triton_factory_module

NORM = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}
POSE_MAX_BATCH = 4


# ----------------------------------------------------------------------------- models and cards


def pose_card(**kw) -> ModelCard:
    d = dict(
        name="toy_pose",
        task="topdown_pose",
        input_size=(12, 16),
        inputs=[{"name": "image", "dims": [3, 16, 12]}],
        outputs=[{"name": "heatmaps", "dims": [4, 8, 6]}],
        max_batch_size=POSE_MAX_BATCH,
        normalization=NORM,
        codec={"input_size": (12, 16), "heatmap_size": (6, 8)},
        keypoint_names=["a", "b", "c", "d"],
    )
    d.update(kw)
    return make_card(**d)


def det_card(**kw) -> ModelCard:
    d = dict(
        name="toy_det",
        task="detection",
        input_size=(8, 8),
        inputs=[{"name": "input", "dims": [3, 8, 8]}],
        outputs=[
            {"name": "dets", "dims": [-1, 5]},
            {"name": "labels", "dtype": "INT64", "dims": [-1]},
        ],
        max_batch_size=8,
        normalization=NORM,
        detector={},
    )
    d.update(kw)
    return make_card(**d)


def seg_card(**kw) -> ModelCard:
    d = dict(
        name="toy_seg",
        task="segmentation",
        input_size=(None, None),
        inputs=[{"name": "input", "dims": [3, -1, -1]}],
        outputs=[{"name": "logits", "dims": [5, -1, -1]}],
        max_batch_size=2,
        normalization=NORM,
        classes=list("abcde"),
    )
    d.update(kw)
    return make_card(**d)


def _save(graph, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def make_pose_onnx(path: Path, rng: np.random.Generator) -> Path:
    """image [N,3,16,12] -> 3x3 conv stride 2 (4 channels) + ReLU -> heatmaps [N,4,8,6]."""
    w = numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.normal(size=(4,)).astype(np.float32), "b")
    nodes = [
        helper.make_node(
            "Conv",
            ["image", "w", "b"],
            ["c"],
            kernel_shape=[3, 3],
            strides=[2, 2],
            pads=[1, 1, 1, 1],
        ),
        helper.make_node("Relu", ["c"], ["heatmaps"]),
    ]
    g = helper.make_graph(
        nodes,
        "pose",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 16, 12])],
        [helper.make_tensor_value_info("heatmaps", TensorProto.FLOAT, ["N", 4, 8, 6])],
        [w, b],
    )
    return _save(g, path)


def make_det_onnx(path: Path, rng: np.random.Generator) -> Path:
    """input [N,3,8,8] -> flatten @ W [192,35] -> dets [N,7,5]; labels = argmax over the 5 (INT64)."""
    w = numpy_helper.from_array(rng.normal(size=(192, 35)).astype(np.float32), "w")
    shape = numpy_helper.from_array(np.array([0, 7, 5], dtype=np.int64), "shape")
    nodes = [
        helper.make_node("Flatten", ["input"], ["f"], axis=1),
        helper.make_node("MatMul", ["f", "w"], ["m"]),
        helper.make_node("Reshape", ["m", "shape"], ["dets"]),
        helper.make_node("ArgMax", ["dets"], ["labels"], axis=2, keepdims=0),
    ]
    g = helper.make_graph(
        nodes,
        "det",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [
            helper.make_tensor_value_info("dets", TensorProto.FLOAT, ["N", 7, 5]),
            helper.make_tensor_value_info("labels", TensorProto.INT64, ["N", 7]),
        ],
        [w, shape],
    )
    return _save(g, path)


def make_seg_onnx(path: Path, rng: np.random.Generator) -> Path:
    """input [N,3,H,W] -> 1x1 conv to 5 classes -> logits [N,5,H,W] (H, W dynamic)."""
    w = numpy_helper.from_array(rng.normal(size=(5, 3, 1, 1)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["input", "w"], ["logits"], kernel_shape=[1, 1])]
    g = helper.make_graph(
        nodes,
        "seg",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5, "H", "W"])],
        [w],
    )
    return _save(g, path)


class Models:
    """The three toy models: cards, ONNX paths, onnxruntime sessions (the reference)."""

    def __init__(self, root: Path):
        rng = np.random.default_rng(5)
        self.root = root
        self.cards = {c.name: c for c in (pose_card(), det_card(), seg_card())}
        self.onnx = {
            "toy_pose": make_pose_onnx(root / "pose.onnx", rng),
            "toy_det": make_det_onnx(root / "det.onnx", rng),
            "toy_seg": make_seg_onnx(root / "seg.onnx", rng),
        }
        self.sessions = {
            n: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
            for n, p in self.onnx.items()
        }

    def repository(self, name: str) -> Path:
        repo = self.root / name
        for model, card in self.cards.items():
            write_python_entry(card, self.onnx[model], repo)
        return repo

    def reference(self, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        sess = self.sessions[model]
        names = [o.name for o in sess.get_outputs()]
        return dict(zip(names, sess.run(names, inputs)))


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Models:
    return Models(tmp_path_factory.mktemp("triton_models"))


@pytest.fixture(scope="module")
def server(models, triton_factory_module):
    return triton_factory_module(models.repository("repo_shared"))


def run(coro):
    return asyncio.run(coro)


def assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert set(got) == set(want)
    for name, ref in want.items():
        assert got[name].shape == ref.shape, name
        assert got[name].dtype == ref.dtype, name
        if ref.dtype.kind == "f":
            np.testing.assert_allclose(got[name], ref, rtol=1e-5, atol=1e-5, err_msg=name)
        else:
            np.testing.assert_array_equal(got[name], ref, err_msg=name)


# ----------------------------------------------------------------------------- no server needed


def _config(**kw) -> TritonModelConfig:
    """Triton's JSON for the toy pose model as gRPC returns it (int64 dims as strings)."""
    data = {
        "config": {
            "name": "toy_pose",
            "backend": "python",
            "max_batch_size": POSE_MAX_BATCH,
            "input": [{"name": "image", "data_type": "TYPE_FP32", "dims": ["3", "16", "12"]}],
            "output": [{"name": "heatmaps", "data_type": "TYPE_FP32", "dims": ["4", "8", "6"]}],
        }
    }
    data["config"].update(kw)
    return TritonModelConfig.from_json(data)


def test_config_from_grpc_json_normalises_dims_and_types():
    cfg = _config()
    assert cfg.max_batch_size == 4 and cfg.platform == "python"
    assert cfg.inputs["image"].dims == (3, 16, 12) and cfg.inputs["image"].dtype == "FP32"
    assert cfg.outputs["heatmaps"].dims == (4, 8, 6)
    # an unset max_batch_size is absent from protobuf JSON and means 0
    data = {"name": "m", "input": [], "output": []}
    assert TritonModelConfig.from_json(data).max_batch_size == 0


def test_check_model_config_accepts_matching_card():
    assert check_model_config(pose_card(), _config()) == []
    # Triton -1 accepts the card's fixed size; an output the card leaves dynamic is fine
    cfg = _config(input=[{"name": "image", "data_type": "TYPE_FP32", "dims": ["3", "-1", "-1"]}])
    assert check_model_config(pose_card(), cfg) == []
    card = pose_card(outputs=[{"name": "heatmaps", "dims": [4, -1, -1]}])
    assert check_model_config(card, _config()) == []


@pytest.mark.parametrize(
    "change, expect",
    [
        (dict(max_batch_size=0), "no batching"),
        (dict(max_batch_size=8), "max_batch_size is 8 in Triton but 4 in the card"),
        (
            dict(input=[{"name": "img", "data_type": "TYPE_FP32", "dims": ["3", "16", "12"]}]),
            "input 'image' of the card is not served",
        ),
        (
            dict(input=[{"name": "image", "data_type": "TYPE_FP16", "dims": ["3", "16", "12"]}]),
            "input 'image' is FP16 in Triton but FP32 in the card",
        ),
        (
            dict(input=[{"name": "image", "data_type": "TYPE_FP32", "dims": ["3", "16", "13"]}]),
            "input 'image' has dims [3, 16, 13] in Triton but [3, 16, 12] in the card (axis 3",
        ),
        (
            dict(output=[{"name": "heatmaps", "data_type": "TYPE_FP32", "dims": ["4", "8"]}]),
            "output 'heatmaps' has dims [4, 8] in Triton",
        ),
        (
            dict(
                input=[
                    {"name": "image", "data_type": "TYPE_FP32", "dims": ["3", "16", "12"]},
                    {"name": "extra", "data_type": "TYPE_FP32", "dims": ["1"]},
                ]
            ),
            "requires inputs ['extra']",
        ),
    ],
)
def test_check_model_config_names_each_mismatch(change, expect):
    problems = check_model_config(pose_card(), _config(**change))
    assert problems and expect in problems[0], problems


def test_card_dynamic_axis_against_fixed_triton_input_is_a_mismatch():
    card = pose_card(inputs=[{"name": "image", "dims": [3, -1, -1]}])
    problems = check_model_config(card, _config())
    assert len(problems) == 1 and "axis 2" in problems[0]


def test_backend_rejects_bad_arguments():
    with pytest.raises(ValueError, match="protocol"):
        TritonBackend("127.0.0.1:1", protocol="tcp")
    with pytest.raises(ValueError, match="timeout_s"):
        TritonBackend("127.0.0.1:1", timeout_s=float("inf"))


@pytest.mark.parametrize(
    "status, unavailable",
    [
        ("StatusCode.UNAVAILABLE", True),
        ("StatusCode.DEADLINE_EXCEEDED", True),
        ("StatusCode.INVALID_ARGUMENT", False),
        ("StatusCode.INTERNAL", False),
        ("503", True),
        ("400", False),
    ],
)
def test_error_mapping(status, unavailable):
    from tritonclient.utils import InferenceServerException

    backend = TritonBackend("127.0.0.1:1", retry_after_s=3.0)
    err = backend._map_error(InferenceServerException("boom", status=status), "m")
    assert isinstance(err, BackendError)
    assert isinstance(err, BackendUnavailable) is unavailable
    assert "model 'm'" in str(err) and "boom" in str(err)
    if unavailable:
        assert err.retry_after_s == 3.0
    assert isinstance(backend._map_error(asyncio.TimeoutError(), "m"), BackendUnavailable)
    assert isinstance(backend._map_error(ConnectionRefusedError(), "m"), BackendUnavailable)
    assert not isinstance(backend._map_error(ValueError("x"), "m"), BackendUnavailable)


def test_start_fails_fast_when_triton_unreachable():
    from tests.triton_fixtures import free_port

    async def go():
        backend = TritonBackend(f"127.0.0.1:{free_port()}", timeout_s=1, startup_timeout_s=0)
        try:
            with pytest.raises(BackendUnavailable, match="not ready after 0 s: server not ready"):
                await backend.start({"toy_pose": pose_card()})
            assert await backend.ready() is False
        finally:
            await backend.close()

    run(go())


# ----------------------------------------------------------------------------- real tritonserver


@pytest.mark.slow  # a real tritonserver
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_outputs_equal_onnxruntime(models, server, protocol):
    rng = np.random.default_rng(1)
    url = server.grpc_url if protocol == "grpc" else server.http_url
    pose_x = rng.normal(size=(10, 3, 16, 12)).astype(np.float32)  # 10 > max 4: three requests
    det_x = rng.normal(size=(3, 3, 8, 8)).astype(np.float32)
    seg_a = rng.normal(size=(2, 3, 20, 28)).astype(np.float32)
    seg_b = rng.normal(size=(3, 3, 9, 13)).astype(np.float32)  # 3 > max 2: split, other size

    async def go():
        backend = TritonBackend(url, protocol=protocol, timeout_s=10)
        try:
            await backend.start(models.cards)
            assert await backend.ready() and await backend.ready("toy_seg")
            assert not await backend.ready("no_such_model")
            pose = await backend.infer("toy_pose", {"image": pose_x})
            det = await backend.infer("toy_det", {"input": det_x})
            seg1 = await backend.infer("toy_seg", {"input": seg_a})
            seg2 = await backend.infer("toy_seg", {"input": seg_b})
            only_labels = await backend.infer("toy_det", {"input": det_x}, outputs=["labels"])
            # float64 input is cast to the card's FP32
            pose64 = await backend.infer("toy_pose", {"image": pose_x[:2].astype(np.float64)})
            return pose, det, seg1, seg2, only_labels, pose64
        finally:
            await backend.close()

    pose, det, seg1, seg2, only_labels, pose64 = run(go())
    assert_same(pose, models.reference("toy_pose", {"image": pose_x}))
    assert pose["heatmaps"].shape == (10, 4, 8, 6) and pose["heatmaps"].flags.writeable
    assert_same(det, models.reference("toy_det", {"input": det_x}))
    assert det["labels"].dtype == np.int64 and det["dets"].shape == (3, 7, 5)
    assert_same(seg1, models.reference("toy_seg", {"input": seg_a}))
    assert_same(seg2, models.reference("toy_seg", {"input": seg_b}))
    assert seg2["logits"].shape == (3, 5, 9, 13)
    assert list(only_labels) == ["labels"]
    np.testing.assert_array_equal(only_labels["labels"], det["labels"])
    np.testing.assert_allclose(pose64["heatmaps"], pose["heatmaps"][:2], rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # a real tritonserver
def test_shared_memory_inputs(models, server):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(6, 3, 16, 12)).astype(np.float32)
    seg_x = rng.normal(size=(1, 3, 300, 300)).astype(np.float32)  # 1.08 MB > 1 MiB slot

    async def go():
        backend = TritonBackend(
            server.grpc_url, shared_memory=True, shm_slots=2, shm_slot_bytes=1 << 20, timeout_s=10
        )
        try:
            await backend.start(models.cards)
            status = await backend._get_client().get_system_shared_memory_status(as_json=True)
            regions = status.get("regions", {})
            out = await backend.infer("toy_pose", {"image": x})  # 6 > max 4: two slots
            from tritonclient.utils import shared_memory as shm

            pool = backend._shm
            in_shm = [
                shm.get_contents_as_numpy(pool.handle, np.float32, (4, 3, 16, 12)).copy(),
                shm.get_contents_as_numpy(
                    pool.handle, np.float32, (2, 3, 16, 12), offset=pool.slot_bytes
                ).copy(),
            ]
            big = await backend.infer("toy_seg", {"input": seg_x})
            return out, big, regions, pool.name, in_shm
        finally:
            await backend.close()

    out, big, regions, name, in_shm = run(go())
    assert name in regions  # registered with Triton
    # the two chunks' inputs are what sits in the two slots
    np.testing.assert_array_equal(in_shm[0], x[:4])
    np.testing.assert_array_equal(in_shm[1], x[4:])
    assert_same(out, models.reference("toy_pose", {"image": x}))
    # larger than a slot: sent over the wire instead, same numbers
    assert_same(big, models.reference("toy_seg", {"input": seg_x}))


@pytest.mark.slow  # a real tritonserver
def test_start_refuses_cards_that_disagree_with_triton(models, server):
    bad = dict(models.cards)
    bad["toy_pose"] = pose_card(inputs=[{"name": "image", "dims": [3, 16, 13]}])
    bad["toy_det"] = det_card(
        outputs=[
            {"name": "dets", "dims": [-1, 5]},
            {"name": "labels", "dtype": "INT32", "dims": [-1]},
        ]
    )

    async def go():
        backend = TritonBackend(server.grpc_url, timeout_s=10)
        try:
            await backend.start(bad)
        finally:
            await backend.close()

    with pytest.raises(TritonModelMismatch) as info:
        run(go())
    msg = str(info.value)
    assert "input 'image' has dims [3, 16, 12] in Triton but [3, 16, 13] in the card" in msg
    assert "output 'labels' is INT64 in Triton but INT32 in the card" in msg
    assert "toy_seg" not in msg


@pytest.mark.slow  # a real tritonserver
def test_start_reports_model_triton_does_not_serve(models, server):
    cards = dict(models.cards)
    cards["ghost"] = pose_card(name="ghost")

    async def go():
        backend = TritonBackend(server.grpc_url, timeout_s=2, startup_timeout_s=1)
        try:
            await backend.start(cards)
        finally:
            await backend.close()

    with pytest.raises(BackendUnavailable, match="model 'ghost' not ready"):
        run(go())


@pytest.mark.slow  # a real tritonserver
def test_bad_input_is_a_backend_error_not_unavailable(models, server):
    async def go():
        backend = TritonBackend(server.grpc_url, timeout_s=10)
        try:
            await backend.start(models.cards)
            with pytest.raises(BackendError, match="takes inputs") as e1:
                await backend.infer("toy_pose", {"img": np.zeros((1, 3, 16, 12), np.float32)})
            with pytest.raises(BackendError) as e2:  # wrong spatial size: Triton refuses it
                await backend.infer("toy_pose", {"image": np.zeros((1, 3, 16, 13), np.float32)})
            return e1.value, e2.value
        finally:
            await backend.close()

    e1, e2 = run(go())
    assert not isinstance(e1, BackendUnavailable) and not isinstance(e2, BackendUnavailable)


@pytest.mark.slow  # a real tritonserver
@pytest.mark.parametrize("protocol, shm", [("grpc", False), ("http", False), ("grpc", True)])
def test_kill_gives_unavailable_and_restart_recovers(models, triton_factory, protocol, shm):
    server = triton_factory(models.repository(f"repo_kill_{protocol}_{shm}"))
    url = server.grpc_url if protocol == "grpc" else server.http_url
    timeout_s = 2.0
    x = np.random.default_rng(3).normal(size=(5, 3, 16, 12)).astype(np.float32)
    want = models.reference("toy_pose", {"image": x})

    async def go():
        backend = TritonBackend(
            url, protocol=protocol, timeout_s=timeout_s, shared_memory=shm, retry_after_s=2.0
        )
        try:
            await backend.start(models.cards)
            before = await backend.infer("toy_pose", {"image": x})
            server.kill()
            # bounded: the request must fail on its own, well before this guard
            with pytest.raises(BackendUnavailable) as info:
                await asyncio.wait_for(backend.infer("toy_pose", {"image": x}), 3 * timeout_s + 5)
            assert info.value.retry_after_s == 2.0
            assert await backend.ready() is False
            await asyncio.to_thread(server.restart)
            # same backend object: service resumes by itself (gRPC reconnect backoff <= 1 s)
            after, attempts = None, 0
            while after is None and attempts < 60:
                attempts += 1
                try:
                    after = await backend.infer("toy_pose", {"image": x})
                except BackendUnavailable:
                    await asyncio.sleep(0.25)
            ready = False
            for _ in range(40):  # ready() answers False for 1 s after a failed check
                if await backend.ready():
                    ready = True
                    break
                await asyncio.sleep(0.1)
            assert ready
            return before, after
        finally:
            await backend.close()

    before, after = run(go())
    assert_same(before, want)
    assert after is not None, "service did not resume after Triton restarted"
    assert_same(after, want)


@pytest.mark.slow  # a real tritonserver
def test_hung_triton_times_out_as_unavailable(models, triton_factory):
    server = triton_factory(models.repository("repo_hung"))
    x = np.zeros((1, 3, 16, 12), np.float32)

    async def go():
        backend = TritonBackend(server.grpc_url, timeout_s=1.0)
        try:
            await backend.start(models.cards)
            server.pause()  # SIGSTOP: sockets stay open, nothing answers
            try:
                with pytest.raises(BackendUnavailable, match="unavailable|did not answer"):
                    await asyncio.wait_for(backend.infer("toy_pose", {"image": x}), 10)
                assert await backend.ready() is False
            finally:
                server.resume()
            out = await backend.infer("toy_pose", {"image": x})
            return out
        finally:
            await backend.close()

    out = run(go())
    assert_same(out, models.reference("toy_pose", {"image": x}))
