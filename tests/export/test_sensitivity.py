"""Sensitivity-guided mixed precision (export/sensitivity.py, ``--fp32-nodes auto[:K]``): the
per-tensor SQNR against the uniform-rounding closed form, the ranking, the search's end points
and the CLI recording the kept nodes on the card."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime.quantization")

import onnx
from onnx import numpy_helper

from export.quantize import quantize_int8, run_onnx
from export.sensitivity import activation_sqnr, rank_nodes, search_fp32_nodes
from tests.fake_cards import pose_card
from tests.tiny_onnx import write_depthwise_pose_onnx, write_pointwise_conv_onnx


def test_sqnr_of_unclipped_tensors_is_the_uniform_rounding_figure(tmp_path):
    """Calibrated by min-max on the very crops measured, nothing is clipped and the error is
    plain rounding, uniform on [-s/2, s/2]: noise power s^2 / 12 per value, so SQNR =
    10 log10(mean(x^2) / (s^2 / 12)) (within 0.2 dB on ~1500-2000 values)."""
    src = write_pointwise_conv_onnx(tmp_path / "pw.onnx", cin=4, cout=3, seed=0)
    x = np.random.default_rng(1).normal(0, 1, (16, 4, 5, 6)).astype(np.float32)
    dst = tmp_path / "pw_int8.onnx"
    quantize_int8(src, dst, x, fp32_out=tmp_path / "pre.onnx")
    sqnr = activation_sqnr(tmp_path / "pre.onnx", dst, x)
    assert set(sqnr) == {"x", "y_QuantizeLinear_Input"}  # the output's producer, renamed

    q = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(dst)).graph.initializer}
    s_x = float(q["x_scale"])
    assert sqnr["x"] == pytest.approx(
        10 * math.log10(np.mean(x.astype(np.float64) ** 2) / (s_x**2 / 12)), abs=0.2
    )
    y = run_onnx(src, x).astype(np.float64)
    s_y = float(q["y_scale"])
    assert sqnr["y_QuantizeLinear_Input"] == pytest.approx(
        10 * math.log10(np.mean(y**2) / (s_y**2 / 12)), abs=0.2
    )


def test_rank_nodes_scores_each_node_by_its_worst_dequantised_input(tmp_path):
    """In the all-int8 depthwise chain Conv_1 reads dq(pooled), Conv_3 dq(r1), Conv_4 dq(d1)
    (the average pool reads the raw image): ranked by the given dB, worst first."""
    src = write_depthwise_pose_onnx(tmp_path / "dw.onnx")
    x = np.random.default_rng(0).normal(0, 1, (4, 3, 256, 192)).astype(np.float32)
    quantize_int8(src, tmp_path / "all.onnx", x)
    ranked = rank_nodes(tmp_path / "all.onnx", {"pooled": 30.0, "r1": 10.0, "d1": 20.0})
    assert ranked == [("Conv_3", 10.0), ("Conv_4", 20.0), ("Conv_1", 30.0)]


def test_search_ends_at_fp32_or_at_the_threshold(tmp_path):
    """K = 0 is the all-int8 graph; keeping every node that reads a dequantised value (3 here,
    below FIRST_K, so the schedule is 0 then the cap) gives the fp32 graph exactly; a
    threshold the all-int8 graph meets stops at K = 0."""
    src = write_depthwise_pose_onnx(tmp_path / "dw.onnx")
    x = np.random.default_rng(0).normal(0, 1, (8, 3, 256, 192)).astype(np.float32)
    dst, pre = tmp_path / "all.onnx", tmp_path / "pre.onnx"
    quantize_int8(src, dst, x, fp32_out=pre)
    card = pose_card()
    steps = search_fp32_nodes(pre, dst, x, card, threshold=1.0, cap=10)
    assert [s.k for s in steps] == [0, 3]
    assert steps[0].agreement.max_abs_diff > 0
    assert sorted(steps[-1].nodes) == ["Conv_1", "Conv_3", "Conv_4"]
    assert steps[-1].agreement.mean_oks == 1.0 and steps[-1].agreement.max_abs_diff == 0.0
    again = search_fp32_nodes(pre, dst, x, card, threshold=steps[0].agreement.mean_oks, cap=10)
    assert [s.k for s in again] == [0]
    assert again[0].agreement.mean_oks == steps[0].agreement.mean_oks


def _noise_folder(root, images=2, seed=0):
    """A COCO-style calibration folder of uniform-noise PNGs (the tiny random networks' int8
    keypoints move on noise, where on real photos their flat heatmaps often keep the peak)."""
    import cv2

    rng = np.random.default_rng(seed)
    root.mkdir()
    coco = {"images": [], "annotations": []}
    for i in range(1, images + 1):
        cv2.imwrite(str(root / f"{i}.png"), rng.integers(0, 256, (240, 320, 3), np.uint8))
        coco["images"].append({"id": i, "file_name": f"{i}.png", "width": 320, "height": 240})
        for j, box in enumerate(([10, 20, 100, 150], [150, 40, 120, 180])):
            coco["annotations"].append({"id": 10 * i + j, "image_id": i, "bbox": box})
    (root / "ann.json").write_text(json.dumps(coco))
    return root


def test_cli_auto_fp32_nodes_records_the_kept_nodes(tmp_path):
    """``--fp32-nodes auto:3 --min-agreement 1`` on noise crops (all-int8 agreement below 1):
    the search keeps the 3 nodes, reaches 1.0, and the card lists them with the count."""
    from export.cli import main

    src = write_depthwise_pose_onnx(tmp_path / "dw.onnx", keypoints=2, seed=0)
    card = pose_card("tiny_dw")
    card.save(tmp_path)
    calib = _noise_folder(tmp_path / "noise")
    argv = [
        "--onnx", str(src), "--card", str(tmp_path / "card.json"),
        "--model-repository", str(tmp_path / "repo"), "--name", "tiny_mixed",
        "--precision", "int8", "--calibration", str(calib), "--calibration-crops", "4",
        "--fp32-nodes", "auto:3", "--min-agreement", "1",
    ]  # fmt: skip
    assert main(argv) == 0
    quant = json.loads((tmp_path / "repo" / "tiny_mixed" / "card.json").read_text())["quantization"]
    assert sorted(quant["excluded_nodes"]) == ["Conv_1", "Conv_3", "Conv_4"]
    assert quant["check"]["fp32_nodes"] == 3.0 and quant["check"]["keypoint_mean_oks"] == 1.0
    assert "at most 3" in quant["method"]


@pytest.mark.parametrize("value", ["auto:0", "auto:x", "auto,auto:3"])
def test_cli_auto_fp32_nodes_usage_errors(tmp_path, capsys, value):
    from export.cli import main

    argv = ["--shared-models", "--model-repository", str(tmp_path), "--precision", "int8"]
    rc = main(argv + ["--calibration", "DIR", "--fp32-nodes", value])
    assert rc == 2
    assert "--fp32-nodes" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
