"""The inference-backend interface every pipeline talks to.

A backend runs a named model from the model repository on a batch of input tensors and returns the
named output tensors. Two implementations: :class:`service.backends.onnxruntime.OnnxRuntimeBackend`
(embedded, the default) and the Triton gRPC backend. Pipelines (top-down pose, detector,
segmentation) only ever see this interface, so they run unchanged on either.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


class BackendError(RuntimeError):
    """Inference failed inside the backend (model error, bad tensor shape); ``model``: the model's
    name where known (named in the client's error message, the backend's own words are logged)."""

    def __init__(self, message: str, model: str | None = None):
        super().__init__(message)
        self.model = model


class BackendUnavailable(BackendError):
    """The backend cannot serve right now (e.g. Triton is down); callers answer 503 + Retry-After."""

    def __init__(self, message: str, retry_after_s: float = 1.0, model: str | None = None):
        super().__init__(message, model=model)
        self.retry_after_s = retry_after_s


class Backend(ABC):
    """Runs models by name.

    ``infer`` takes ``{input_name: array}`` with the batch as axis 0 (float32 NCHW images for every
    model in this project) and returns ``{output_name: array}`` with the same batch size. Batches
    larger than the model's ``max_batch_size`` are split by the implementation.
    """

    name: str = "backend"

    @abstractmethod
    async def infer(self, model: str, inputs: dict[str, np.ndarray],
                    outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        """Run ``model``; raises :class:`BackendError` or :class:`BackendUnavailable`."""

    @abstractmethod
    async def ready(self, model: str | None = None) -> bool:
        """True when the backend (and ``model`` if given) can serve."""

    async def close(self) -> None:  # pragma: no cover - default no-op
        """Release sessions/connections."""
