"""The inference-backend interface every pipeline talks to.

A backend runs a named model from the model repository on a batch of input tensors and returns the
named output tensors. Two implementations: :class:`service.backends.onnxruntime.OnnxRuntimeBackend`
(embedded, the default) and the Triton gRPC backend. Pipelines (top-down pose, detector,
segmentation) only ever see this interface, so they run unchanged on either.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from ..cards import ModelCard
    from ..repository import ModelRepository


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


class ReloadNotSupported(BackendError):
    """This backend cannot load model-repository changes while running (``/admin/reload``: 501)."""


class Backend(ABC):
    """Runs models by name.

    ``infer`` takes ``{input_name: array}`` with the batch as axis 0 (float32 NCHW images for every
    model in this project) and returns ``{output_name: array}`` with the same batch size. Batches
    larger than the model's ``max_batch_size`` are split by the implementation.
    """

    name: str = "backend"

    @abstractmethod
    async def infer(
        self, model: str, inputs: dict[str, np.ndarray], outputs: list[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Run ``model``; raises :class:`BackendError` or :class:`BackendUnavailable`."""

    @abstractmethod
    async def ready(self, model: str | None = None) -> bool:
        """True when the backend (and ``model`` if given) can serve."""

    def describe(self, model: str) -> dict[str, Any]:
        """Facts about how ``model`` runs here (e.g. the OpenVINO backend's precision), shown as
        its ``runtime`` in ``GET /models`` and logged at start-up; default: none (empty)."""
        return {}

    async def start(self, cards: dict[str, ModelCard] | None = None) -> None:  # noqa: B027 - optional hook
        """Open what serving needs (ONNX Runtime sessions, the Triton connection) for ``cards``
        (None: the backend's repository, where it has one). The app's lifespan calls it once
        before serving and calls :meth:`close` even when it raises. Default: nothing to open."""

    async def warm_up(self) -> None:  # noqa: B027 - optional hook
        """Run each model once at the largest batches it will see, as many at once as serving
        runs them (Triton's ``model_warmup``), so that memory pools and kernels are ready before
        the first request. The lifespan calls it after :meth:`start`. Default: nothing."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release sessions/connections (also after a failed :meth:`start`). Default: nothing."""

    async def load_models(
        self, cards: dict[str, ModelCard]
    ) -> tuple[dict[str, Any], dict[str, str]]:
        """Load the models of ``cards`` (new or changed repository entries) beside the running
        ones, changing nothing that serves: returns ``(staged, refused)``, the loaded models for
        :meth:`with_models` and, by name, why each model that could not be loaded was refused.
        Raises :class:`ReloadNotSupported` where the backend cannot (the default)."""
        raise ReloadNotSupported(
            f"the {self.name} backend does not reload models while running; restart the gateway"
        )

    def with_models(self, repository: ModelRepository, staged: dict[str, Any]) -> Backend:
        """A new backend serving ``repository``: the ``staged`` models of :meth:`load_models`,
        this one's for the other names (models no longer in ``repository`` are dropped). This one
        keeps serving the requests that hold it; both share their worker threads, so only the
        newest one is ever closed."""
        raise ReloadNotSupported(f"the {self.name} backend does not reload models while running")
