"""Tiny ONNX models written on the fly (``onnx`` package, no torch) for tests that need real
ONNX Runtime sessions but not real networks."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def write_constant_pose_onnx(path: Path, value: float, keypoints: int = 2,
                             input_name: str = "image") -> Path:
    """A top-down pose model for :func:`tests.fake_cards.pose_card`: input ``(N, 3, 256, 192)``
    named ``input_name``, output ``heatmaps`` ``(N, keypoints, 64, 48)`` equal to ``value``
    everywhere (AveragePool 4x4 then a 1x1 convolution with zero weights and bias ``value``), so
    every decoded keypoint score is ``value``. Writes ``path`` (parents created) and returns it."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.zeros((keypoints, 3, 1, 1), np.float32), "w")
    bias = numpy_helper.from_array(np.full((keypoints,), value, np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("AveragePool", [input_name], ["pooled"], kernel_shape=[4, 4],
                          strides=[4, 4]),
         helper.make_node("Conv", ["pooled", "w", "b"], ["heatmaps"])],
        "constant_pose",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", 3, 256, 192])],
        [helper.make_tensor_value_info("heatmaps", TensorProto.FLOAT, ["N", keypoints, 64, 48])],
        initializer=[weight, bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path
