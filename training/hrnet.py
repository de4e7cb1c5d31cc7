"""HRNet backbone (High-Resolution Net), parameter-for-parameter compatible with MMPose/MMSeg.

One file for the family, in the spirit of a timm model file. The module tree, and therefore
every ``state_dict`` key, is the one of the mmcv-style ``HRNet`` backbone in
``mmpose/models/backbones/hrnet.py`` and ``mmseg/models/backbones/hrnet.py`` (which is also the
tree of ``PoseHighResolutionNet`` in leoxiaobin/deep-high-resolution-net.pytorch, minus its
``final_layer``)::

    conv1, bn1, conv2, bn2                       stem: two 3x3 stride-2 convs (input/4)
    layer1.{b}.{conv1..3, bn1..3, downsample}    stage 1: Bottleneck blocks, 64 -> 256 channels
    transition1.{i}...                           256 -> branch widths (w, 2w)
    stage2.{m}.branches.{i}.{b}.{conv1,bn1,conv2,bn2}
    stage2.{m}.fuse_layers.{i}.{j}...            multi-resolution exchange
    transition2, stage3, transition3, stage4     same pattern with 3 and 4 branches

Branch ``i`` runs at 1/2**(i+2) of the input size with ``w * 2**i`` channels.

Two upstream variants differ only in the fusion upsampling and in the last module:

* MMPose / original HRNet (``upsample_mode="nearest"``, ``multiscale_output=False``): the last
  HRModule of stage 4 fuses into branch 0 only (``stage4.<last>.fuse_layers.0.*`` exist,
  ``fuse_layers.1..3`` do not), nearest upsampling by ``scale_factor=2**(j-i)``; the backbone
  returns a 1-tuple ``(branch0,)``. The input height and width must be multiples of 32.
* MMSeg (``upsample_mode="bilinear"``, ``multiscale_output=True``): every module fuses into all
  branches; upsampling is bilinear with ``align_corners=False`` to ``int(size * 2**(j-i))``,
  followed by a second bilinear resize to the target branch's size when the two differ (the
  case for inputs that are not multiples of 32); the backbone returns all four branches.
  Here that second resize is applied unconditionally: where the sizes already match it is a
  same-size bilinear resize, an exact identity on finite values, so the numbers are MMSeg's at
  every input size and the traced/exported graph has no size-dependent branch (dynamic ``H, W``
  export at any example size).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any, cast

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "HRModule",
    "HRNet",
    "HRNET_CONFIGS",
    "hrnet_config",
    "branch_channels",
]


def _stage(
    num_modules: int,
    num_branches: int,
    block: str,
    num_blocks: Sequence[int],
    num_channels: Sequence[int],
) -> dict[str, Any]:
    return dict(
        num_modules=num_modules,
        num_branches=num_branches,
        block=block,
        num_blocks=tuple(num_blocks),
        num_channels=tuple(num_channels),
    )


def _standard(width: int) -> dict[str, dict[str, Any]]:
    """The HRNet-W{width} stage layout used by MMPose top-down and MMSeg ``fcn_hr{width}``."""
    w = width
    return dict(
        stage1=_stage(1, 1, "BOTTLENECK", (4,), (64,)),
        stage2=_stage(1, 2, "BASIC", (4, 4), (w, 2 * w)),
        stage3=_stage(4, 3, "BASIC", (4, 4, 4), (w, 2 * w, 4 * w)),
        stage4=_stage(3, 4, "BASIC", (4, 4, 4, 4), (w, 2 * w, 4 * w, 8 * w)),
    )


#: ``extra`` dicts, as in the upstream configs.
#: hrnet_w32 / hrnet_w48: mmpose ``td-hm_hrnet-w{32,48}_8xb{64,32}-210e_coco-256x192.py``;
#: hrnet_w18 / hrnet_w48: mmseg ``configs/_base_/models/fcn_hr18.py`` and ``fcn_hr48_*.py``;
#: hrnet_w18_small: mmseg ``fcn_hr18s_*.py`` (HRNetV2-W18-Small-v2: stage1 2 blocks, stage2 1
#: module of 2 blocks, stage3 3 modules, stage4 2 modules, all 2 blocks per branch).
HRNET_CONFIGS: dict[str, dict[str, dict[str, Any]]] = {
    "hrnet_w18_small": dict(
        stage1=_stage(1, 1, "BOTTLENECK", (2,), (64,)),
        stage2=_stage(1, 2, "BASIC", (2, 2), (18, 36)),
        stage3=_stage(3, 3, "BASIC", (2, 2, 2), (18, 36, 72)),
        stage4=_stage(2, 4, "BASIC", (2, 2, 2, 2), (18, 36, 72, 144)),
    ),
    "hrnet_w18": _standard(18),
    "hrnet_w32": _standard(32),
    "hrnet_w48": _standard(48),
}


def hrnet_config(arch: str) -> dict[str, dict[str, Any]]:
    """Return a deep copy of the ``extra`` config of ``arch`` (a key of :data:`HRNET_CONFIGS`).

    Raises ``KeyError`` naming the known archs for an unknown one.
    """
    if arch not in HRNET_CONFIGS:
        raise KeyError(f"unknown HRNet arch {arch!r}; known: {sorted(HRNET_CONFIGS)}")
    return copy.deepcopy(HRNET_CONFIGS[arch])


def branch_channels(arch: str) -> tuple[int, ...]:
    """Channels of the four stage-4 branches of ``arch`` (e.g. ``(32, 64, 128, 256)`` for W32)."""
    return tuple(hrnet_config(arch)["stage4"]["num_channels"])


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, padding=0, bias=False)


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convs), keys ``conv1, bn1, conv2, bn2, downsample.{0,1}``.

    Follows ``mmpose.models.backbones.resnet.BasicBlock`` (expansion 1, ``style='pytorch'``).
    Input ``(N, in_channels, H, W)`` float -> ``(N, out_channels, H/stride, W/stride)``.
    """

    expansion = 1

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
    ):
        super().__init__()
        self.conv1 = _conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = _conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """ResNet bottleneck (1x1, 3x3, 1x1 convs, expansion 4), keys ``conv1..3, bn1..3, downsample``.

    ``out_channels`` is the block's output width; the inner width is ``out_channels // 4``, as in
    ``mmpose.models.backbones.resnet.Bottleneck`` (stride on the 3x3 conv, ``style='pytorch'``).
    Input ``(N, in_channels, H, W)`` float -> ``(N, out_channels, H/stride, W/stride)``.
    """

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
    ):
        super().__init__()
        mid = out_channels // self.expansion
        self.conv1 = _conv1x1(in_channels, mid)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = _conv3x3(mid, mid, stride)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = _conv1x1(mid, out_channels)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


Block = type[BasicBlock] | type[Bottleneck]
_BLOCKS: dict[str, Block] = {"BASIC": BasicBlock, "BOTTLENECK": Bottleneck}


class _FuseUpsample(nn.Module):
    """Parameter-free upsampling at index 2 of a fuse path ``Sequential(conv1x1, bn, up)``.

    ``nearest``: ``F.interpolate(scale_factor=s, mode='nearest')`` (mmpose ``nn.Upsample``).
    ``bilinear``: ``F.interpolate(size=(h*s, w*s), mode='bilinear', align_corners=False)``
    (mmseg ``Upsample`` wrapper, which turns the factor into the size ``int(h*s), int(w*s)``;
    ``s = 2**(j-i)`` is an int, so that is ``h*s``, computed here from the (possibly symbolic)
    shape so that exported graphs keep ``H, W`` dynamic).
    Input ``(N, C, h, w)`` float -> ``(N, C, h*s, w*s)``.
    """

    def __init__(self, scale: int, mode: str):
        super().__init__()
        if mode not in ("nearest", "bilinear"):
            raise ValueError(f"upsample mode must be 'nearest' or 'bilinear', got {mode!r}")
        self.scale = int(scale)
        self.mode = mode

    def forward(self, x: Tensor) -> Tensor:
        if self.mode == "nearest":
            return F.interpolate(x, scale_factor=float(self.scale), mode="nearest")
        # ``int(h * s)`` of mmseg is ``h * s`` for an integer ``s``; leaving out ``int()`` keeps
        # the size symbolic under torch.export / the ONNX tracers (int() bakes the example size).
        size = (x.shape[-2] * self.scale, x.shape[-1] * self.scale)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

    def extra_repr(self) -> str:
        return f"scale={self.scale}, mode={self.mode!r}"


class HRModule(nn.Module):
    """One high-resolution module: parallel residual branches, then all-to-all fusion.

    Follows ``HRModule`` of mmpose/mmseg. ``branches.{i}`` is a ``Sequential`` of
    ``num_blocks[i]`` blocks; ``fuse_layers.{i}.{j}`` brings branch ``j`` to branch ``i``:
    ``j > i``: ``Sequential(conv1x1, BN, upsample x2**(j-i))``; ``j == i``: ``None``;
    ``j < i``: ``i-j`` stride-2 ``Sequential(conv3x3, BN[, ReLU])`` (ReLU on all but the last).
    Output ``i`` is ``relu(sum_j fuse_ij(x_j))`` summed over ``j = 0..n-1`` in order. With
    bilinear (MMSeg) fusion each upsampled ``fuse_ij(x_j)``, ``j > i``, is then bilinearly
    resized to branch ``i``'s size (mmseg ``HRModule.forward``'s ``resize``), always (a no-op
    where the sizes already match); with nearest (MMPose) fusion a size mismatch raises
    ``ValueError`` (input ``H, W`` not multiples of 32).

    With ``multiscale_output=False`` only output 0 is built and returned (a 1-list).
    Input/output: a list of ``(N, C_i, H_i, W_i)`` float tensors, ``H_i = H_0 / 2**i``.
    """

    def __init__(
        self,
        num_branches: int,
        block: Block,
        num_blocks: Sequence[int],
        in_channels: Sequence[int],
        num_channels: Sequence[int],
        multiscale_output: bool = True,
        upsample_mode: str = "nearest",
    ):
        super().__init__()
        for name, seq in (
            ("num_blocks", num_blocks),
            ("in_channels", in_channels),
            ("num_channels", num_channels),
        ):
            if len(seq) != num_branches:
                raise ValueError(f"num_branches={num_branches} but len({name})={len(seq)}")
        self.num_branches = num_branches
        self.multiscale_output = multiscale_output
        self.upsample_mode = upsample_mode
        self.in_channels = list(in_channels)  # updated to the branch output widths below
        self.branches = nn.ModuleList(
            self._make_branch(i, block, num_blocks[i], num_channels[i]) for i in range(num_branches)
        )
        self.fuse_layers = self._make_fuse_layers()
        self.relu = nn.ReLU(inplace=False)

    def _make_branch(self, i: int, block: Block, num_blocks: int, channels: int) -> nn.Sequential:
        out_ch = channels * block.expansion
        downsample = None
        if self.in_channels[i] != out_ch:
            downsample = nn.Sequential(
                _conv1x1(self.in_channels[i], out_ch), nn.BatchNorm2d(out_ch)
            )
        layers = [block(self.in_channels[i], out_ch, 1, downsample)]
        layers += [block(out_ch, out_ch) for _ in range(1, num_blocks)]
        self.in_channels[i] = out_ch
        return nn.Sequential(*layers)

    def _make_fuse_layers(self) -> nn.ModuleList | None:
        if self.num_branches == 1:
            return None
        ch = self.in_channels
        n_out = self.num_branches if self.multiscale_output else 1
        fuse_layers = nn.ModuleList()
        for i in range(n_out):
            row = nn.ModuleList()
            for j in range(self.num_branches):
                if j > i:
                    row.append(
                        nn.Sequential(
                            _conv1x1(ch[j], ch[i]),
                            nn.BatchNorm2d(ch[i]),
                            _FuseUpsample(2 ** (j - i), self.upsample_mode),
                        )
                    )
                elif j == i:
                    row.append(None)  # type: ignore[arg-type]  # upstream's placeholder, never called
                else:
                    steps = []
                    for k in range(i - j):
                        if k == i - j - 1:
                            steps.append(
                                nn.Sequential(_conv3x3(ch[j], ch[i], 2), nn.BatchNorm2d(ch[i]))
                            )
                        else:
                            steps.append(
                                nn.Sequential(
                                    _conv3x3(ch[j], ch[j], 2),
                                    nn.BatchNorm2d(ch[j]),
                                    nn.ReLU(inplace=False),
                                )
                            )
                    row.append(nn.Sequential(*steps))
            fuse_layers.append(row)
        return fuse_layers

    def forward(self, x: list[Tensor]) -> list[Tensor]:
        if self.num_branches == 1:
            return [self.branches[0](x[0])]
        x = [branch(xi) for branch, xi in zip(self.branches, x)]
        out = []
        if self.fuse_layers is None:
            raise RuntimeError("a multi-branch HRModule without fuse layers")
        for i, row in enumerate(cast(Sequence[nn.ModuleList], self.fuse_layers)):
            y = x[i] if i == 0 else row[0](x[0])
            for j in range(1, self.num_branches):
                if j == i:
                    y = y + x[j]
                    continue
                z = row[j](x[j])
                if j > i and self.upsample_mode == "bilinear":
                    # mmseg resizes only when the sizes differ; unconditionally is the same
                    # numbers (same-size bilinear, align_corners=False, is an exact identity
                    # for finite inputs) and keeps the graph free of size-dependent branches
                    z = F.interpolate(z, size=x[i].shape[-2:], mode="bilinear", align_corners=False)
                elif j > i and z.shape[-2:] != x[i].shape[-2:]:
                    raise ValueError(
                        f"HRNet fusion: branch {j} upsampled to {tuple(z.shape[-2:])} does not "
                        f"match branch {i} {tuple(x[i].shape[-2:])}; with nearest fusion "
                        "(MMPose) the input height and width must be multiples of 32"
                    )
                y = y + z
            out.append(self.relu(y))
        return out


class HRNet(nn.Module):
    """HRNet backbone with the mmcv-style module names (see the module docstring).

    Args:
        extra: stage config as in the upstream configs (see :data:`HRNET_CONFIGS`).
        in_channels: input image channels (3).
        multiscale_output: build/return all branches of the last module (MMSeg, True) or only
            branch 0 (MMPose top-down / original HRNet, False).
        upsample_mode: ``"nearest"`` (MMPose) or ``"bilinear"`` (MMSeg) fusion upsampling.

    ``forward(x)``: ``x`` float32 ``(N, in_channels, H, W)`` (already normalised) -> tuple of
    ``(N, C_i, ceil(H/2**(i+2)), ceil(W/2**(i+2)))`` tensors, one per returned branch (the stride
    2 convs round up). Follows ``mmpose.models.backbones.HRNet.forward`` /
    ``mmseg.models.backbones.HRNet.forward``.
    """

    def __init__(
        self,
        extra: Mapping[str, Mapping[str, Any]],
        in_channels: int = 3,
        multiscale_output: bool = True,
        upsample_mode: str = "nearest",
    ):
        super().__init__()
        self.extra = copy.deepcopy(dict(extra))
        self.multiscale_output = multiscale_output
        self.upsample_mode = upsample_mode

        # stem: input/4, 64 channels
        self.conv1 = _conv3x3(in_channels, 64, 2)
        self.bn1 = nn.BatchNorm2d(64)
        self.conv2 = _conv3x3(64, 64, 2)
        self.bn2 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)

        # stage 1: one branch of Bottlenecks
        s1 = self.extra["stage1"]
        block = _BLOCKS[s1["block"]]
        stage1_out = s1["num_channels"][0] * block.expansion
        downsample = (
            nn.Sequential(_conv1x1(64, stage1_out), nn.BatchNorm2d(stage1_out))
            if stage1_out != 64
            else None
        )
        self.layer1 = nn.Sequential(
            block(64, stage1_out, 1, downsample),
            *[block(stage1_out, stage1_out) for _ in range(1, s1["num_blocks"][0])],
        )

        # stages 2-4: transition (new branch), then HRModules
        pre = [stage1_out]
        for s in (2, 3, 4):
            cfg = self.extra[f"stage{s}"]
            block = _BLOCKS[cfg["block"]]
            cur = [c * block.expansion for c in cfg["num_channels"]]
            setattr(self, f"transition{s - 1}", self._make_transition(pre, cur))
            last_multiscale = multiscale_output if s == 4 else True
            stage, pre = self._make_stage(cfg, cur, last_multiscale)
            setattr(self, f"stage{s}", stage)
        self.out_channels = tuple(pre if multiscale_output else pre[:1])

    @staticmethod
    def _make_transition(pre: Sequence[int], cur: Sequence[int]) -> nn.ModuleList:
        layers = nn.ModuleList()
        for i, c in enumerate(cur):
            if i < len(pre):
                layers.append(
                    None
                    if c == pre[i]
                    else nn.Sequential(  # type: ignore[arg-type]
                        _conv3x3(pre[i], c), nn.BatchNorm2d(c), nn.ReLU(inplace=True)
                    )
                )
            else:  # a new, lower-resolution branch from the last existing one
                steps = []
                for k in range(i + 1 - len(pre)):
                    out_c = c if k == i - len(pre) else pre[-1]
                    steps.append(
                        nn.Sequential(
                            _conv3x3(pre[-1], out_c, 2),
                            nn.BatchNorm2d(out_c),
                            nn.ReLU(inplace=True),
                        )
                    )
                layers.append(nn.Sequential(*steps))
        return layers

    def _make_stage(
        self, cfg: Mapping[str, Any], in_channels: Sequence[int], multiscale_output: bool
    ) -> tuple[nn.Sequential, list[int]]:
        block = _BLOCKS[cfg["block"]]
        modules = []
        channels = list(in_channels)
        for m in range(cfg["num_modules"]):
            last = m == cfg["num_modules"] - 1
            module = HRModule(
                cfg["num_branches"],
                block,
                cfg["num_blocks"],
                channels,
                cfg["num_channels"],
                multiscale_output or not last,
                self.upsample_mode,
            )
            modules.append(module)
            channels = module.in_channels
        return nn.Sequential(*modules), channels

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        ys = [self.layer1(x)]
        for s in (2, 3, 4):
            transition = getattr(self, f"transition{s - 1}")
            xs = []
            for i, t in enumerate(transition):
                src = ys[i] if i < len(ys) else ys[-1]
                xs.append(src if t is None else t(src))
            ys = getattr(self, f"stage{s}")(xs)
        return tuple(ys)
