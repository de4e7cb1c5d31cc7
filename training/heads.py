"""Heads for the HRNet family, with upstream module names.

* :class:`HeatmapHead` — MMPose 1.x ``HeatmapHead`` as configured for HRNet top-down models
  (``deconv_out_channels=None``, no extra convs): a single 1x1 ``final_layer`` conv.
* :class:`FCNHead` — MMSeg ``FCNHead`` as configured in ``configs/_base_/models/fcn_hr18.py``:
  ``input_transform='resize_concat'``, ``in_index=(0,1,2,3)``, ``kernel_size=1``,
  ``num_convs=1``, ``concat_input=False``, ``dropout_ratio=-1`` (no dropout), BN.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["HeatmapHead", "ConvModule", "FCNHead"]


class HeatmapHead(nn.Module):
    """Top-down heatmap head: ``final_layer`` = ``Conv2d(in_channels, out_channels, 1)`` (bias).

    Follows ``mmpose.models.heads.HeatmapHead`` with ``deconv_out_channels=None`` and
    ``conv_out_channels=None`` (both are identities there and hold no parameters).
    Keys: ``final_layer.weight`` ``(K, C, 1, 1)``, ``final_layer.bias`` ``(K,)``.

    ``forward(feats)``: a sequence of backbone outputs; like upstream it uses the LAST one,
    which for the MMPose HRNet (``multiscale_output=False``) is branch 0, ``(N, C, H/4, W/4)``
    -> heatmaps float ``(N, K, H/4, W/4)`` in heatmap space.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.final_layer = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, feats: Sequence[Tensor] | Tensor) -> Tensor:
        x = feats if isinstance(feats, Tensor) else feats[-1]
        return self.final_layer(x)


class ConvModule(nn.Module):
    """conv (no bias) -> BN -> ReLU with mmcv ``ConvModule`` names ``conv``, ``bn``, ``activate``.

    Follows ``mmcv.cnn.ConvModule`` with ``norm_cfg=BN``, ``act_cfg=ReLU``, ``bias='auto'``
    (i.e. no conv bias because a norm follows), ``order=('conv','norm','act')``; ``padding =
    kernel_size // 2`` as the FCNHead convs. ``(N, in_channels, H, W)`` float ->
    ``(N, out_channels, H, W)`` (odd ``kernel_size``).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False
        )
        self.bn = nn.BatchNorm2d(out_channels)
        self.activate = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.activate(self.bn(self.conv(x)))


class FCNHead(nn.Module):
    """MMSeg ``FCNHead`` for HRNetV2 (``fcn_hr18`` / ``fcn_hr18s`` / ``fcn_hr48`` configs).

    Args:
        in_channels: widths of the backbone outputs selected by ``in_index``.
        num_classes: number of output classes ``C``.
        channels: width of the conv stack; default ``sum(in_channels)`` as in the configs.
        in_index: which backbone outputs to use, default ``(0, 1, 2, 3)``.
        kernel_size, num_convs, concat_input: as upstream (configs: 1, 1, False).
        dropout_ratio: ``Dropout2d`` before ``conv_seg`` if > 0 (configs: -1, i.e. none).
        align_corners: of the ``resize_concat`` bilinear resize (configs: False).

    Keys: ``convs.{k}.conv.weight``, ``convs.{k}.bn.*``, ``conv_cat.*`` (only if
    ``concat_input``), ``conv_seg.weight`` ``(C, channels, 1, 1)``, ``conv_seg.bias``.

    ``forward(feats)``: tuple of backbone outputs; the selected ones are bilinearly resized
    to the size of the first (``BaseDecodeHead._transform_inputs`` with ``resize_concat``) and
    concatenated -> logits float ``(N, C, H0, W0)`` at branch-0 resolution (input/4). No resize
    to the input size here (that is ``EncoderDecoder``/the gateway's job).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        channels: int | None = None,
        in_index: Sequence[int] = (0, 1, 2, 3),
        kernel_size: int = 1,
        num_convs: int = 1,
        concat_input: bool = False,
        dropout_ratio: float = -1.0,
        align_corners: bool = False,
    ):
        super().__init__()
        if len(in_channels) != len(in_index):
            raise ValueError(
                f"in_channels {tuple(in_channels)} and in_index {tuple(in_index)} differ in length"
            )
        if num_convs < 1:
            raise ValueError("num_convs must be >= 1")
        self.in_index = tuple(in_index)
        self.in_channels = sum(in_channels)
        self.channels = self.in_channels if channels is None else channels
        self.num_classes = num_classes
        self.align_corners = align_corners
        self.concat_input = concat_input
        convs = [ConvModule(self.in_channels, self.channels, kernel_size)]
        convs += [
            ConvModule(self.channels, self.channels, kernel_size) for _ in range(num_convs - 1)
        ]
        self.convs = nn.Sequential(*convs)
        if concat_input:
            self.conv_cat = ConvModule(self.in_channels + self.channels, self.channels, kernel_size)
        self.conv_seg = nn.Conv2d(self.channels, num_classes, kernel_size=1)
        self.dropout = nn.Dropout2d(dropout_ratio) if dropout_ratio > 0 else None

    def transform_inputs(self, feats: Sequence[Tensor]) -> Tensor:
        """``resize_concat``: ``(N, sum(C_i), H0, W0)`` float from the selected branch outputs."""
        xs = [feats[i] for i in self.in_index]
        size = xs[0].shape[-2:]
        xs = [
            x
            if x.shape[-2:] == size
            else F.interpolate(x, size=size, mode="bilinear", align_corners=self.align_corners)
            for x in xs
        ]
        return torch.cat(xs, dim=1)

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        x = self.transform_inputs(feats)
        out = self.convs(x)
        if self.concat_input:
            out = self.conv_cat(torch.cat([x, out], dim=1))
        if self.dropout is not None:
            out = self.dropout(out)
        return self.conv_seg(out)
