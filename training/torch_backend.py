"""One PyTorch model behind the gateway's :class:`~service.backends.base.Backend` interface, so
training-time validation runs the gateway's own pipelines (preprocess, decode, grouping,
segmentation post-processing) on the model being trained, without an ONNX export."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from service.backends.base import Backend

__all__ = ["TorchBackend"]


class TorchBackend(Backend):
    """``infer`` feeds the card's single float32 NCHW input to ``model`` (no gradients, the
    model's current train/eval mode) in chunks of at most ``max_batch`` items and returns its
    outputs as float32 numpy arrays under ``output_names``, in the order the model returns them
    (a single tensor counts as one output). Shapes are the model's (e.g. ``(N, K, H/4, W/4)``
    heatmaps, ``(N, C, h, w)`` logits). Serves whatever model name it is asked for.

    Raises ``ValueError`` when the model returns a different number of outputs than
    ``output_names``."""

    name = "torch"

    def __init__(
        self,
        model: nn.Module,
        output_names: Sequence[str],
        device: str | torch.device = "cpu",
        max_batch: int = 4,
    ) -> None:
        self.model, self.output_names = model, list(output_names)
        self.device, self.max_batch = torch.device(device), max(1, int(max_batch))

    def _run(self, x: np.ndarray) -> list[np.ndarray]:
        out = self.model(torch.from_numpy(np.ascontiguousarray(x)).to(self.device))
        outs = [out] if isinstance(out, torch.Tensor) else list(out)
        if len(outs) != len(self.output_names):
            raise ValueError(f"model returned {len(outs)} outputs, expected {self.output_names}")
        return [o.float().cpu().numpy() for o in outs]

    async def infer(
        self, model: str, inputs: dict[str, np.ndarray], outputs: list[str] | None = None
    ) -> dict[str, np.ndarray]:
        (x,) = inputs.values()
        with torch.no_grad():
            chunks = [
                self._run(x[i : i + self.max_batch]) for i in range(0, len(x), self.max_batch)
            ]
        return {n: np.concatenate([c[k] for c in chunks]) for k, n in enumerate(self.output_names)}

    async def ready(self, model: str | None = None) -> bool:
        return True
