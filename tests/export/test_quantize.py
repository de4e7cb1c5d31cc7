"""Reduced-precision export (export/quantize.py, ``hrnet-export --precision int8``): the int8 error
bound of a QDQ convolution, the keypoint-agreement check by hand, and the CLI writing or refusing
an int8 entry that the gateway's ONNX Runtime backend then serves."""

from __future__ import annotations

import asyncio
import json
import math
from collections import Counter

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime.quantization")

import onnx
from onnx import numpy_helper

from export.onnx_export import ExportError
from export.quantize import calibration_crops, check_agreement, quantize_int8, run_onnx
from tests.fake_cards import pose_card
from tests.tiny_onnx import (
    write_conv_pose_onnx,
    write_depthwise_pose_onnx,
    write_pointwise_conv_onnx,
)


def _initializers(path) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}


def test_int8_pointwise_conv_error_within_the_quantisation_step_bound(tmp_path):
    """y = W x + b per pixel. With x-hat = x + ex (|ex| <= s_x / 2, x within its calibrated
    range), W-hat = W + ew (|ew_c| <= s_w[c] / 2 per output channel), the int32 bias b-hat and the
    output re-quantised to step s_y:
    |y-hat - y| <= sum_k (|W_ck| s_x/2 + |x_k| s_w[c]/2 + s_x s_w[c]/4) + |b-hat_c - b_c| + s_y/2."""
    src = write_pointwise_conv_onnx(tmp_path / "pw.onnx", cin=4, cout=3, seed=0)
    dst = tmp_path / "pw_int8.onnx"
    x = np.random.default_rng(1).normal(0, 1, (16, 4, 5, 6)).astype(np.float32)
    quantize_int8(src, dst, x, method="minmax")  # calibrated on x itself: no clipping of x

    graph = onnx.load(str(dst)).graph
    ops = Counter(n.op_type for n in graph.node)
    assert ops["QuantizeLinear"] == 2 and ops["DequantizeLinear"] == 4  # x, y; x, y, W, b
    q = _initializers(dst)
    s_x, s_y, s_w = float(q["x_scale"]), float(q["y_scale"]), q["w_scale"].astype(np.float64)
    assert s_w.shape == (3,)  # per output channel
    # U8S8: int8 weights, uint8 activations (ONNX Runtime's fast x86 kernels)
    assert q["w_quantized"].dtype == np.int8 and q["x_zero_point"].dtype == np.uint8
    # min-max ranges (always including 0): 255 steps over [min(x, 0), max(x, 0)]
    assert s_x == pytest.approx((x.max() - min(x.min(), 0)) / 255, rel=1e-6)

    w = _initializers(src)["w"].reshape(3, 4).astype(np.float64)
    b = _initializers(src)["b"].astype(np.float64)
    b_hat = q["b_quantized"].astype(np.float64) * q["b_quantized_scale"]
    xs = x.astype(np.float64).transpose(0, 2, 3, 1).reshape(-1, 4)  # pixels x cin
    y = xs @ w.T + b
    y_hat = run_onnx(dst, x).astype(np.float64).transpose(0, 2, 3, 1).reshape(-1, 3)
    bound = (
        np.abs(w).sum(1) * s_x / 2
        + np.abs(xs) @ np.ones(4)[:, None] * s_w / 2
        + 4 * s_x * s_w / 4
        + np.abs(b_hat - b)
        + s_y / 2
    )
    err = np.abs(y_hat - y)
    assert err.max() > 0  # it really is quantised
    assert np.all(err <= bound + 1e-5)


def test_keypoint_agreement_by_hand():
    """One-hot heatmaps (plain MSRA decoding: the argmax, no quarter shift without neighbours):
    moving one keypoint's peak by 1 heatmap pixel = 4 input pixels (192 / 48). Area = 192 * 256
    / 1.25**2 = 31457.28 px²; sigmas empty -> 0.05: OKS_k = exp(-16 / (2 * 31457.28 * 0.1**2))
    = exp(-0.0254313) = 0.974889; 2 keypoints: (1 + 0.974889) / 2 = 0.987444 for that crop,
    mean over 2 crops 0.993722; argmax agreement 3 of 4 heatmaps."""
    card = pose_card()
    ref = np.zeros((2, 2, 64, 48), np.float32)
    ref[:, 0, 20, 10] = 1.0
    ref[:, 1, 40, 30] = 1.0
    red = ref.copy()
    red[1, 1, 40, 30] = 0.0
    red[1, 1, 40, 31] = 0.9
    a = check_agreement(ref, red, card)
    oks_moved = math.exp(-16 / (2 * 31457.28 * 0.1**2))
    assert oks_moved == pytest.approx(0.974889, abs=1e-6)
    assert a.mean_oks == pytest.approx((1 + (1 + oks_moved) / 2) / 2, abs=1e-9)
    assert a.argmax_agreement == 0.75
    assert a.max_abs_diff == pytest.approx(1.0)
    assert a.crops == 2
    assert check_agreement(ref, ref, card).mean_oks == 1.0
    with pytest.raises(ValueError, match="shape"):
        check_agreement(ref, red[:1], card)


def test_calibration_crops_are_the_gateways_crops_of_gt_boxes(shared):
    """mmpose_tests/coco (images in id order: 1 person, then 3 ...): the first 3 non-crowd boxes,
    xywh -> xyxy, cut and normalised as the gateway does (prepare_inputs, flip off)."""
    import cv2

    from service.pipelines.topdown import prepare_inputs

    root = shared / "data" / "mmpose_tests" / "coco"
    card = pose_card()
    crops = calibration_crops(root, card, limit=3)
    assert crops.shape == (3, 3, 256, 192) and crops.dtype == np.float32
    coco = json.loads((root / "test_coco.json").read_text())
    expected = []
    for im in sorted(coco["images"], key=lambda im: im["id"])[:2]:
        xywh = np.array(
            [
                a["bbox"]
                for a in coco["annotations"]
                if a["image_id"] == im["id"] and not a.get("iscrowd") and min(a["bbox"][2:]) >= 8
            ],
            np.float32,
        )  # float32 first, then x + w in float32 (the gateway's order for JSON boxes)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        expected.append(
            prepare_inputs(cv2.imread(str(root / im["file_name"])), boxes, card, False)[2]
        )
    assert [len(e) for e in expected][0] == 1
    np.testing.assert_array_equal(crops, np.concatenate(expected)[:3])


def test_calibration_ann_picks_the_split_whose_boxes_are_cut(tmp_path, shared):
    """``ann_file`` picks the split to cut (DLC's runs/dlc_data holds annotations/test.json,
    which sorts first, and train.json). Here the "train" file keeps only the second photo (3
    people), so its crops are crops 1..3 of the whole mmpose_tests/coco folder (its first photo
    has 1 person); a file that is not COCO-style, or missing, is an ExportError."""
    root = shared / "data" / "mmpose_tests" / "coco"
    card = pose_card()
    coco = json.loads((root / "test_coco.json").read_text())
    second = sorted(coco["images"], key=lambda im: im["id"])[1]
    train = dict(
        coco,
        images=[second],
        annotations=[a for a in coco["annotations"] if a["image_id"] == second["id"]],
    )
    (tmp_path / "train.json").write_text(json.dumps(train))
    whole = calibration_crops(root, card, limit=4)
    split = calibration_crops(root, card, limit=8, ann_file=tmp_path / "train.json")
    assert len(train["annotations"]) == 3
    np.testing.assert_array_equal(split, whole[1:4])

    (tmp_path / "bad.json").write_text(json.dumps({"images": []}))
    with pytest.raises(ExportError, match="not COCO-style"):
        calibration_crops(root, card, ann_file=tmp_path / "bad.json")
    with pytest.raises(ExportError, match="unreadable"):
        calibration_crops(root, card, ann_file=tmp_path / "missing.json")


def test_export_int8_entry_is_written_checked_and_served(tmp_path, shared, capsys):
    """``hrnet-export --onnx ... --precision int8``: the entry's graph is QDQ, its card says int8
    with the check's figures (which recompute to the same values), the gateway's ONNX Runtime
    backend serves it; a threshold just above the measured agreement refuses and writes nothing."""
    from export.cli import main
    from service.backends.onnxruntime import OnnxRuntimeBackend
    from service.repository import ModelRepository

    src = write_conv_pose_onnx(tmp_path / "pose.onnx", keypoints=2, seed=0)
    card = pose_card("tiny_pose")
    card.save(tmp_path)
    calib = shared / "data" / "mmpose_tests" / "coco"
    repo = tmp_path / "repo"
    base = [
        "--onnx",
        str(src),
        "--card",
        str(tmp_path / "card.json"),
        "--model-repository",
        str(repo),
        "--precision",
        "int8",
        "--calibration",
        str(calib),
        "--calibration-crops",
        "8",
        "--calibration-method",
        "minmax",
    ]
    ann = ["--calibration-ann", str(calib / "test_coco.json")]  # the folder's only json
    assert main(base + ann + ["--name", "tiny_int8", "--min-agreement", "0.5"]) == 0
    entry = repo / "tiny_int8"
    saved = json.loads((entry / "card.json").read_text())
    assert saved["precision"] == "int8"
    quant = saved["quantization"]
    assert quant["threshold"] == 0.5 and quant["check"]["crops"] == 8.0
    assert "minmax" in quant["method"]
    assert quant["calibration"] == f"8 ground-truth box crops from {calib / 'test_coco.json'}"
    ops = Counter(n.op_type for n in onnx.load(str(entry / "1" / "model.onnx")).graph.node)
    assert ops["QuantizeLinear"] >= 3 and ops["DequantizeLinear"] >= 5

    crops = calibration_crops(calib, card, limit=8)
    again = check_agreement(run_onnx(src, crops), run_onnx(entry / "1" / "model.onnx", crops), card)
    assert quant["check"]["keypoint_mean_oks"] == pytest.approx(again.mean_oks, abs=1e-6)
    assert 0.5 <= again.mean_oks < 1.0  # int8 moves some keypoints of this random network

    backend = OnnxRuntimeBackend(ModelRepository(repo))
    asyncio.run(backend.start())
    out = asyncio.run(backend.infer("tiny_int8", {"image": crops[:2]}))
    assert out["heatmaps"].shape == (2, 2, 64, 48)
    asyncio.run(backend.close())

    capsys.readouterr()
    strict = f"{again.mean_oks + 1e-3:.6f}"
    assert main(base + ["--name", "tiny_refused", "--min-agreement", strict]) == 2
    err = capsys.readouterr().err
    assert "refused" in err and strict.rstrip("0") in err and "keypoint agreement" in err
    assert not (repo / "tiny_refused").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--precision", "int8"], "needs --calibration"),
        (["--precision", "int8", "--calibration", "DIR", "--calibration-crops", "0"], ">= 1"),
    ],
)
def test_precision_usage_errors(tmp_path, capsys, argv, message):
    from export.cli import main

    rc = main(["--shared-models", "--model-repository", str(tmp_path)] + argv)
    assert rc == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_unnamed_nodes_get_stable_names_and_excluded_nodes_stay_fp32(tmp_path):
    """The tiny pose graph has unnamed nodes (as converted graphs do): they are named
    <op_type>_<index>, and --fp32-nodes' names then keep that node's weights in float."""
    import shutil

    from export.quantize import name_nodes

    src = write_conv_pose_onnx(tmp_path / "pose.onnx", keypoints=2, seed=0)
    copy = tmp_path / "named.onnx"
    shutil.copy(src, copy)
    assert name_nodes(copy) == ["AveragePool_0", "Conv_1", "Relu_2", "Conv_3"]
    x = np.random.default_rng(0).normal(0, 1, (8, 3, 256, 192)).astype(np.float32)
    quantize_int8(src, tmp_path / "all.onnx", x)
    quantize_int8(src, tmp_path / "mixed.onnx", x, exclude_nodes=["Conv_3"])
    full, mixed = _initializers(tmp_path / "all.onnx"), _initializers(tmp_path / "mixed.onnx")
    assert {"w1_quantized", "w2_quantized"} <= set(full)
    assert "w1_quantized" in mixed and "w2_quantized" not in mixed
    assert mixed["w2"].dtype == np.float32


@pytest.mark.slow
def test_shared_models_int8_pp_tinypose_is_refused(tmp_path, shared, capsys):
    """PP-TinyPose (Lite-HRNet) does not survive int8 (keypoint agreement ~0.45 on coco_mini
    crops, see README "Reduced precision"): ``--shared-models --precision int8`` writes the two
    fp32 entries, refuses ``pp_tinypose_256x192_int8`` with the figure, and exits 2."""
    from export.cli import main

    rc = main(
        [
            "--shared-models",
            "--shared-dir",
            str(shared),
            "--model-repository",
            str(tmp_path),
            "--precision",
            "int8",
            "--calibration",
            str(shared / "data" / "coco_mini"),
            "--calibration-crops",
            "16",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2
    assert "'pp_tinypose_256x192' refused" in err and "below the required 0.95" in err
    agreement = float(err.split("keypoint agreement (mean OKS vs fp32) ")[1].split(",")[0])
    assert agreement < 0.8
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "pp_tinypose_256x192",
        "rtmdet_nano_person_320",
    ]


def _optimised(path, out):
    """The graph ONNX Runtime actually runs: its basic-level session optimisation (where
    ``WeightBiasQuantization`` lives) written to ``out``."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.optimized_model_filepath = str(out)
    opts.log_severity_level = 3
    ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    return onnx.load(str(out)).graph


def _fq(x, scale, zp):
    """ONNX QuantizeLinear -> DequantizeLinear to uint8 (round half to even, saturate)."""
    return (np.clip(np.rint(x / scale) + zp, 0, 255) - zp) * scale


def _conv(x, w, b=None, groups=1):
    """NCHW convolution, stride 1, 'same' padding for odd kernels (float64 numpy)."""
    n, c, h, wd = x.shape
    o, ci, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2)))
    out = np.zeros((n, o, h, wd))
    per = o // groups
    for g in range(groups):
        xs, ws = xp[:, g * ci : (g + 1) * ci], w[g * per : (g + 1) * per]
        for i in range(kh):
            for j in range(kw):
                out[:, g * per : (g + 1) * per] += np.einsum(
                    "oc,nchw->nohw", ws[:, :, i, j], xs[:, :, i : i + h, j : j + wd]
                )
    return out if b is None else out + b.reshape(1, -1, 1, 1)


def test_fp32_depthwise_conv_stays_fp32_under_onnxruntime(tmp_path):
    """The depthwise Conv_3 sits between the DequantizeLinear of its input and the QuantizeLinear
    of its output. Left there with float weights (ORT's own ``nodes_to_exclude``), ONNX Runtime's
    WeightBiasQuantization re-quantises them per tensor when the session loads, and the
    "fp32" graph is further from fp32 than the all-int8 one (what PP-TinyPose showed). Kept by
    keep_fp32 it reads the float ReLU output and its own weights in the graph ORT runs; the
    output then is, step by step with the graph's scales: pq = fq(avgpool4(image));
    r1 = relu(conv(pq, dq(w1q), b1q)); d1 = fq(dwconv(r1, wd, bd));
    heatmaps = fq(conv(d1, dq(w3q))), within one output step plus one step of d1 through w3
    (float32 vs float64 rounding ties), and its error is below the all-int8 graph's."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from export.quantize import _Reader, name_nodes

    src = write_depthwise_pose_onnx(tmp_path / "dw.onnx", keypoints=2, seed=0)
    x = np.random.default_rng(0).normal(0, 1, (8, 3, 256, 192)).astype(np.float32)
    quantize_int8(src, tmp_path / "all.onnx", x)
    quantize_int8(src, tmp_path / "mixed.onnx", x, exclude_nodes=["Conv_3"])
    pre = tmp_path / "pre.onnx"
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    assert name_nodes(pre) == ["AveragePool_0", "Conv_1", "Relu_2", "Conv_3", "Conv_4"]
    quantize_static(
        str(pre),
        str(tmp_path / "ort_exclude.onnx"),
        _Reader("image", x),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=["Conv_3"],
    )
    ort_graph = _optimised(tmp_path / "ort_exclude.onnx", tmp_path / "ort_exclude_run.onnx")
    conv3 = next(n for n in ort_graph.node if n.name == "Conv_3")
    assert conv3.input[1] != "wd"  # ONNX Runtime put its own int8 weights there

    graph = _optimised(tmp_path / "mixed.onnx", tmp_path / "mixed_run.onnx")
    producer = {o: n.op_type for n in graph.node for o in n.output}
    conv3 = next(n for n in graph.node if n.name == "Conv_3")
    # the quantised graph's bias DequantizeLinear wrote "bd": the float bias is a copy
    assert list(conv3.input[1:]) == ["wd", "bd_fp32"]
    assert producer[conv3.input[0]] == "Relu"
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    f32 = _initializers(src)
    np.testing.assert_array_equal(inits["wd"], f32["wd"])
    np.testing.assert_array_equal(inits["bd_fp32"], f32["bd"])

    q = {k: v.astype(np.float64) for k, v in _initializers(tmp_path / "mixed.onnx").items()}
    w1 = q["w1_quantized"] * q["w1_scale"].reshape(-1, 1, 1, 1)
    b1 = q["b1_quantized"] * q["b1_quantized_scale"]
    w3 = q["w3_quantized"] * q["w3_scale"].reshape(-1, 1, 1, 1)
    pooled = x.astype(np.float64).reshape(8, 3, 64, 4, 48, 4).mean(axis=(3, 5))
    r1 = np.maximum(_conv(_fq(pooled, q["pooled_scale"], q["pooled_zero_point"]), w1, b1), 0)
    s_d1 = float(q["d1_scale"])
    d1 = _fq(_conv(r1, f32["wd"].astype(np.float64), f32["bd"], groups=8), s_d1, q["d1_zero_point"])
    s_h = float(q["heatmaps_scale"])
    expected = _fq(_conv(d1, w3), s_h, q["heatmaps_zero_point"])
    mixed = run_onnx(tmp_path / "mixed.onnx", x)
    diff = np.abs(mixed - expected)
    assert np.mean(diff <= s_h + 1e-6) > 0.999
    assert diff.max() <= s_h + np.abs(w3).max() * s_d1 + 1e-6

    fp32 = run_onnx(src, x)
    err = {
        k: np.abs(run_onnx(tmp_path / f"{k}.onnx", x) - fp32).mean() for k in ("all", "ort_exclude")
    }
    assert err["ort_exclude"] > err["all"] > np.abs(mixed - fp32).mean()


def test_keep_fp32_restores_dropped_relu_and_float_outputs(tmp_path):
    """quantize_static drops the ReLU (the uint8 clamp does it) and names Conv_1's pre-ReLU
    output r1; Conv_3 kept fp32 must read relu(r1) and write the heatmaps unquantised; keeping
    every node gives the fp32 graph exactly."""
    src = write_conv_pose_onnx(tmp_path / "pose.onnx", keypoints=2, seed=0)
    x = np.random.default_rng(0).normal(0, 1, (8, 3, 256, 192)).astype(np.float32)
    quantize_int8(src, tmp_path / "all.onnx", x)
    ops = Counter(n.op_type for n in onnx.load(str(tmp_path / "all.onnx")).graph.node)
    assert ops["Relu"] == 0
    quantize_int8(src, tmp_path / "last.onnx", x, exclude_nodes=["Conv_3"])
    graph = onnx.load(str(tmp_path / "last.onnx")).graph
    conv3 = next(n for n in graph.node if n.name == "Conv_3")
    relu = next(n for n in graph.node if n.op_type == "Relu")
    assert list(conv3.input) == [relu.output[0], "w2"] and list(conv3.output) == ["heatmaps"]
    assert relu.input[0] == "r1"
    fp32 = run_onnx(src, x)
    last = run_onnx(tmp_path / "last.onnx", x)
    assert np.abs(last - fp32).max() < np.abs(run_onnx(tmp_path / "all.onnx", x) - fp32).max()
    assert len(np.unique(last)) > 1000  # not on the uint8 grid: at most 256 values

    every = ["AveragePool_0", "Conv_1", "Relu_2", "Conv_3"]
    quantize_int8(src, tmp_path / "none.onnx", x, exclude_nodes=every)
    ops = Counter(n.op_type for n in onnx.load(str(tmp_path / "none.onnx")).graph.node)
    assert ops["QuantizeLinear"] == ops["DequantizeLinear"] == 0
    np.testing.assert_allclose(run_onnx(tmp_path / "none.onnx", x), fp32, rtol=0, atol=1e-6)
    with pytest.raises(ExportError, match="no node named Conv_9"):
        quantize_int8(src, tmp_path / "bad.onnx", x, exclude_nodes=["Conv_9"])
