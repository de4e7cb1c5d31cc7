"""Training losses (torch).

:class:`KeypointMSELoss` follows MMPose 1.x ``mmpose/models/losses/heatmap_loss.py``
``KeypointMSELoss(use_target_weight=True)``: the element-wise squared error is multiplied by the
per-keypoint weight and averaged over every element, ``mean(w[b, k] * (pred - target)^2)``
over ``B * K * H * W``, times ``loss_weight``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["BatchLoss", "KeypointMSELoss", "targets_loss"]


class KeypointMSELoss(nn.Module):
    """Heatmap MSE with keypoint weights (MMPose ``KeypointMSELoss``).

    Args:
        use_target_weight: multiply by the target weights (``keypoint_weights`` from the codec).
        loss_weight: overall factor (1.0).

    ``forward(pred, target, weights)``: ``pred``/``target`` ``(B, K, H, W)`` float; ``weights``
    ``(B, K)`` (keypoint-wise) or ``(B, K, H, W)`` (pixel-wise), or None. Returns a scalar
    tensor. Raises ``ValueError`` for shape mismatches.
    """

    def __init__(self, use_target_weight: bool = True, loss_weight: float = 1.0) -> None:
        super().__init__()
        self.use_target_weight = use_target_weight
        self.loss_weight = loss_weight

    def forward(self, pred: Tensor, target: Tensor, weights: Tensor | None = None) -> Tensor:
        if pred.shape != target.shape or pred.ndim != 4:
            raise ValueError(
                f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must "
                "both be (B, K, H, W)"
            )
        sq = (pred - target) ** 2
        if self.use_target_weight and weights is not None:
            w = weights
            if w.ndim == 2:
                if tuple(w.shape) != tuple(pred.shape[:2]):
                    raise ValueError(
                        f"weights {tuple(w.shape)} do not match (B, K) = {tuple(pred.shape[:2])}"
                    )
                w = w[:, :, None, None]
            elif tuple(w.shape) != tuple(pred.shape):
                raise ValueError(f"weights must be (B, K) or (B, K, H, W), got {tuple(w.shape)}")
            sq = sq * w
        return sq.mean() * self.loss_weight


#: a training loss over a whole batch: ``(prediction, batch, device) -> scalar tensor``; the
#: prediction is the model's output (a tensor, or a list of stage tensors for bottom-up)
BatchLoss = Callable[[Any, dict, torch.device], Tensor]


def targets_loss(
    loss_fn: nn.Module, target_keys: tuple[str, ...] = ("heatmaps", "weights")
) -> BatchLoss:
    """``loss_fn`` as a :data:`BatchLoss`: ``loss_fn(pred.float(), *batch[target_keys])`` with the
    targets moved to the device (top-down: :class:`KeypointMSELoss` on
    ``heatmaps`` + ``weights``; segmentation: :class:`~training.seg_losses.SegCrossEntropyLoss`
    on ``labels``)."""

    def loss(pred: Tensor, batch: dict, device: torch.device) -> Tensor:
        targets = [batch[k].to(device, non_blocking=True) for k in target_keys]
        return loss_fn(pred.float(), *targets)

    return loss
