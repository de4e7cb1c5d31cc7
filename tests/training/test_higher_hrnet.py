"""HigherHRNet (bottom-up): architecture, registry rows, both published checkpoint layouts,
ONNX export with dynamic batch/H/W and its card.

Expected numbers are derived by hand in the tests (parameter counts from the layer shapes, the
transposed-conv border pattern from its definition); the published totals (28.6M / 63.8M) are
the HigherHRNet paper's (Cheng et al., CVPR 2020, Table 1).
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from export.cli import main  # noqa: E402
from service.cards import ModelCard, load_card  # noqa: E402
from service.datasets import get_pose_dataset  # noqa: E402
from tests.export_fixtures import clear_export_env  # noqa: E402
from tests.training.test_checkpoint import _randomize  # noqa: E402
from training.checkpoint import (  # noqa: E402
    CheckpointError,
    detect_layout,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from training.higher_hrnet import AEHigherResolutionHead, deconv_padding  # noqa: E402
from training.models import build_model, count_parameters, create_model  # noqa: E402
from training.registry import ALIASES, BOTTOMUP_METRIC_KEYS, get_entry, list_entries  # noqa: E402

W32 = "higher_hrnet32_coco_512x512"
K = 17


# --------------------------------------------------------------------------- architecture


def _head_params(c: int, k: int = K) -> int:
    """AEHigherResolutionHead of the configs, counted layer by layer (deconv filters = c)."""
    final0 = c * 2 * k + 2 * k  # 1x1 conv C -> K heatmaps + K tags
    deconv = (c + 2 * k) * c * 4 * 4 + 2 * c  # ConvTranspose2d 4x4 (no bias) + BN
    blocks = 4 * (2 * c * c * 9 + 2 * 2 * c)  # 4 BasicBlocks: two 3x3 convs + two BNs
    final1 = c * k + k  # 1x1 conv C -> K heatmaps
    return final0 + deconv + blocks + final1


@pytest.mark.parametrize(
    "arch, width, published_m", [("hrnet_w32", 32, 28.6), ("hrnet_w48", 48, 63.8)]
)
def test_parameter_count_is_backbone_plus_head_and_matches_published(arch, width, published_m):
    topdown = build_model(arch, "topdown_pose", K, seed=0)
    backbone = count_parameters(topdown) - (width * K + K)  # minus the 1x1 top-down head
    bottomup = build_model(arch, "bottomup_pose", K, seed=0)
    assert count_parameters(bottomup.head) == _head_params(width)
    assert count_parameters(bottomup) == backbone + _head_params(width)
    assert round(count_parameters(bottomup) / 1e6, 1) == published_m
    # W32: 28,535,552 backbone + 109,779 head
    if width == 32:
        assert count_parameters(bottomup) == 28_645_331


def test_head_keys_follow_upstream_module_tree():
    model = build_model("hrnet_w32", "bottomup_pose", K, seed=0)
    sd = model.state_dict()
    head = sorted(
        {
            re.sub(r"\.(weight|bias|running_mean|running_var|num_batches_tracked)$", "", k)
            for k in sd
            if k.startswith("head.")
        }
    )
    assert head == ["head.deconv_layers.0.0.0", "head.deconv_layers.0.0.1"] + [
        f"head.deconv_layers.0.{b}.0.{m}"
        for b in range(1, 5)
        for m in ("bn1", "bn2", "conv1", "conv2")
    ] + ["head.final_layers.0", "head.final_layers.1"]
    assert sd["head.deconv_layers.0.0.0.weight"].shape == (32 + 34, 32, 4, 4)  # cat_output
    assert sd["head.final_layers.0.weight"].shape == (34, 32, 1, 1)
    assert sd["head.final_layers.1.weight"].shape == (17, 32, 1, 1)
    # the backbone stops fusing at branch 0 in its last module (as top-down)
    assert "backbone.stage4.2.fuse_layers.0.3.0.weight" in sd
    assert not any(k.startswith("backbone.stage4.2.fuse_layers.1.") for k in sd)


def test_deconv_stage_by_hand():
    """K=1, C=1, no basic blocks: y = 2x + 1 at 1/4; the stride-2 4x4 transposed conv (padding 1)
    over [x, y] with all weights w gives each output pixel 2x2 taps inside, 2x1 on an edge, 1x1
    in a corner; then BN (eval, identity stats) and ReLU; final 1x1 conv weight 1, bias 0."""
    head = AEHigherResolutionHead(
        1, 1, num_deconv_filters=(1,), num_basic_blocks=0, with_ae=(False, False)
    ).eval()
    w, x0 = 0.5, 3.0
    with torch.no_grad():
        head.final_layers[0].weight.fill_(2.0)
        head.final_layers[0].bias.fill_(1.0)
        head.deconv_layers[0][0][0].weight.fill_(w)
        head.final_layers[1].weight.fill_(1.0)
        head.final_layers[1].bias.fill_(0.0)
        low, high = head(torch.full((1, 1, 3, 4), x0))
    y0 = 2 * x0 + 1
    assert torch.allclose(low, torch.full((1, 1, 3, 4), y0))
    assert high.shape == (1, 1, 6, 8)
    bn = 1 / math.sqrt(1 + 1e-5)
    one_tap = w * (x0 + y0) * bn
    expected = torch.full((6, 8), 4 * one_tap)
    expected[0, :] = expected[-1, :] = expected[:, 0] = expected[:, -1] = 2 * one_tap
    for r in (0, -1):
        for c in (0, -1):
            expected[r, c] = one_tap
    assert torch.allclose(high[0, 0], expected, rtol=1e-6)
    assert (
        deconv_padding(4) == (1, 0) and deconv_padding(3) == (1, 1) and deconv_padding(2) == (0, 0)
    )
    with pytest.raises(ValueError, match="deconv kernel"):
        deconv_padding(5)
    with pytest.raises(ValueError, match="with_ae"):
        AEHigherResolutionHead(32, 17, with_ae=(True,))


@pytest.fixture(scope="module")
def w32():
    """HigherHRNet-W32 with seed-0 weights and seed-dependent BN/bias values."""
    return _randomize(create_model(W32, seed=0), 3)


def test_output_shapes_at_512x768(w32):
    with torch.no_grad():
        low, high = w32(torch.zeros(1, 3, 512, 768))
    assert low.shape == (1, 2 * K, 128, 192) and high.shape == (1, K, 256, 384)


# --------------------------------------------------------------------------- registry


def test_registry_rows_as_published():
    rows = {e.name: e for e in list_entries(task="bottomup_pose")}
    assert sorted(rows) == [
        "higher_hrnet32_coco_512x512",
        "higher_hrnet32_coco_640x640",
        "higher_hrnet48_coco_512x512",
    ]
    e = rows[W32]
    assert e.url == (
        "https://download.openmmlab.com/mmpose/bottom_up/"
        "higher_hrnet32_coco_512x512-8ae85183_20200713.pth"
    )
    assert dict(e.metrics) == dict(
        zip(
            BOTTOMUP_METRIC_KEYS,
            (0.677, 0.870, 0.738, 0.723, 0.890, 0.706, 0.881, 0.771, 0.747, 0.901),
        )
    )
    assert rows["higher_hrnet48_coco_512x512"].metrics["AP(ms)"] == 0.716
    assert rows["higher_hrnet32_coco_640x640"].input_size == (640, 640)
    assert e.arch == "hrnet_w32" and rows["higher_hrnet48_coco_512x512"].arch == "hrnet_w48"
    assert e.upstream == "mmpose-0.x" and e.head_prefix == "keypoint_head."
    cfg = e.ae_test_cfg
    assert (
        cfg["max_num_people"],
        cfg["nms_kernel"],
        cfg["detection_threshold"],
        cfg["tag_threshold"],
        cfg["adjust"],
        cfg["refine"],
    ) == (30, 5, 0.1, 1.0, True, True)
    assert cfg["joint_order"] == [0, 1, 2, 3, 4, 5, 6, 11, 12, 7, 8, 9, 10, 13, 14, 15, 16]
    for alias, name in (
        ("higherhrnet_w32_coco_512x512", W32),
        ("higherhrnet_w32_coco_640x640", "higher_hrnet32_coco_640x640"),
        ("higherhrnet_w48_coco_512x512.py", "higher_hrnet48_coco_512x512"),
    ):
        assert get_entry(alias) is rows[name]
    assert len(ALIASES) == 3


# --------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize(
    "layout, sample_key",
    [
        ("mmpose0", "keypoint_head.deconv_layers.0.0.0.weight"),
        ("higherhrnet", "deconv_layers.0.0.0.weight"),
    ],
)
def test_both_published_layouts_round_trip_with_identical_outputs(
    w32, layout, sample_key, tmp_path
):
    path = save_checkpoint(w32, tmp_path / f"{layout}.pth", layout)
    raw = read_checkpoint(path)
    sd = raw["state_dict"] if layout == "mmpose0" else raw
    assert sample_key in sd and detect_layout(sd) == layout
    bare_backbone = "conv1.weight" if layout == "higherhrnet" else "backbone.conv1.weight"
    assert bare_backbone in sd and len(sd) == len(w32.state_dict())
    other = create_model(W32, seed=1)
    info = load_checkpoint(other, path)
    assert info["layout"] == layout and info["num_loaded"] == len(sd)
    x = torch.randn(1, 3, 128, 192, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref, got = w32(x), other(x)
    assert len(got) == 2 and all(torch.equal(a, b) for a, b in zip(ref, got))


def test_wrong_key_and_shape_are_named(w32, tmp_path):
    sd = dict(read_checkpoint(save_checkpoint(w32, tmp_path / "o.pth", "higherhrnet")))
    renamed = dict(sd)
    renamed["final_layers.1.weights"] = renamed.pop("final_layers.1.weight")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(create_model(W32), renamed)
    msg = str(err.value)
    assert "missing keys (1): final_layers.1.weight" in msg
    assert "unexpected keys (1): final_layers.1.weights" in msg
    shaped = dict(sd)
    shaped["deconv_layers.0.0.0.weight"] = torch.zeros(49, 32, 4, 4)  # cat_output off
    with pytest.raises(
        CheckpointError,
        match=re.escape(
            "deconv_layers.0.0.0.weight: checkpoint [49, 32, 4, 4] vs model [66, 32, 4, 4]"
        ),
    ):
        load_checkpoint(create_model(W32), shaped)


def test_layouts_of_other_tasks_are_refused(w32, tmp_path):
    topdown = save_checkpoint(
        build_model("hrnet_w18_small", "topdown_pose", 17), tmp_path / "t.pth", "mmpose1"
    )
    with pytest.raises(
        CheckpointError, match="'mmpose1' checkpoint cannot be loaded into a bottomup_pose model"
    ):
        load_checkpoint(create_model(W32), topdown)
    bare = save_checkpoint(w32, tmp_path / "b.pth", "higherhrnet")
    with pytest.raises(
        CheckpointError, match="'higherhrnet' checkpoint cannot be loaded into a topdown_pose model"
    ):
        load_checkpoint(build_model("hrnet_w32", "topdown_pose", 17), bare)
    with pytest.raises(ValueError, match="does not fit a bottomup_pose model"):
        save_checkpoint(w32, tmp_path / "x.pth", "hrnet")


# --------------------------------------------------------------------------- export + card


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """``hrnet-export --arch higherhrnet_w32_coco_512x512 --random-init`` (legacy exporter: the
    faster one on CPU) with parity at 512x768 and 640x512, batches 1 and 2; (entry dir, stdout)."""
    mp = pytest.MonkeyPatch()
    clear_export_env(mp)
    repo = tmp_path_factory.mktemp("repo")
    import contextlib
    import io

    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            rc = main(
                [
                    "--arch",
                    "higherhrnet_w32_coco_512x512",
                    "--random-init",
                    "--name",
                    "hh",
                    "--model-repository",
                    str(repo),
                    "--exporter",
                    "legacy",
                    "--instance-kind",
                    "KIND_CPU",
                    "--check-size",
                    "512x768",
                    "--check-size",
                    "640x512",
                ]
            )
    finally:
        mp.undo()
    assert rc == 0, out.getvalue()
    return repo / "hh", out.getvalue()


def test_export_parity_at_two_sizes_batch_1_and_2(exported):
    _, text = exported
    lines = re.findall(
        r"parity (\d+)x3x(\d+)x(\d+) (\S+): max abs err (\S+) \(max \|torch\| (\S+), "
        r"allowed (\S+)\)",
        text,
    )
    seen = {(int(n), int(h), int(w), out) for n, h, w, out, *_ in lines}
    assert seen == {
        (n, h, w, out)
        for n in (1, 2)
        for h, w in ((512, 768), (640, 512))
        for out in ("heatmaps_tags_1_4", "heatmaps_1_2")
    }
    for *_, err, mag, bound in lines:
        assert float(err) <= 1e-4 + 1e-5 * float(mag) and float(bound) == pytest.approx(
            1e-4 + 1e-5 * float(mag), rel=1e-2
        )
        assert float(mag) > 1e-3  # calibrated BN: outputs are not vanishing


def test_exported_graph_is_dynamic_and_matches_the_card(exported):
    import onnx
    import onnxruntime as ort

    entry, _ = exported
    graph = onnx.load(str(entry / "1" / "model.onnx")).graph
    dims = {
        v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in [*graph.input, *graph.output]
    }
    assert dims == {
        "input": ["batch", 3, "height", "width"],
        "heatmaps_tags_1_4": ["batch", 34, "heatmaps_tags_1_4_height", "heatmaps_tags_1_4_width"],
        "heatmaps_1_2": ["batch", 17, "heatmaps_1_2_height", "heatmaps_1_2_width"],
    }
    sess = ort.InferenceSession(str(entry / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    low, high = sess.run(None, {"input": np.zeros((3, 3, 192, 320), np.float32)})
    assert low.shape == (3, 34, 48, 80) and high.shape == (3, 17, 96, 160)
    config = (entry / "config.pbtxt").read_text()
    assert re.search(r'name: "input"\s+data_type: TYPE_FP32\s+dims: \[ 3, -1, -1 \]', config)
    assert config.index('"heatmaps_tags_1_4"') < config.index('"heatmaps_1_2"')


def test_card_has_what_grouping_needs_and_round_trips(exported):
    entry, _ = exported
    card = load_card(entry)
    assert card.task == "bottomup_pose" and card.input_size == (None, None)
    assert [(o.name, o.dims) for o in card.outputs] == [
        ("heatmaps_tags_1_4", [34, -1, -1]),
        ("heatmaps_1_2", [17, -1, -1]),
    ]
    coco = get_pose_dataset("coco")
    assert card.keypoint_names == list(coco.keypoint_names)
    assert card.flip_indices == [0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15]
    assert card.sigmas == pytest.approx(
        [
            0.026,
            0.025,
            0.025,
            0.035,
            0.035,
            0.079,
            0.079,
            0.072,
            0.072,
            0.062,
            0.062,
            0.107,
            0.107,
            0.087,
            0.087,
            0.089,
            0.089,
        ]
    )
    assert len(card.skeleton) == len(coco.skeleton) > 0 and card.flip_test
    spec = card.bottomup
    assert spec is not None and spec.input_size == 512 and spec.size_divisor == 64
    assert (
        spec.max_num_people,
        spec.detection_threshold,
        spec.tag_threshold,
        spec.nms_kernel,
        spec.nms_padding,
        spec.adjust,
        spec.refine,
        spec.with_ae,
    ) == (30, 0.1, 1.0, 5, 2, True, True, [True, False])
    assert spec.joint_order == [0, 1, 2, 3, 4, 5, 6, 11, 12, 7, 8, 9, 10, 13, 14, 15, 16]
    assert card.normalization.mean == (123.675, 116.28, 103.53)
    assert card.source.url is None and "RANDOM WEIGHTS" in (card.source.notes or "")
    again = type(card).model_validate_json(card.model_dump_json())
    assert again == card
