"""HigherHRNet: HRNet backbone + associative-embedding higher-resolution head (bottom-up pose).

The network of MMPose 0.x ``AssociativeEmbedding`` with ``AEHigherResolutionHead``
(``mmpose/models/heads/ae_higher_resolution_head.py``, configs
``configs/bottom_up/higherhrnet/coco/higher_hrnet{32,48}_coco_*.py``) and of
``PoseHigherResolutionNet`` in HRNet/HigherHRNet-Human-Pose-Estimation
(``lib/models/pose_higher_hrnet.py``, ``experiments/coco/higher_hrnet/*.yaml``). Both build the
same module tree, so one set of key names serves both published layouts (see
:mod:`training.checkpoint`)::

    backbone.*                                HRNet as in top-down pose (nearest fusion, the last
                                              module of stage 4 fuses into branch 0 only)
    head.final_layers.0.{weight,bias}         1x1 conv, C -> K + K tags (with_ae[0])   at 1/4
    head.deconv_layers.0.0.0.weight           ConvTranspose2d(C + K + K, F, 4, 2, 1), no bias
    head.deconv_layers.0.0.1.*                BN(F) (then ReLU)
    head.deconv_layers.0.{1..4}.0.*           4 BasicBlocks(F, F)
    head.final_layers.1.{weight,bias}         1x1 conv, F -> K (with_ae[1] False)     at 1/2

with ``C`` the backbone width (32 / 48), ``K`` the joints (17) and ``F`` the deconv filters (32).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .hrnet import BasicBlock, HRNet

__all__ = ["AEHigherResolutionHead", "BottomUpPoseModel", "deconv_padding"]


def deconv_padding(kernel_size: int) -> tuple[int, int]:
    """``(padding, output_padding)`` of a stride-2 ``ConvTranspose2d`` that doubles the size.

    As upstream's ``_get_deconv_cfg``: kernel 4 -> (1, 0), 3 -> (1, 1), 2 -> (0, 0). Raises
    ``ValueError`` for any other kernel size.
    """
    table = {4: (1, 0), 3: (1, 1), 2: (0, 0)}
    if kernel_size not in table:
        raise ValueError(f"deconv kernel size must be 2, 3 or 4, got {kernel_size!r}")
    return table[kernel_size]


class AEHigherResolutionHead(nn.Module):
    """Associative-embedding head with ``num_deconv_layers`` higher-resolution stages.

    Follows MMPose 0.x ``AEHigherResolutionHead`` (same arguments and module names; ``with_ae``
    is its ``with_ae_loss``, which decides the output widths).

    Args:
        in_channels: backbone branch-0 width ``C``.
        num_joints: ``K``.
        tag_per_joint: tag maps per joint (``K``) or one shared tag map (1).
        num_deconv_layers, num_deconv_filters, num_deconv_kernels, num_basic_blocks: the
            deconvolution stages (configs: 1, [32], [4], 4).
        cat_output: per deconv stage, concatenate the previous stage's output to its input
            (configs: [True]).
        with_ae: per output stage (``num_deconv_layers + 1`` entries), whether it carries tag
            maps after the heatmaps (configs: [True, False]).
        final_conv_kernel: 1 or 3 (configs: 1).

    ``forward(feats)``: a tensor or a sequence whose first element is branch 0, float32
    ``(N, C, H/4, W/4)`` -> list of ``num_deconv_layers + 1`` tensors, stage ``s`` float32
    ``(N, K [+ K tags if with_ae[s]], H/4 * 2**s, W/4 * 2**s)`` in heatmap space of that stage.

    Raises ``ValueError`` for inconsistent list lengths or unsupported kernel sizes.
    """

    def __init__(
        self,
        in_channels: int,
        num_joints: int,
        tag_per_joint: bool = True,
        num_deconv_layers: int = 1,
        num_deconv_filters: Sequence[int] = (32,),
        num_deconv_kernels: Sequence[int] = (4,),
        num_basic_blocks: int = 4,
        cat_output: Sequence[bool] = (True,),
        with_ae: Sequence[bool] = (True, False),
        final_conv_kernel: int = 1,
    ):
        super().__init__()
        n = num_deconv_layers
        if len(num_deconv_filters) != n or len(num_deconv_kernels) != n or len(cat_output) != n:
            raise ValueError(
                f"num_deconv_layers={n} needs that many filters, kernels and "
                f"cat_output flags; got {list(num_deconv_filters)}, "
                f"{list(num_deconv_kernels)}, {list(cat_output)}"
            )
        if len(with_ae) != n + 1:
            raise ValueError(
                f"with_ae needs {n + 1} flags (one per output stage), got {list(with_ae)}"
            )
        if final_conv_kernel not in (1, 3):
            raise ValueError(f"final_conv_kernel must be 1 or 3, got {final_conv_kernel!r}")
        self.num_joints = num_joints
        self.num_deconvs = n
        self.cat_output = tuple(bool(c) for c in cat_output)
        self.with_ae = tuple(bool(a) for a in with_ae)
        dim_tag = num_joints if tag_per_joint else 1
        #: output channels per stage: K heatmaps, then the tag maps where with_ae
        self.out_channels = tuple(num_joints + (dim_tag if a else 0) for a in self.with_ae)

        pad = final_conv_kernel // 2
        widths = [in_channels, *num_deconv_filters]
        self.final_layers = nn.ModuleList(
            nn.Conv2d(widths[s], self.out_channels[s], final_conv_kernel, padding=pad)
            for s in range(n + 1)
        )

        self.deconv_layers = nn.ModuleList()
        ch = in_channels
        for i in range(n):
            if self.cat_output[i]:
                ch += self.out_channels[i]
            planes = num_deconv_filters[i]
            padding, output_padding = deconv_padding(num_deconv_kernels[i])
            up = nn.Sequential(
                nn.ConvTranspose2d(
                    ch,
                    planes,
                    num_deconv_kernels[i],
                    stride=2,
                    padding=padding,
                    output_padding=output_padding,
                    bias=False,
                ),
                nn.BatchNorm2d(planes),
                nn.ReLU(inplace=True),
            )
            blocks = [nn.Sequential(BasicBlock(planes, planes)) for _ in range(num_basic_blocks)]
            self.deconv_layers.append(nn.Sequential(up, *blocks))
            ch = planes

    def forward(self, feats: Sequence[Tensor] | Tensor) -> list[Tensor]:
        """``feats``: the backbone's highest-resolution branch ``(N, C, H/4, W/4)`` (or a sequence
        whose first item it is). Returns ``[(N, K + K, H/4, W/4), (N, K, H/2, W/2), ...]``, one
        tensor per stage, lowest resolution first (the original repo's ``final_outputs``)."""
        x = feats if isinstance(feats, Tensor) else feats[0]
        y = self.final_layers[0](x)
        outputs = [y]
        for i in range(self.num_deconvs):
            if self.cat_output[i]:
                x = torch.cat((x, y), 1)
            x = self.deconv_layers[i](x)
            y = self.final_layers[i + 1](x)
            outputs.append(y)
        return outputs


class BottomUpPoseModel(nn.Module):
    """HigherHRNet inference graph: :class:`training.hrnet.HRNet` + :class:`AEHigherResolutionHead`.

    ``forward(x)``: ``x`` float32 ``(N, 3, H, W)``, RGB normalised with the ImageNet mean/std
    (MMPose 0.x ``NormalizeTensor``), ``H`` and ``W`` multiples of 32 (upstream feeds multiples
    of 64: ``BottomUpResizeAlign``). Returns a tuple, lowest resolution first:
    ``(N, K + K, H/4, W/4)`` (heatmaps then tags) and ``(N, K, H/2, W/2)`` (heatmaps) for the
    published configs; no flip, no resize, no grouping. Raises ``ValueError`` from the backbone
    for ``H, W`` that are not multiples of 32.
    """

    task = "bottomup_pose"

    def __init__(self, backbone: HRNet, head: AEHigherResolutionHead):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        return tuple(self.head(self.backbone(x)))
