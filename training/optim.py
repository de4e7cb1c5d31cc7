"""Optimiser and learning-rate schedule of the top-down recipes (MMEngine semantics).

The MMPose configs chain two MMEngine schedulers:

* ``LinearLR(start_factor=f, begin=0, end=N, by_epoch=False)``: at iteration ``t`` the factor is
  ``f + (1 - f) * min(t, N - 1) / (N - 1)`` (MMEngine's ``total_iters = end - begin - 1``);
* ``MultiStepLR(milestones, gamma, by_epoch=True)``: ``gamma ** #{m in milestones : m <= epoch}``
  with the 0-based epoch.

Both multiply the base LR, so the LR at (iteration ``t``, epoch ``e``) is
``lr * warmup(t) * gamma ** drops(e)``; :class:`WarmupMultiStep` computes it in closed form
(one ``LambdaLR`` stepped every iteration), which makes resuming exact.

The segmentation recipes (MMSeg) use SGD with ``PolyLR`` by iteration: :func:`build_sgd`,
:class:`PolyFactor`.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence

import torch

__all__ = ["scaled_lr", "build_optimizer", "WarmupMultiStep", "build_sgd", "PolyFactor"]


def scaled_lr(base_lr: float, global_batch: int, base_batch_size: int) -> float:
    """MMEngine ``auto_scale_lr``: ``base_lr * global_batch / base_batch_size``."""
    return float(base_lr) * int(global_batch) / int(base_batch_size)


def build_optimizer(
    params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float = 0.0
) -> torch.optim.Adam:
    """``torch.optim.Adam(params, lr, weight_decay)`` (MMPose: ``optimizer=dict(type='Adam')``,
    betas (0.9, 0.999), eps 1e-8)."""
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


class WarmupMultiStep:
    """LR factor of iteration ``t`` (0-based, global) for ``iters_per_epoch`` iterations per
    epoch: linear warm-up over ``warmup_iters`` from ``warmup_factor`` then step decay by
    ``gamma`` at each epoch of ``milestones``. Callable, picklable (``LambdaLR`` state).

    ``style="mmcv"`` is MMPose 0.x's ``lr_config(warmup='linear')`` (MMCV ``LrUpdaterHook``):
    ``f + (1 - f) * t / N`` for ``t < N``, i.e. the same line reaching 1 at ``N`` instead of
    ``N - 1``.

    Raises ``ValueError`` for ``iters_per_epoch < 1`` or an unknown ``style``.
    """

    def __init__(
        self,
        iters_per_epoch: int,
        warmup_iters: int,
        warmup_factor: float,
        milestones: Sequence[int],
        gamma: float,
        style: str = "mmengine",
    ) -> None:
        if iters_per_epoch < 1:
            raise ValueError("iters_per_epoch must be >= 1")
        if style not in ("mmengine", "mmcv"):
            raise ValueError(f"style must be 'mmengine' or 'mmcv', got {style!r}")
        self.style = style
        self.iters_per_epoch = int(iters_per_epoch)
        self.warmup_iters = int(warmup_iters)
        self.warmup_factor = float(warmup_factor)
        self.milestones = sorted(int(m) for m in milestones)
        self.gamma = float(gamma)

    def __call__(self, t: int) -> float:
        n = self.warmup_iters - (1 if self.style == "mmengine" else 0)
        warm = 1.0
        if self.warmup_iters > 0:
            warm = (
                self.warmup_factor
                if n <= 0
                else self.warmup_factor + (1.0 - self.warmup_factor) * min(t, n) / n
            )
        epoch = t // self.iters_per_epoch
        return warm * self.gamma ** bisect.bisect_right(self.milestones, epoch)


def build_sgd(
    params: Iterable[torch.nn.Parameter],
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
) -> torch.optim.SGD:
    """``torch.optim.SGD(params, lr, momentum, weight_decay)`` (MMSeg schedules:
    ``optimizer=dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=0.0005)``, no nesterov,
    no dampening)."""
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


class PolyFactor:
    """LR factor of iteration ``t`` (0-based) for MMEngine ``PolyLR(eta_min, power, begin=0,
    end=total, by_epoch=False)`` on base LR ``base_lr``: with ``T = total - 1`` (MMEngine's
    ``total_iters = end - begin - 1``),
    ``lr(t) = (base_lr - eta_min) * (1 - min(t, T) / T) ** power + eta_min``, returned as
    ``lr(t) / base_lr`` for ``LambdaLR``. This is the closed form of MMEngine's recursive
    update (equal up to float rounding). Callable, picklable.

    Raises ``ValueError`` for ``total < 1`` or a non-positive ``base_lr``.
    """

    def __init__(
        self, base_lr: float, total: int, eta_min: float = 1e-4, power: float = 0.9
    ) -> None:
        if total < 1 or not base_lr > 0:
            raise ValueError("PolyFactor needs total >= 1 and base_lr > 0")
        self.base_lr = float(base_lr)
        self.total = int(total)
        self.eta_min = float(eta_min)
        self.power = float(power)

    def __call__(self, t: int) -> float:
        span = self.total - 1
        frac = 1.0 if span <= 0 else 1.0 - min(t, span) / span
        return ((self.base_lr - self.eta_min) * frac**self.power + self.eta_min) / self.base_lr
