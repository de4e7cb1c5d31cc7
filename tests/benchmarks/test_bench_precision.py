"""hrnet-bench's precision mode (benchmarks/bench_precision.py) at tiny size: the eager baseline
computes what the gateway serves, every variant is counted over the same photos, the ratios are
read off the right rows. No timing assertions."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import bench_pose
from benchmarks.bench_precision import Tally, compare, eager_pose, format_table
from tests.fake_cards import pose_card, write_repository
from tests.tiny_onnx import write_conv_pose_onnx


@pytest.fixture(scope="module")
def tiny_gateway(tmp_path_factory):
    root = tmp_path_factory.mktemp("prec_repo")
    card = pose_card("tiny_fp32", dataset=None)
    write_repository(root, [card, pose_card("tiny_copy")])
    for name in ("tiny_fp32", "tiny_copy"):
        write_conv_pose_onnx(root / name / "1" / "model.onnx", keypoints=2, seed=0)
    url, server = bench_pose.start_local_gateway(root)
    yield url, card, root
    server.should_exit = True


def _ort_runner(path):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: sess.run(None, {"image": x})[0]


def test_eager_baseline_matches_the_gateway_and_rows_are_counted(shared, tiny_gateway):
    url, card, root = tiny_gateway
    images = bench_pose.load_images(shared)
    boxes = bench_pose.load_photo_boxes(shared)
    jobs = [(n, d, boxes[n]) for n, d, _ in images]
    runner = _ort_runner(root / "tiny_fp32" / "1" / "model.onnx")

    import httpx

    name, data, b = jobs[0]
    served = httpx.post(
        url + "/pose",
        files={"image": (name, data)},
        data={"model": "tiny_fp32", "boxes": json.dumps(b), "flip_test": "true"},
    ).json()
    mine = eager_pose(data, b, card, runner, flip=True)
    got = np.array([p["keypoints"] for p in served["persons"]])[..., :2]
    np.testing.assert_allclose(mine, got, atol=1e-3)

    tallies = compare(
        url,
        ["tiny_fp32", "tiny_copy"],
        jobs,
        [False, True],
        rounds=1,
        eager=(card, runner),
        warmup=0,
    )
    assert [(t.name, t.flip) for t in tallies] == [
        ("tiny_fp32", False),
        ("tiny_copy", False),
        ("eager", False),
        ("tiny_fp32", True),
        ("tiny_copy", True),
        ("eager", True),
    ]
    assert all(t.requests == 4 and t.crops == 33 and t.seconds > 0 for t in tallies)


def test_format_table_ratios_by_hand():
    a, b, e = (
        Tally("fp32", True, 2.0, 20, 4),
        Tally("int8", True, 1.0, 20, 4),
        Tally("eager", True, 4.0, 20, 4),
    )
    lines = format_table([a, b, e])
    # crops/s 10, 20, 5: int8 is 2.00x fp32 and 4.00x eager; fp32 2.00x eager
    assert lines[1].split()[4:7] == ["10.00", "1.00", "2.00"]
    assert lines[2].split()[4:7] == ["20.00", "2.00", "4.00"]
    assert lines[3].split()[4:7] == ["5.00", "0.50", "1.00"]


def test_variants_name_a_backend_and_precision_per_row(shared, tiny_gateway):
    from benchmarks.bench_precision import Variant, parse_variant

    assert parse_variant("openvino-bf16:pp_tinypose_256x192") == (
        "openvino-bf16",
        {"HRNET_BACKEND": "openvino", "HRNET_OPENVINO_PRECISION": "bf16"},
        "pp_tinypose_256x192",
    )
    assert parse_variant("ort:a:b") == ("ort", {"HRNET_BACKEND": "onnxruntime"}, "a:b")
    assert parse_variant("tiny_fp32") == ("", {}, "tiny_fp32")
    with pytest.raises(ValueError, match="unknown backend 'trt'"):
        parse_variant("trt:tiny_fp32")

    # two rows of one model under their own labels (here the same gateway stands in for two)
    url, _, _ = tiny_gateway
    images = bench_pose.load_images(shared)[:1]
    jobs = [(n, d, b[:2]) for n, d, b in images]
    rows = [
        Variant("ort:tiny_fp32", url, "tiny_fp32"),
        Variant("other:tiny_fp32", url, "tiny_fp32"),
    ]
    tallies = compare(None, rows, jobs, [False], rounds=1, warmup=0)
    assert [t.name for t in tallies] == ["ort:tiny_fp32", "other:tiny_fp32"]
    assert all(t.requests == 1 and t.crops == len(jobs[0][2]) for t in tallies)
