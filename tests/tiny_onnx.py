"""Tiny ONNX models written on the fly (``onnx`` package, no torch) for tests that need real
ONNX Runtime sessions but not real networks."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _save(graph, path: Path) -> Path:
    """Check the opset-17 model of ``graph`` and write it to ``path`` (parents created)."""
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # loadable by every onnxruntime the project allows
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def write_constant_pose_onnx(
    path: Path, value: float, keypoints: int = 2, input_name: str = "image"
) -> Path:
    """A top-down pose model for :func:`tests.fake_cards.pose_card`: input ``(N, 3, 256, 192)``
    named ``input_name``, output ``heatmaps`` ``(N, keypoints, 64, 48)`` equal to ``value``
    everywhere (AveragePool 4x4 then a 1x1 convolution with zero weights and bias ``value``), so
    every decoded keypoint score is ``value``. Writes ``path`` (parents created) and returns it."""
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.zeros((keypoints, 3, 1, 1), np.float32), "w")
    bias = numpy_helper.from_array(np.full((keypoints,), value, np.float32), "b")
    graph = helper.make_graph(
        [
            helper.make_node(
                "AveragePool", [input_name], ["pooled"], kernel_shape=[4, 4], strides=[4, 4]
            ),
            helper.make_node("Conv", ["pooled", "w", "b"], ["heatmaps"]),
        ],
        "constant_pose",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", 3, 256, 192])],
        [helper.make_tensor_value_info("heatmaps", TensorProto.FLOAT, ["N", keypoints, 64, 48])],
        initializer=[weight, bias],
    )
    return _save(graph, path)


def write_constant_pose_entry(root: Path, name: str, value: float) -> Path:
    """Write (or overwrite) the model-repository entry ``root/name``: a
    :func:`tests.fake_cards.pose_card` card and :func:`write_constant_pose_onnx` serving the
    constant ``value`` (every keypoint score of its ``/pose`` answer is ``value``); returns the
    ONNX path."""
    from tests.fake_cards import pose_card

    (root / name).mkdir(exist_ok=True)
    pose_card(name).save(root / name)
    return write_constant_pose_onnx(root / name / "1" / "model.onnx", value)


def write_conv_seg_onnx(path: Path, classes: int = 3, seed: int = 0) -> Path:
    """A segmentation model for :func:`tests.fake_cards.seg_card` with ``classes`` classes: input
    ``input`` ``(N, 3, H, W)``, output ``logits`` ``(N, classes, ceil(H/4), ceil(W/4))``, a fixed
    random 1x1 convolution of every 4th pixel (stride 4, so any H, W >= 1 works, like the
    stride-4 logits of HRNetV2). Writes ``path`` (parents created) and returns it."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weight = numpy_helper.from_array(
        rng.standard_normal((classes, 3, 1, 1)).astype(np.float32), "w"
    )
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["logits"], strides=[4, 4])],
        "conv_seg",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes, "h", "w"])],
        initializer=[weight],
    )
    return _save(graph, path)


def write_failing_pose_onnx(path: Path) -> Path:
    """A top-down pose model that ONNX Runtime fails on for bright inputs: input ``image``
    ``(N, 3, 16, 12)``, output ``heatmaps`` ``(N, 2, 8, 6)`` = ``avgpool2x2(image)[:, :2] +
    [0.0][max(image) > 250]``: any input value above 250 makes Gather index its one-element table
    out of bounds, a genuine ORT runtime error. Writes ``path`` (parents created), returns it."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("AveragePool", ["image"], ["pooled"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Slice", ["pooled", "starts", "ends", "axes"], ["hm"]),
        helper.make_node("ReduceMax", ["image"], ["peak"], keepdims=0),
        helper.make_node("Greater", ["peak", "limit"], ["bright"]),
        helper.make_node("Cast", ["bright"], ["index"], to=TensorProto.INT64),
        helper.make_node("Gather", ["table", "index"], ["offset"], axis=0),
        helper.make_node("Add", ["hm", "offset"], ["heatmaps"]),
    ]
    consts = {
        "starts": np.array([0], np.int64),
        "ends": np.array([2], np.int64),
        "axes": np.array([1], np.int64),
        "limit": np.array(250.0, np.float32),
        "table": np.array([0.0], np.float32),
    }
    graph = helper.make_graph(
        nodes,
        "toy_pose",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 3, 16, 12])],
        [helper.make_tensor_value_info("heatmaps", TensorProto.FLOAT, ["n", 2, 8, 6])],
        [numpy_helper.from_array(v, k) for k, v in consts.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def write_conv_pose_onnx(path: Path, keypoints: int = 2, seed: int = 0) -> Path:
    """A small top-down pose network for :func:`tests.fake_cards.pose_card` with real structure
    (for quantisation tests): input ``image`` ``(N, 3, 256, 192)`` -> 4x4 average pool -> 3x3
    convolution to 8 channels -> ReLU -> 1x1 convolution -> ``heatmaps``
    ``(N, keypoints, 64, 48)``, fixed random weights of ``seed``. Writes ``path``, returns it."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array(rng.normal(0, 0.5, (8, 3, 3, 3)).astype(np.float32), "w1")
    b1 = numpy_helper.from_array(rng.normal(0, 0.1, (8,)).astype(np.float32), "b1")
    w2 = numpy_helper.from_array(rng.normal(0, 0.5, (keypoints, 8, 1, 1)).astype(np.float32), "w2")
    graph = helper.make_graph(
        [
            helper.make_node(
                "AveragePool", ["image"], ["pooled"], kernel_shape=[4, 4], strides=[4, 4]
            ),
            helper.make_node("Conv", ["pooled", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c1"], ["r1"]),
            helper.make_node("Conv", ["r1", "w2"], ["heatmaps"]),
        ],
        "conv_pose",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 256, 192])],
        [helper.make_tensor_value_info("heatmaps", TensorProto.FLOAT, ["N", keypoints, 64, 48])],
        initializer=[w1, b1, w2],
    )
    return _save(graph, path)


def write_depthwise_pose_onnx(path: Path, keypoints: int = 2, seed: int = 0) -> Path:
    """A Lite-HRNet-like chain for mixed-precision tests: input ``image`` ``(N, 3, 256, 192)``
    -> 4x4 average pool -> 3x3 convolution to 8 channels + bias -> ReLU -> 3x3 depthwise
    convolution + bias whose channel ``c`` weights are scaled by ``10 ** (c / 4 - 1)`` (0.1 to
    ~5.6: per-channel magnitudes that one per-tensor int8 scale serves badly) -> 1x1 convolution
    -> ``heatmaps`` ``(N, keypoints, 64, 48)``; nodes unnamed (``Conv_3`` is the depthwise one
    after :func:`export.quantize.name_nodes`), fixed random weights of ``seed``."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    gain = (10.0 ** (np.arange(8) / 4 - 1)).reshape(8, 1, 1, 1)
    arrays = {
        "w1": rng.normal(0, 0.5, (8, 3, 3, 3)),
        "b1": rng.normal(0, 0.1, (8,)),
        "wd": rng.normal(0, 0.3, (8, 1, 3, 3)) * gain,
        "bd": rng.normal(0, 0.1, (8,)),
        "w3": rng.normal(0, 0.5, (keypoints, 8, 1, 1)),
    }
    inits = [numpy_helper.from_array(a.astype(np.float32), k) for k, a in arrays.items()]
    graph = helper.make_graph(
        [
            helper.make_node(
                "AveragePool", ["image"], ["pooled"], kernel_shape=[4, 4], strides=[4, 4]
            ),
            helper.make_node("Conv", ["pooled", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c1"], ["r1"]),
            helper.make_node("Conv", ["r1", "wd", "bd"], ["d1"], pads=[1, 1, 1, 1], group=8),
            helper.make_node("Conv", ["d1", "w3"], ["heatmaps"]),
        ],
        "depthwise_pose",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 256, 192])],
        [helper.make_tensor_value_info("heatmaps", TensorProto.FLOAT, ["N", keypoints, 64, 48])],
        initializer=inits,
    )
    return _save(graph, path)


def write_pointwise_conv_onnx(path: Path, cin: int = 4, cout: int = 3, seed: int = 0) -> Path:
    """One 1x1 convolution with bias, ``x`` ``(N, cin, H, W)`` -> ``y`` ``(N, cout, H, W)``,
    fixed random weights of ``seed`` (a per-pixel matrix product: its int8 error has a closed
    form). Writes ``path``, returns it."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.normal(0, 1, (cout, cin, 1, 1)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.normal(0, 1, (cout,)).astype(np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"])],
        "pointwise",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", cin, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", cout, "H", "W"])],
        initializer=[w, b],
    )
    return _save(graph, path)
