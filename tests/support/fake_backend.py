"""One fake inference backend for the tests: numpy functions stand in for the models.

``FakeBackend(fn)`` runs ``fn`` for every model; ``FakeBackend(models={"name": fn, ...})`` one
function per model (``fn`` then answers the others). A function takes the single input array
``(N, ...)`` and returns either an array (returned under ``output``) or a ``{name: array}`` dict.
Every call is recorded as ``(model, input shape)`` in :attr:`calls` (:attr:`shapes`: the shapes
only), with the event-loop thread it ran on in :attr:`loop_threads`; :meth:`close` sets
:attr:`closed`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Optional

import numpy as np

from service.backends.base import Backend

ModelFn = Callable[[np.ndarray], "np.ndarray | dict[str, np.ndarray]"]


def conv_1x1_every_4th(num_classes: int, seed: int = 0, bias: bool = False) -> ModelFn:
    """A fixed random 1x1 convolution of every 4th pixel, ``(N, 3, h, w) -> (N, C, ceil(h/4),
    ceil(w/4))`` float32 (weights ``standard_normal((C, 3))`` of ``default_rng(seed)``, then a
    ``standard_normal(C)`` bias when ``bias``): a stand-in for a segmentation head."""
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((num_classes, 3)).astype(np.float32)
    b = rng.standard_normal(num_classes).astype(np.float32) if bias else None

    def fn(x: np.ndarray) -> np.ndarray:
        y = np.einsum("kc,nchw->nkhw", weight, x[:, :, ::4, ::4])
        if b is not None:
            y = y + b[None, :, None, None]
        return y.astype(np.float32)

    fn.weight, fn.bias = weight, b  # type: ignore[attr-defined]
    return fn


class FakeBackend(Backend):
    """Runs numpy functions as models and records every call (see the module docstring)."""

    name = "fake"

    def __init__(
        self,
        fn: ModelFn | None = None,
        output: str = "logits",
        models: dict[str, ModelFn] | None = None,
    ):
        self.fn, self.output, self.models = fn, output, dict(models or {})
        self.calls: list[tuple[str, tuple[int, ...]]] = []
        self.loop_threads: set[int] = set()
        self.closed = False

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        """The input shape of every call, in order."""
        return [shape for _, shape in self.calls]

    def record(self, model: str, x: np.ndarray) -> None:
        """Record a call of ``model`` on ``x`` (subclasses that answer themselves call it)."""
        self.calls.append((model, tuple(x.shape)))
        self.loop_threads.add(threading.get_ident())

    async def infer(self, model, inputs, outputs=None):
        (x,) = inputs.values()
        self.record(model, x)
        fn = self.models.get(model, self.fn)
        if fn is None:
            raise KeyError(f"the fake backend has no model '{model}'")
        y = fn(np.asarray(x))
        return y if isinstance(y, dict) else {self.output: y}

    async def ready(self, model=None):
        return True

    async def close(self):
        self.closed = True
