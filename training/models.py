"""HRNet models for serving/export: top-down pose (MMPose), bottom-up pose (HigherHRNet,
:mod:`training.higher_hrnet`) and segmentation (MMSeg FCN-HRNetV2).

Our module names are the MMPose 1.x / MMSeg 1.x ones, so ``model.state_dict()`` keys are
exactly those of the published checkpoints' ``state_dict``: ``backbone.*`` + ``head.*``
(pose) and ``backbone.*`` + ``decode_head.*`` (segmentation). :mod:`training.checkpoint` maps
the other published layouts (MMPose 0.x, original HRNet and HigherHRNet repos) onto these names.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from .heads import FCNHead, HeatmapHead
from .higher_hrnet import AEHigherResolutionHead, BottomUpPoseModel
from .hrnet import HRNET_CONFIGS, HRNet, branch_channels, hrnet_config

__all__ = [
    "ARCHS",
    "TASKS",
    "TopdownPoseModel",
    "SegmentationModel",
    "BottomUpPoseModel",
    "build_model",
    "create_model",
    "init_weights",
    "count_parameters",
]

ARCHS = tuple(HRNET_CONFIGS)
TASKS = ("topdown_pose", "bottomup_pose", "segmentation")


class TopdownPoseModel(nn.Module):
    """MMPose ``TopdownPoseEstimator`` inference graph: HRNet backbone + ``HeatmapHead``.

    ``forward(x)``: ``x`` float32 ``(N, 3, H, W)``, RGB, already normalised with the
    ImageNet mean/std (``PoseDataPreprocessor``); H and W multiples of 32 (e.g. 256x192).
    Returns heatmaps float32 ``(N, K, H/4, W/4)`` (heatmap space, no flip test, no decoding).
    """

    task = "topdown_pose"

    def __init__(self, backbone: HRNet, head: HeatmapHead):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))


class SegmentationModel(nn.Module):
    """MMSeg ``EncoderDecoder`` network part: HRNet backbone + ``FCNHead`` (``decode_head``).

    ``forward(x)``: ``x`` float32 ``(N, 3, H, W)``, RGB, normalised (``SegDataPreProcessor``).
    Returns logits float32 ``(N, C, ceil(H/4), ceil(W/4))`` at branch-0 resolution; the
    resize to the input/original size, slide inference and argmax are done by the caller.
    """

    task = "segmentation"

    def __init__(self, backbone: HRNet, decode_head: FCNHead):
        super().__init__()
        self.backbone = backbone
        self.decode_head = decode_head

    def forward(self, x: Tensor) -> Tensor:
        return self.decode_head(self.backbone(x))


def init_weights(model: nn.Module) -> nn.Module:
    """Re-initialise ``model`` in place the way the upstream ``init_cfg`` defaults do.

    Pose (MMPose ``HRNet``, ``HeatmapHead`` and 0.x ``AEHigherResolutionHead`` defaults, also the
    original HigherHRNet ``init_weights``): every conv and transposed conv ``N(0, 0.001)``,
    bias 0; BN weight 1, bias 0. Segmentation (MMSeg): backbone convs Kaiming normal (``fan_out``,
    ReLU gain), BN 1/0; ``decode_head.convs`` Kaiming normal (mmcv ``ConvModule``);
    ``decode_head.conv_seg`` ``N(0, 0.01)``, bias 0. Uses the global torch RNG.
    Returns ``model``.
    """

    def normal(m: nn.Conv2d | nn.ConvTranspose2d, std: float) -> None:
        nn.init.normal_(m.weight, 0.0, std)
        if m.bias is not None:
            nn.init.zeros_(m.bias)

    def kaiming(m: nn.Conv2d) -> None:
        nn.init.kaiming_normal_(m.weight, a=0, mode="fan_out", nonlinearity="relu")
        if m.bias is not None:
            nn.init.zeros_(m.bias)

    seg = getattr(model, "task", None) == "segmentation"
    for name, m in model.named_modules():
        if isinstance(m, nn.ConvTranspose2d) and not seg:
            normal(m, 0.001)
        elif isinstance(m, nn.Conv2d):
            if not seg:
                normal(m, 0.001)
            elif name.endswith("conv_seg"):
                normal(m, 0.01)
            else:
                kaiming(m)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model


def build_model(arch: str, task: str, num_outputs: int, seed: int | None = None) -> nn.Module:
    """Build an HRNet model with the upstream structure and key names.

    Args:
        arch: one of ``hrnet_w18_small``, ``hrnet_w18``, ``hrnet_w32``, ``hrnet_w48``.
        task: ``"topdown_pose"`` (MMPose: nearest fusion, single-scale last module,
            ``HeatmapHead`` on branch 0), ``"bottomup_pose"`` (the same backbone with the
            HigherHRNet ``AEHigherResolutionHead`` of the published configs: tags per joint,
            one deconv stage of ``width`` filters (32 / 48), kernel 4, 4 basic blocks, ``cat_output`` [True],
            ``with_ae`` [True, False]) or ``"segmentation"`` (MMSeg: bilinear fusion, all
            four branches, ``FCNHead`` resize_concat).
        num_outputs: K keypoints (pose; bottom-up: K heatmaps + K tags at 1/4, K heatmaps at
            1/2) or C classes (segmentation), >= 1.
        seed: if given, ``torch.manual_seed(seed)`` (inside ``torch.random.fork_rng``, so the
            caller's RNG state is untouched) before construction and init: same seed, same
            weights.

    Returns the model in eval mode. Raises ``ValueError`` for an unknown arch/task or a bad
    ``num_outputs``.
    """
    if arch not in HRNET_CONFIGS:
        raise ValueError(f"unknown arch {arch!r}; expected one of {ARCHS}")
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    if not isinstance(num_outputs, int) or num_outputs < 1:
        raise ValueError(f"num_outputs must be a positive int, got {num_outputs!r}")

    def _build() -> nn.Module:
        extra = hrnet_config(arch)
        if task == "topdown_pose":
            backbone = HRNet(extra, multiscale_output=False, upsample_mode="nearest")
            model: nn.Module = TopdownPoseModel(
                backbone, HeatmapHead(backbone.out_channels[0], num_outputs)
            )
        elif task == "bottomup_pose":
            backbone = HRNet(extra, multiscale_output=False, upsample_mode="nearest")
            width = backbone.out_channels[0]  # the configs' num_deconv_filters is [width]
            model = BottomUpPoseModel(
                backbone, AEHigherResolutionHead(width, num_outputs, num_deconv_filters=(width,))
            )
        else:
            backbone = HRNet(extra, multiscale_output=True, upsample_mode="bilinear")
            model = SegmentationModel(backbone, FCNHead(branch_channels(arch), num_outputs))
        return init_weights(model)

    if seed is None:
        model = _build()
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = _build()
    return model.eval()


def create_model(
    name: str, checkpoint: str | Path | None = None, seed: int | None = None
) -> nn.Module:
    """Build the registry model ``name`` (``training.registry.get_entry``), optionally with weights.

    ``checkpoint``: a local path, or an ``http(s)://`` / ``file://`` URL fetched with
    :func:`training.checkpoint.download_checkpoint` into ``$HRNET_CACHE_DIR`` (default
    ``~/.cache/hrnet-serving/checkpoints``); loaded strictly with
    :func:`training.checkpoint.load_checkpoint` (any published layout). ``seed``: see
    :func:`build_model`. Returns the model in eval mode. Raises ``KeyError``/whatever the
    registry raises for an unknown name, ``CheckpointError`` for a bad checkpoint.
    """
    from .registry import get_entry  # lazy: the registry is another module's concern

    entry = get_entry(name)
    model = build_model(entry.arch, entry.task, int(entry.num_outputs), seed=seed)
    if checkpoint is not None:
        from . import checkpoint as ckpt

        src = str(checkpoint)
        if "://" in src:
            path = ckpt.download_checkpoint(src, ckpt.default_cache_dir())
        else:
            path = Path(src)
        ckpt.load_checkpoint(model, path, strict=True)
    return model.eval()


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (weights and biases; BN running stats excluded)."""
    return sum(p.numel() for p in model.parameters())
