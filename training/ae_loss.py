"""Bottom-up (HigherHRNet) training losses: masked heatmap MSE per stage + associative-embedding
pull/push loss on the tag maps (torch).

Follows MMPose 0.x ``mmpose/models/losses/multi_loss_factory.py`` (``HeatmapLoss``, ``AELoss``,
``MultiLossFactory``, adapted there from the HigherHRNet repo's ``lib/core/loss.py``) and
``AEHigherResolutionHead.get_loss``, vectorised over the batch and the people instead of
upstream's Python loops (same values up to float32 summation order):

* heatmap loss of stage ``s``, per image: ``mean_{k,y,x} mask[y, x] * (pred - target)^2``
  (``supervise_empty=False`` also drops channels whose target is all zero), times
  ``heatmaps_loss_factor[s]``, then the batch mean;
* AE loss of stage ``s``, per image, over the ``T`` people with at least one tagged joint:
  ``pull = (1/T) sum_p mean_j (tag_pj - mean_p)^2`` and ``push = (sum_{p,q} f(mean_p - mean_q)
  - T) / (T (T - 1)) * 0.5`` with ``f(d) = exp(-d^2)`` (``'exp'``) or ``max(0, 1 - |d|)``
  (``'max'``); push is 0 for ``T < 2`` and both are 0 for ``T = 0``; times
  ``push/pull_loss_factor[s]``, then the batch mean;
* the total is the sum over stages of all three (MMCV's ``_parse_losses`` adds every ``*loss*``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["HeatmapLoss", "AELoss", "BottomUpLoss"]


class HeatmapLoss(nn.Module):
    """Masked heatmap MSE per image (MMPose 0.x ``HeatmapLoss``).

    ``forward(pred, target, mask)``: ``pred``/``target`` ``(B, K, H, W)``, ``mask`` ``(B, H, W)``
    (1 = supervised, 0 = crowd / unannotated people / outside the image). Returns ``(B,)``.
    Raises ``ValueError`` for shape mismatches.
    """

    def __init__(self, supervise_empty: bool = True) -> None:
        super().__init__()
        self.supervise_empty = supervise_empty

    def forward(self, pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        if pred.shape != target.shape or pred.ndim != 4:
            raise ValueError(
                f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must "
                "both be (B, K, H, W)"
            )
        if tuple(mask.shape) != (pred.shape[0], *pred.shape[2:]):
            raise ValueError(
                f"mask {tuple(mask.shape)} must be (B, H, W) = {(pred.shape[0], *pred.shape[2:])}"
            )
        loss = (pred - target) ** 2 * mask[:, None]
        if not self.supervise_empty:
            loss = loss * (target.sum(dim=(2, 3), keepdim=True) > 0).to(loss.dtype)
        return loss.mean(dim=3).mean(dim=2).mean(dim=1)


class AELoss(nn.Module):
    """Associative-embedding pull/push loss per image (MMPose 0.x ``AELoss``).

    Args:
        loss_type: ``'exp'`` (HigherHRNet configs) or ``'max'``.

    ``forward(tags, joints)``: ``tags`` ``(B, C, H, W)`` tag maps (``C = K`` with a tag map per
    joint), ``joints`` ``(B, M, K, 2)`` integer ``(index into the flattened (C, H, W) map,
    visible)`` from :func:`service.codecs.associative_embedding_targets.encode_tag_joints`.
    Returns ``(push, pull)``, each ``(B,)``. Raises ``ValueError`` for an unknown type, bad
    shapes or indices outside the map.
    """

    def __init__(self, loss_type: str = "exp") -> None:
        super().__init__()
        if loss_type not in ("exp", "max"):
            raise ValueError(f"unknown AE loss type {loss_type!r} (expected 'exp' or 'max')")
        self.loss_type = loss_type

    def forward(self, tags: Tensor, joints: Tensor) -> tuple[Tensor, Tensor]:
        if (
            tags.ndim != 4
            or joints.ndim != 4
            or joints.shape[-1] != 2
            or joints.shape[0] != tags.shape[0]
        ):
            raise ValueError(
                f"tags must be (B, C, H, W) and joints (B, M, K, 2); got "
                f"{tuple(tags.shape)} and {tuple(joints.shape)}"
            )
        b = tags.shape[0]
        flat = tags.reshape(b, -1)
        idx = joints[..., 0].long()
        vis = (joints[..., 1] > 0).to(flat.dtype)  # (B, M, K)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= flat.shape[1]):
            raise ValueError(f"tag indices must lie in [0, {flat.shape[1]})")
        g = torch.gather(flat, 1, idx.reshape(b, -1)).reshape(idx.shape)
        n = vis.sum(-1)  # joints per person
        valid = (n > 0).to(flat.dtype)
        n1 = n.clamp(min=1)
        mean = (g * vis).sum(-1) / n1  # (B, M)
        pull_p = ((g - mean[..., None]) ** 2 * vis).sum(-1) / n1
        t = valid.sum(-1)  # people per image
        pull = (pull_p * valid).sum(-1) / t.clamp(min=1)
        diff = mean[:, :, None] - mean[:, None, :]
        if self.loss_type == "exp":
            f = torch.exp(-(diff**2))
        else:
            f = (1 - diff.abs()).clamp(min=0)
        pair = valid[:, :, None] * valid[:, None, :]
        push = ((f * pair).sum(dim=(1, 2)) - t) / (t * (t - 1)).clamp(min=1) * 0.5
        push = torch.where(t >= 2, push, torch.zeros_like(push))
        return push, pull


class BottomUpLoss(nn.Module):
    """Multi-stage HigherHRNet loss (MMPose 0.x ``MultiLossFactory`` + the head's ``get_loss``).

    Args:
        num_joints: ``K``; the first ``K`` channels of a stage are heatmaps, the rest tags.
        with_heatmaps_loss, heatmaps_loss_factor: per stage (configs: [True, True], [1.0, 1.0]).
        with_ae_loss, push_loss_factor, pull_loss_factor: per stage (configs: [True, False],
            [0.001, 0.001], [0.001, 0.001]).
        ae_loss_type: ``'exp'`` or ``'max'``.
        supervise_empty: :class:`HeatmapLoss` option (True).

    ``forward(outputs, heatmaps, masks, joints)``: per-stage lists (lowest resolution first):
    outputs ``(B, K [+ tags], H_s, W_s)``, target heatmaps ``(B, K, H_s, W_s)``, masks
    ``(B, H_s, W_s)``, joints ``(B, M, K, 2)``. Returns ``{"heatmap_loss", "push_loss",
    "pull_loss", "loss"}`` scalars (``loss`` = their sum). Raises ``ValueError`` for list
    lengths that do not match the stages.
    """

    def __init__(
        self,
        num_joints: int,
        with_heatmaps_loss: Sequence[bool] = (True, True),
        heatmaps_loss_factor: Sequence[float] = (1.0, 1.0),
        with_ae_loss: Sequence[bool] = (True, False),
        push_loss_factor: Sequence[float] = (0.001, 0.001),
        pull_loss_factor: Sequence[float] = (0.001, 0.001),
        ae_loss_type: str = "exp",
        supervise_empty: bool = True,
    ) -> None:
        super().__init__()
        n = len(with_heatmaps_loss)
        if not (
            len(heatmaps_loss_factor)
            == len(with_ae_loss)
            == len(push_loss_factor)
            == len(pull_loss_factor)
            == n
        ):
            raise ValueError("every per-stage list needs one entry per stage")
        self.num_joints = num_joints
        self.with_heatmaps_loss = tuple(bool(v) for v in with_heatmaps_loss)
        self.heatmaps_loss_factor = tuple(float(v) for v in heatmaps_loss_factor)
        self.with_ae_loss = tuple(bool(v) for v in with_ae_loss)
        self.push_loss_factor = tuple(float(v) for v in push_loss_factor)
        self.pull_loss_factor = tuple(float(v) for v in pull_loss_factor)
        self.heatmap_loss = HeatmapLoss(supervise_empty)
        self.ae_loss = AELoss(ae_loss_type)

    def forward(
        self,
        outputs: Sequence[Tensor],
        heatmaps: Sequence[Tensor],
        masks: Sequence[Tensor],
        joints: Sequence[Tensor],
    ) -> dict[str, Tensor]:
        n = len(self.with_heatmaps_loss)
        if not len(outputs) == len(heatmaps) == len(masks) == len(joints) == n:
            raise ValueError(
                f"{n} stages expected; got {len(outputs)} outputs, "
                f"{len(heatmaps)} heatmaps, {len(masks)} masks, {len(joints)} joints"
            )
        zero = outputs[0].new_zeros(())
        hm_loss, push_loss, pull_loss = zero, zero, zero
        for s in range(n):
            offset = 0
            if self.with_heatmaps_loss[s]:
                offset = self.num_joints
                per_image = self.heatmap_loss(outputs[s][:, :offset], heatmaps[s], masks[s])
                hm_loss = hm_loss + (per_image * self.heatmaps_loss_factor[s]).mean(dim=0)
            if self.with_ae_loss[s]:
                push, pull = self.ae_loss(outputs[s][:, offset:], joints[s])
                push_loss = push_loss + (push * self.push_loss_factor[s]).mean(dim=0)
                pull_loss = pull_loss + (pull * self.pull_loss_factor[s]).mean(dim=0)
        return {
            "heatmap_loss": hm_loss,
            "push_loss": push_loss,
            "pull_loss": pull_loss,
            "loss": hm_loss + push_loss + pull_loss,
        }

    def batch_loss(
        self, outputs: Sequence[Tensor], batch: dict, device: torch.device | str = "cpu"
    ) -> Tensor:
        """The total loss of a :class:`training.bottomup_data.BottomUpDataset` batch, as a
        :data:`training.losses.BatchLoss`: ``outputs`` the model's stages (lowest resolution first,
        cast to float32); ``batch`` per-stage lists ``heatmaps`` ``(B, K, H_s, W_s)`` float32,
        ``masks`` ``(B, H_s, W_s)`` float32 and ``joints`` ``(B, M, K, 2)`` int64 (flat index in
        the stage map, visibility), moved to ``device``. Returns a scalar tensor."""
        dev = torch.device(device)

        def move(xs):
            return [x.to(dev, non_blocking=True) for x in xs]

        parts = self(
            [o.float() for o in outputs],
            move(batch["heatmaps"]),
            move(batch["masks"]),
            move(batch["joints"]),
        )
        return parts["loss"]
