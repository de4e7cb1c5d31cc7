"""Segmentation loss (torch): MMSeg 1.x ``FCNHead.loss_by_feat`` with its default
``CrossEntropyLoss(use_sigmoid=False, loss_weight=1.0)``.

``BaseDecodeHead.loss_by_feat`` first resizes the head's logits bilinearly
(``align_corners`` of the head, False for HRNet) to the label size, then
``mmseg/models/losses/cross_entropy_loss.py`` ``cross_entropy`` takes the per-pixel
``F.cross_entropy(..., reduction='none', ignore_index=255)`` and, with the default
``avg_non_ignore=False``, averages it over **every** pixel, ignored ones included (they
contribute 0): ``sum(CE over labelled pixels) / (N * H * W)``. ``avg_non_ignore=True`` divides
by the number of labelled pixels instead (PyTorch's own ``mean``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SegCrossEntropyLoss"]


class SegCrossEntropyLoss(nn.Module):
    """Pixel-wise softmax cross entropy with MMSeg's averaging.

    Args:
        ignore_index: label value that contributes no loss (255).
        avg_non_ignore: divide by the labelled pixels (True) or by all pixels (False, MMSeg's
            default and the HRNet configs').
        loss_weight: overall factor (1.0).
        align_corners: of the logits' bilinear resize to the label size (False).

    ``forward(logits, labels)``: ``logits`` ``(N, C, h, w)`` float (any ``h, w``; resized to the
    label size first when they differ), ``labels`` ``(N, H, W)`` int64 class ids in
    ``[0, C)`` or ``ignore_index``. Returns a scalar tensor (0 when every pixel is ignored).
    Upstream: ``mmseg/models/decode_heads/decode_head.py`` ``loss_by_feat`` and
    ``mmseg/models/losses/cross_entropy_loss.py``.
    Raises ``ValueError`` for mismatched batch sizes or ranks.
    """

    def __init__(
        self,
        ignore_index: int = 255,
        avg_non_ignore: bool = False,
        loss_weight: float = 1.0,
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        self.ignore_index = int(ignore_index)
        self.avg_non_ignore = bool(avg_non_ignore)
        self.loss_weight = float(loss_weight)
        self.align_corners = bool(align_corners)

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        if logits.ndim != 4 or labels.ndim != 3 or logits.shape[0] != labels.shape[0]:
            raise ValueError(
                f"logits {tuple(logits.shape)} must be (N, C, h, w) and labels "
                f"{tuple(labels.shape)} (N, H, W) with the same N"
            )
        if logits.shape[-2:] != labels.shape[-2:]:
            logits = F.interpolate(
                logits, size=labels.shape[-2:], mode="bilinear", align_corners=self.align_corners
            )
        loss = F.cross_entropy(logits, labels, reduction="none", ignore_index=self.ignore_index)
        if self.avg_non_ignore:
            # weight_reduce_loss: sum / (avg_factor + float32 eps)
            denom = (labels != self.ignore_index).sum().float()
            loss = loss.sum() / (denom + torch.finfo(torch.float32).eps)
        else:
            loss = loss.mean()
        return loss * self.loss_weight
