"""HRNet models: structure, key names, parameter counts, fusion semantics, determinism.

Expected numbers come from (a) published model-zoo figures, (b) a by-hand count of the
architecture described in the HRNet papers/configs (written below independently of the model
code: it never walks modules), (c) key names quoted from upstream material, and (d) values of
bilinear/nearest interpolation worked out by hand.
"""

from __future__ import annotations

import sys
import types

import pytest
import torch

from training.heads import FCNHead
from training.hrnet import BasicBlock, HRModule, HRNet, hrnet_config
from training.models import (
    SegmentationModel,
    TopdownPoseModel,
    build_model,
    count_parameters,
    create_model,
)

ARCHS = ["hrnet_w18_small", "hrnet_w18", "hrnet_w32", "hrnet_w48"]


# --------------------------------------------------------------------------- by-hand counting


class _Tally:
    """Counts parameters and state_dict keys of convs (1 or 2 keys) and BNs (5 keys)."""

    def __init__(self):
        self.params = 0
        self.keys = 0

    def conv(self, cin, cout, k, bias=False):
        self.params += cin * cout * k * k + (cout if bias else 0)
        self.keys += 2 if bias else 1

    def bn(self, c):
        self.params += 2 * c  # weight, bias (running stats are buffers)
        self.keys += 5  # weight, bias, running_mean, running_var, num_batches_tracked


def _count(width, small, task, n_out):
    """HRNet-W{width} (V1 for pose, V2 + FCN head for segmentation), counted by hand."""
    t = _Tally()
    w = [width, 2 * width, 4 * width, 8 * width]
    # stem: 3x3 s2 3->64, 3x3 s2 64->64
    t.conv(3, 64, 3)
    t.bn(64)
    t.conv(64, 64, 3)
    t.bn(64)
    # stage 1: Bottlenecks 64 -> 256 (inner 64), first one with a 1x1 projection
    for b in range(2 if small else 4):
        cin = 64 if b == 0 else 256
        t.conv(cin, 64, 1)
        t.bn(64)
        t.conv(64, 64, 3)
        t.bn(64)
        t.conv(64, 256, 1)
        t.bn(256)
        if b == 0:
            t.conv(64, 256, 1)
            t.bn(256)
    # transitions: 256 -> w0 (3x3) and 256 -> w1 (3x3 s2); later only a new branch each
    t.conv(256, w[0], 3)
    t.bn(w[0])
    t.conv(256, w[1], 3)
    t.bn(w[1])
    modules = {2: 1, 3: 3 if small else 4, 4: 2 if small else 3}
    blocks = 2 if small else 4
    for stage in (2, 3, 4):
        n = stage
        if stage > 2:
            t.conv(w[n - 2], w[n - 1], 3)
            t.bn(w[n - 1])
        for m in range(modules[stage]):
            for i in range(n):  # BasicBlocks: two 3x3 convs
                for _ in range(blocks):
                    t.conv(w[i], w[i], 3)
                    t.bn(w[i])
                    t.conv(w[i], w[i], 3)
                    t.bn(w[i])
            last = m == modules[stage] - 1
            fused = 1 if (stage == 4 and last and task == "topdown_pose") else n
            for i in range(fused):
                for j in range(n):
                    if j > i:  # 1x1 + BN, then upsample
                        t.conv(w[j], w[i], 1)
                        t.bn(w[i])
                    elif j < i:  # (i-j-1) 3x3 s2 keeping w_j, then one 3x3 s2 to w_i
                        for _ in range(i - j - 1):
                            t.conv(w[j], w[j], 3)
                            t.bn(w[j])
                        t.conv(w[j], w[i], 3)
                        t.bn(w[i])
    if task == "topdown_pose":
        t.conv(w[0], n_out, 1, bias=True)
    else:
        s = sum(w)
        t.conv(s, s, 1)
        t.bn(s)
        t.conv(s, n_out, 1, bias=True)
    return t.params, t.keys


_SPEC = {
    "hrnet_w18_small": (18, True),
    "hrnet_w18": (18, False),
    "hrnet_w32": (32, False),
    "hrnet_w48": (48, False),
}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("task,n_out", [("topdown_pose", 17), ("segmentation", 19)])
def test_parameter_and_key_counts_match_hand_count(arch, task, n_out):
    model = build_model(arch, task, n_out, seed=0)
    params, keys = _count(*_SPEC[arch], task, n_out)
    assert count_parameters(model) == params
    assert len(model.state_dict()) == keys


def test_parameter_counts_match_published_figures():
    # leoxiaobin/deep-high-resolution-net.pytorch README (COCO, 17 keypoints):
    # pose_hrnet_w32 28.5M, pose_hrnet_w48 63.6M (rounded to 0.1M).
    assert round(count_parameters(build_model("hrnet_w32", "topdown_pose", 17)) / 1e6, 1) == 28.5
    assert round(count_parameters(build_model("hrnet_w48", "topdown_pose", 17)) / 1e6, 1) == 63.6
    # HRNet/HRNet-Semantic-Segmentation README (Cityscapes, 19 classes): HRNetV2-W18-Small-v2
    # 3.9M; HRNetV2-W48 65.8M there and 65.9M in the TPAMI paper: the count lies between.
    assert (
        round(count_parameters(build_model("hrnet_w18_small", "segmentation", 19)) / 1e6, 1) == 3.9
    )
    n48 = count_parameters(build_model("hrnet_w48", "segmentation", 19))
    assert 65.8e6 <= n48 <= 65.9e6


# --------------------------------------------------------------------------- names and shapes


def test_key_names_match_upstream():
    pose = build_model("hrnet_w32", "topdown_pose", 17).state_dict()
    seg = build_model("hrnet_w18", "segmentation", 19).state_dict()
    # names used by the mmcv-style HRNet (mmpose/mmseg hrnet.py, also pose_hrnet.py)
    for key in [
        "conv1.weight",
        "bn1.running_var",
        "conv2.weight",
        "bn2.weight",
        "layer1.0.conv1.weight",
        "layer1.0.bn3.bias",
        "layer1.0.downsample.0.weight",
        "layer1.0.downsample.1.running_mean",
        "transition1.0.0.weight",
        "transition1.1.0.0.weight",
        "transition2.2.0.0.weight",
        "transition3.3.0.1.bias",
        "stage2.0.branches.0.0.conv1.weight",
        "stage2.0.fuse_layers.0.1.0.weight",
        "stage2.0.fuse_layers.1.0.0.0.weight",
        "stage4.2.fuse_layers.0.3.1.running_var",
        "stage4.2.fuse_layers.0.3.0.weight",
    ]:
        assert "backbone." + key in pose and "backbone." + key in seg, key
    assert "head.final_layer.weight" in pose and "head.final_layer.bias" in pose
    # keys listed as "unexpected" when the multi-scale ImageNet HRNet is loaded into the MMPose
    # top-down model (open-mmlab/mmpose issues #451, #723, PR #357): the last stage-4 module of
    # the pose model fuses into branch 0 only, while HRNetV2 (segmentation) keeps them all.
    for key in [
        "stage4.2.fuse_layers.1.2.0.weight",
        "stage4.2.fuse_layers.2.0.1.1.bias",
        "stage4.2.fuse_layers.3.2.0.1.running_mean",
        "stage4.2.fuse_layers.3.1.1.1.running_var",
    ]:
        assert "backbone." + key not in pose, key
        assert "backbone." + key in seg, key
    # MMSeg FCNHead (ConvModule conv/bn, no conv bias) key names
    for key in [
        "decode_head.convs.0.conv.weight",
        "decode_head.convs.0.bn.running_mean",
        "decode_head.conv_seg.weight",
        "decode_head.conv_seg.bias",
    ]:
        assert key in seg, key
    assert "decode_head.convs.0.conv.bias" not in seg


def test_key_shapes_worked_out_by_hand():
    sd = build_model("hrnet_w32", "topdown_pose", 17).state_dict()
    shapes = {
        "backbone.conv1.weight": (64, 3, 3, 3),
        "backbone.layer1.0.conv3.weight": (256, 64, 1, 1),
        "backbone.layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "backbone.transition1.0.0.weight": (32, 256, 3, 3),
        "backbone.transition1.1.0.0.weight": (64, 256, 3, 3),
        "backbone.transition3.3.0.0.weight": (256, 128, 3, 3),
        "backbone.stage4.2.fuse_layers.0.3.0.weight": (32, 256, 1, 1),  # 1x1, upsample x8
        "backbone.stage3.0.fuse_layers.2.0.0.0.weight": (32, 32, 3, 3),  # keeps w_j
        "backbone.stage3.0.fuse_layers.2.0.1.0.weight": (128, 32, 3, 3),
        "head.final_layer.weight": (17, 32, 1, 1),  # mmpose 0.x keypoint_head.final_layer
    }
    for k, s in shapes.items():
        assert tuple(sd[k].shape) == s, k
    seg = build_model("hrnet_w48", "segmentation", 19).state_dict()
    assert tuple(seg["decode_head.convs.0.conv.weight"].shape) == (720, 720, 1, 1)
    assert tuple(seg["decode_head.conv_seg.weight"].shape) == (19, 720, 1, 1)


@pytest.mark.parametrize("arch", ARCHS)
def test_output_shapes(arch):
    pose = build_model(arch, "topdown_pose", 17, seed=0)
    seg = build_model(arch, "segmentation", 19, seed=0)
    assert isinstance(pose, TopdownPoseModel) and isinstance(seg, SegmentationModel)
    x_pose, x_seg = torch.randn(2, 3, 96, 64), torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        feats = pose.backbone(x_pose)
        assert len(feats) == 1  # HRNetV1: only the high-resolution branch
        assert pose.head(feats).shape == (2, 17, 24, 16)  # == pose(x_pose), heatmaps at H/4, W/4
        feats = seg.backbone(x_seg)
        w = hrnet_config(arch)["stage4"]["num_channels"]
        assert [tuple(f.shape) for f in feats] == [(2, w[i], 16 >> i, 24 >> i) for i in range(4)]
        assert seg.decode_head(feats).shape == (2, 19, 16, 24)  # == seg(x_seg), logits at H/4, W/4


def test_segmentation_accepts_sizes_not_multiple_of_32():
    seg = build_model("hrnet_w18_small", "segmentation", 5, seed=0)
    with torch.no_grad():
        out = seg(torch.randn(1, 3, 72, 40))
    # stride-2 3x3 convs with padding 1 round up: 72 -> 36 -> 18, 40 -> 20 -> 10
    assert out.shape == (1, 5, 18, 10)
    assert torch.isfinite(out).all()


def test_pose_rejects_sizes_not_multiple_of_32():
    pose = build_model("hrnet_w18_small", "topdown_pose", 17, seed=0)
    with pytest.raises(ValueError, match="multiples of 32"):
        with torch.no_grad():
            pose(torch.randn(1, 3, 64, 48))  # branch 3 is 2x2 but branch 0 is 16x12 (not 16x16)


# --------------------------------------------------------------------------- fusion semantics


def _two_branch_module(mode):
    """2-branch HRModule, 1 channel, blocks reduced to identity+ReLU, fuse conv/BN = identity."""
    m = HRModule(
        2, BasicBlock, (1, 1), [1, 1], (1, 1), multiscale_output=False, upsample_mode=mode
    ).eval()
    with torch.no_grad():
        for block in (m.branches[0][0], m.branches[1][0]):
            block.bn2.weight.zero_()  # residual branch contributes 0 -> block(x) = relu(x)
        conv, bn = m.fuse_layers[0][1][0], m.fuse_layers[0][1][1]
        conv.weight.fill_(1.0)
        bn.running_var.fill_(1.0 - bn.eps)  # x / sqrt(var + eps) == x
    return m


def test_fusion_nearest_mmpose():
    m = _two_branch_module("nearest")
    x0 = torch.zeros(1, 1, 4, 4)
    x1 = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
    with torch.no_grad():
        (y,) = m([x0, x1])
    expected = torch.tensor(
        [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]], dtype=torch.float32
    )
    torch.testing.assert_close(y[0, 0], expected, rtol=0, atol=1e-6)


def test_fusion_bilinear_mmseg_including_second_resize():
    # x1 = 1 + col + 2*row is affine, so bilinear resampling gives 1 + u(c) + 2*u(r) where u maps
    # an output index to the clamped source coordinate (align_corners=False):
    # 2 -> 4: src = (d + .5)/2 - .5 = -.25,.25,.75,1.25 -> clamp -> 0, .25, .75, 1
    m = _two_branch_module("bilinear")
    x1 = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
    u4 = torch.tensor([0.0, 0.25, 0.75, 1.0])
    with torch.no_grad():
        (y,) = m([torch.zeros(1, 1, 4, 4), x1])
    torch.testing.assert_close(y[0, 0], 1 + u4[None, :] + 2 * u4[:, None], rtol=0, atol=1e-6)
    # branch 0 of 3x3: MMSeg upsamples 2x2 -> 4x4 (int(2*2)), then resizes 4x4 -> 3x3:
    # src = (d + .5)*4/3 - .5 = 1/6, 3/2, 17/6 -> u4 interpolated: 1/24, 1/2, 23/24
    u3 = torch.tensor([1 / 24, 0.5, 23 / 24])
    with torch.no_grad():
        (y,) = m([torch.zeros(1, 1, 3, 3), x1])
    torch.testing.assert_close(y[0, 0], 1 + u3[None, :] + 2 * u3[:, None], rtol=0, atol=1e-6)


def test_same_size_bilinear_resize_is_exact_identity():
    # the MMSeg second resize is applied unconditionally; where the sizes already match it must
    # return its input bit for bit (source coordinate (d + .5) * 1 - .5 = d: weights exactly 1, 0)
    g = torch.Generator().manual_seed(0)
    for h, w in [(16, 32), (25, 25), (13, 19), (7, 1), (1, 1)]:
        x = torch.randn(2, 18, h, w, generator=g) * 100
        y = torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
        assert torch.equal(y, x), (h, w)


@pytest.mark.parametrize("tracer", ["torch.export", "jit.trace"])
def test_fusion_bilinear_traced_at_one_size_is_right_at_another(tracer):
    # traced where every size divides (4x4 <- 2x2: no real second resize), run where it does not
    # (3x3 <- 2x2): the graph must still upsample to 2*2 = 4 and then resize 4 -> 3 (hand values
    # as in test_fusion_bilinear_mmseg_including_second_resize). An int() on the traced size or a
    # size-dependent `if` would freeze the 4x4 path into the graph.
    import warnings

    m = _two_branch_module("bilinear")
    x1 = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
    example = [torch.zeros(1, 1, 4, 4), x1]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if tracer == "torch.export":
            hw = {2: torch.export.Dim.DYNAMIC, 3: torch.export.Dim.DYNAMIC}
            traced = torch.export.export(
                m, (example,), dynamic_shapes=([hw, hw],), strict=False
            ).module()
        else:
            traced = torch.jit.trace(m, (example,), check_trace=False)
        (y3,) = traced([torch.zeros(1, 1, 3, 3), x1])
        (y4,) = traced([torch.zeros(1, 1, 4, 4), x1])
    u3 = torch.tensor([1 / 24, 0.5, 23 / 24])
    u4 = torch.tensor([0.0, 0.25, 0.75, 1.0])
    torch.testing.assert_close(y3[0, 0], 1 + u3[None, :] + 2 * u3[:, None], rtol=0, atol=1e-6)
    torch.testing.assert_close(y4[0, 0], 1 + u4[None, :] + 2 * u4[:, None], rtol=0, atol=1e-6)


def test_fcn_head_resize_concat():
    head = FCNHead([1, 1], num_classes=1, in_index=(0, 1)).eval()
    with torch.no_grad():
        head.convs[0].conv.weight.copy_(torch.eye(2).view(2, 2, 1, 1))
        head.convs[0].bn.running_var.fill_(1.0 - head.convs[0].bn.eps)
        head.conv_seg.weight.fill_(1.0)
        head.conv_seg.bias.fill_(0.5)
        x0 = torch.full((1, 1, 4, 4), 2.0)
        x1 = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
        out = head([x0, x1])
    u4 = torch.tensor([0.0, 0.25, 0.75, 1.0])
    expected = 0.5 + 2.0 + (1 + u4[None, :] + 2 * u4[:, None])
    assert out.shape == (1, 1, 4, 4)
    torch.testing.assert_close(out[0, 0], expected, rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- init and seeding


def test_seeded_build_is_deterministic_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = build_model("hrnet_w18_small", "topdown_pose", 17, seed=7).state_dict()
    assert torch.equal(torch.random.get_rng_state(), before)
    b = build_model("hrnet_w18_small", "topdown_pose", 17, seed=7).state_dict()
    c = build_model("hrnet_w18_small", "topdown_pose", 17, seed=8).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["backbone.conv1.weight"], c["backbone.conv1.weight"])


def test_init_follows_upstream_defaults():
    pose = build_model("hrnet_w32", "topdown_pose", 17, seed=0)
    w = pose.backbone.stage4[0].branches[0][0].conv1.weight  # 32*32*9 = 9216 samples of N(0, .001)
    assert abs(w.std().item() - 0.001) < 0.0001
    assert torch.count_nonzero(pose.head.final_layer.bias) == 0
    assert torch.all(pose.backbone.bn1.weight == 1) and torch.all(pose.backbone.bn1.bias == 0)
    seg = build_model("hrnet_w18", "segmentation", 19, seed=0)
    conv = seg.backbone.conv2.weight  # Kaiming normal, fan_out = 64*9: std = sqrt(2/576)
    assert abs(conv.std().item() - (2 / 576) ** 0.5) < 0.004
    cls = seg.decode_head.conv_seg.weight  # N(0, .01), 19*270 = 5130 samples
    assert abs(cls.std().item() - 0.01) < 0.001


def test_build_model_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown arch"):
        build_model("hrnet_w64", "topdown_pose", 17)
    with pytest.raises(ValueError, match="unknown task"):
        build_model("hrnet_w32", "keypoints_3d", 17)
    with pytest.raises(ValueError, match="num_outputs"):
        build_model("hrnet_w32", "topdown_pose", 0)


def test_hrnet_rejects_inconsistent_stage_config():
    extra = hrnet_config("hrnet_w18_small")
    extra["stage3"]["num_blocks"] = (2, 2)
    with pytest.raises(ValueError, match="num_blocks"):
        HRNet(extra)


def test_create_model_uses_registry_entry_and_checkpoint(tmp_path, monkeypatch):
    from training.checkpoint import save_checkpoint

    entry = types.SimpleNamespace(
        name="fake_seg",
        task="segmentation",
        arch="hrnet_w18_small",
        num_outputs=7,
        input_size=None,
        url=None,
        metrics={},
    )
    fake = types.ModuleType("training.registry")
    fake.get_entry = lambda name: (
        entry if name == "fake_seg" else (_ for _ in ()).throw(KeyError(name))
    )
    monkeypatch.setitem(sys.modules, "training.registry", fake)
    import training

    monkeypatch.setattr(training, "registry", fake, raising=False)

    src = create_model("fake_seg", seed=3)
    assert isinstance(src, SegmentationModel) and not src.training
    assert src.decode_head.conv_seg.out_channels == 7
    path = save_checkpoint(src, tmp_path / "fake.pth", layout="mmseg")
    loaded = create_model("fake_seg", checkpoint=path, seed=4)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(src(x), loaded(x))
    monkeypatch.setenv("HRNET_CACHE_DIR", str(tmp_path / "cache"))
    from_url = create_model("fake_seg", checkpoint=path.as_uri(), seed=5)
    assert (tmp_path / "cache" / "fake.pth").is_file()
    with torch.no_grad():
        assert torch.equal(src(x), from_url(x))
    with pytest.raises(KeyError):
        create_model("nope")
