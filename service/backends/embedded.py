"""What every in-process (embedded) inference backend shares: ONNX Runtime and OpenVINO.

:class:`EmbeddedBackend` keeps one loaded model per repository entry
(``<repo>/<name>/1/model.onnx``), the per-model load errors (503 for that model, the others serve),
one shared worker pool, the dynamic batchers (:mod:`service.batching`), the split of batches above
the card's ``max_batch_size``, and hot reload (:meth:`load_models` / :meth:`with_models`) with the
card / tensor-name check, applied at start-up as on reload. An engine subclass only says how to
open a model file (``_open``), list its input and output names (``_input_names``,
``_output_names``) and run it on one chunk (``_run_chunk``).
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import logging
import os
from abc import abstractmethod
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..cards import ModelCard
from ..dtypes import NUMPY_DTYPES
from ..repository import ModelRepository
from .base import Backend, BackendError, BackendUnavailable

if TYPE_CHECKING:
    from ..batching import BatchConfig, DynamicBatcher

log = logging.getLogger(__name__)


def cpu_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS / Windows
        return os.cpu_count() or 1


def has_dynamic_input(card: ModelCard) -> bool:
    """True when an input of ``card`` has a dynamic per-item dim (-1: segmentation, bottom-up:
    one large image a run); such models are never batched or warmed up."""
    return any(d < 0 for spec in card.inputs for d in spec.dims)


class EmbeddedBackend(Backend):
    """Models of one repository run in this process by an inference engine (see the module
    docstring); ``engine`` names it in messages ("ONNX Runtime", "OpenVINO").

    ``models``: the names to load (default: every carded model of ``repository``).
    ``concurrent_runs``: worker threads of the one shared pool (0: one per core, Triton's CPU
    ``instance_group`` count), i.e. engine runs at once; the engine's own threads per run of a
    fixed-shape model should be the cores / ``concurrent_runs`` (no oversubscription). With ``batching`` (:class:`service.batching.BatchConfig`), models whose
    inputs have a fixed per-item shape go through one :class:`service.batching.DynamicBatcher`
    each; models with dynamic input dims (segmentation, bottom-up) run per call.

    :attr:`sessions` maps a model name to the engine's loaded model; :attr:`load_errors` says,
    by name, why a carded model has none. ``infer`` raises :class:`BackendUnavailable` (503,
    Retry-After 30 s) for a carded model that is not loaded, :class:`BackendError` for a model
    that is not carded or an engine failure (that request only).
    """

    engine = "embedded"

    def __init__(
        self,
        repository: ModelRepository,
        models: list[str] | None = None,
        *,
        concurrent_runs: int = 1,
        batching: BatchConfig | None = None,
    ):
        if concurrent_runs < 0:
            raise ValueError(
                f"concurrent_runs must be >= 0 (0: one per core), got {concurrent_runs}"
            )
        concurrent_runs = concurrent_runs or cpu_cores()
        self.repository = repository
        self.sessions: dict[str, Any] = {}
        #: why a carded model has no loaded model (file missing, refused by the engine or its card)
        self.load_errors: dict[str, str] = {}
        self.batching = batching
        self.concurrent_runs = concurrent_runs
        self._batchers: dict[str, DynamicBatcher] = {}
        self._models = models
        self._pool = ThreadPoolExecutor(max_workers=concurrent_runs, thread_name_prefix=self.name)

    # ------------------------------------------------------------------ the engine's part

    @abstractmethod
    def _open(self, name: str, path: Path, card: ModelCard) -> Any:
        """Load the ONNX file ``path`` of model ``name`` (described by ``card``); any exception =
        the engine refused it."""

    @abstractmethod
    def _input_names(self, session: Any) -> list[str]:
        """The input tensor names of a loaded model."""

    @abstractmethod
    def _output_names(self, session: Any) -> list[str]:
        """The output tensor names of a loaded model, in the model's order."""

    @abstractmethod
    def _run_chunk(
        self, session: Any, outputs: list[str], feed: dict[str, np.ndarray]
    ) -> list[np.ndarray]:
        """Run a loaded model on ``feed`` (batch <= max_batch_size, C-contiguous arrays); returns
        the ``outputs`` arrays in that order. Any exception = an engine failure."""

    # ------------------------------------------------------------------ loading

    def _load(self, cards: dict[str, ModelCard]) -> tuple[dict[str, Any], dict[str, str]]:
        """Open ``cards``' models: ``(loaded, refused)``; an entry is refused when its
        ``model.onnx`` is missing, the engine cannot load it, or it lacks a tensor its card names."""
        staged: dict[str, Any] = {}
        refused: dict[str, str] = {}
        for name, card in cards.items():
            path = self.repository.onnx_path(name)
            if not path.exists():
                refused[name] = f"{path} is missing"
                continue
            try:  # one unloadable model must not take the others (or the gateway) down
                sess = self._open(name, path, card)
            except Exception as exc:  # the engines raise their own exception types
                refused[name] = f"{self.engine} cannot load {path}: {exc}"
                continue
            have_in, have_out = set(self._input_names(sess)), set(self._output_names(sess))
            missing = [t.name for t in card.inputs if t.name not in have_in] + [
                t.name for t in card.outputs if t.name not in have_out
            ]
            if missing:
                refused[name] = (
                    f"{path} lacks the tensors {', '.join(missing)} named by its card "
                    f"(inputs {sorted(have_in)}, outputs {sorted(have_out)})"
                )
                continue
            staged[name] = sess
        return staged, refused

    async def start(self, cards: dict[str, ModelCard] | None = None) -> None:
        """Load the ``models`` given to the constructor, else every carded model of this
        backend's repository (the lifespan's ``cards`` are that repository's), with the same
        checks as a reload (:meth:`_load`). A refused model is logged and recorded in
        :attr:`load_errors` (its requests get 503); the others load and serve."""
        names = self._models if self._models is not None else list(self.repository.cards)
        known = {n: self.repository.cards[n] for n in names if n in self.repository.cards}
        for name in names:
            if name not in known:
                self.load_errors[name] = "no model card in the repository"
        staged, refused = self._load(known)
        self.sessions.update(staged)
        for name, why in refused.items():
            log.error("model %s not loaded by the %s backend: %s", name, self.name, why)
            self.load_errors[name] = f"refused at start-up: {why}"
        for name in staged:
            facts = self.describe(name)
            if facts:
                log.info("model %s loaded by the %s backend: %s", name, self.name, facts)

    async def load_models(
        self, cards: dict[str, ModelCard]
    ) -> tuple[dict[str, Any], dict[str, str]]:
        """New loaded models for ``cards`` (opened in a worker thread while serving goes on),
        refused as at start-up (:meth:`_load`)."""
        return await asyncio.to_thread(self._load, cards)

    def with_models(self, repository: ModelRepository, staged: dict[str, Any]) -> EmbeddedBackend:
        """A new backend serving ``repository`` (a reload's result): ``staged`` models (from
        :meth:`load_models`) for new or changed entries, this backend's for the rest; the pool,
        engine options and unchanged models' batchers are shared, so requests already running on
        this backend finish on their old models."""
        new = copy.copy(self)  # shares the pool and the engine's options
        new.repository = repository
        # unchanged models keep their batchers (same models); changed ones get new batchers
        new._batchers = {
            n: b for n, b in self._batchers.items() if n in repository.cards and n not in staged
        }
        new.sessions = {n: s for n, s in self.sessions.items() if n in repository.cards}
        new.sessions.update(staged)
        new.load_errors = {
            n: e
            for n, e in self.load_errors.items()
            if n in repository.cards and n not in new.sessions
        }
        return new

    # ------------------------------------------------------------------ running

    def _run(
        self, model: str, inputs: dict[str, np.ndarray], outputs: list[str] | None
    ) -> dict[str, np.ndarray]:
        """Run ``model`` on ``inputs`` (batch axis 0) in the calling thread, in chunks of the
        card's ``max_batch_size``; returns ``{output name: array}`` concatenated over chunks."""
        sess = self.sessions.get(model)
        if sess is None:
            if model in self.repository.cards:  # carded, but refused at start-up
                log.error("model %s is not loaded: %s", model, self.load_errors.get(model, "?"))
                raise BackendUnavailable(
                    f"model '{model}' is not loaded in the {self.engine} backend",
                    retry_after_s=30.0,
                    model=model,
                )
            raise BackendError(
                f"model '{model}' is not loaded in the {self.engine} backend", model=model
            )
        names = outputs or self._output_names(sess)
        batch = next(iter(inputs.values())).shape[0]
        max_batch = self.repository.get(model).max_batch_size or batch
        chunks: list[list[np.ndarray]] = []
        try:
            for start in range(0, max(batch, 1), max(max_batch, 1)):
                feed = {
                    k: np.ascontiguousarray(v[start : start + max_batch]) for k, v in inputs.items()
                }
                chunks.append(self._run_chunk(sess, names, feed))
        except Exception as exc:  # the engines raise their own exception types
            raise BackendError(
                f"{self.engine} failed on model '{model}': {exc}", model=model
            ) from exc
        if len(chunks) == 1:
            return dict(zip(names, chunks[0]))
        return {n: np.concatenate([c[i] for c in chunks], axis=0) for i, n in enumerate(names)}

    def batcher(self, model: str) -> DynamicBatcher | None:
        """The dynamic batcher of ``model`` (created on first use); None when batching is off, the
        model is not loaded or its input has a dynamic per-item shape."""
        if self.batching is None or model not in self.sessions:
            return None
        b = self._batchers.get(model)
        if b is None:
            card = self.repository.get(model)
            if card.max_batch_size < 1 or has_dynamic_input(card):
                return None
            from ..batching import DynamicBatcher

            config = self.batching
            if config.instances == 0:  # one batch in flight per concurrent run
                config = dataclasses.replace(config, instances=self.concurrent_runs)
            b = DynamicBatcher(
                model,
                lambda inputs, outputs: self._run(model, inputs, outputs),
                self._pool,
                card.max_batch_size,
                config,
            )
            self._batchers[model] = b
        return b

    async def infer(
        self, model: str, inputs: dict[str, np.ndarray], outputs: list[str] | None = None
    ) -> dict[str, np.ndarray]:
        b = self.batcher(model)
        if b is not None:
            return await b.submit(inputs, outputs)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._run, model, inputs, outputs)

    async def warm_up(self) -> None:
        """Each loaded model with a fixed per-item input shape runs ``concurrent_runs`` batches
        of zeros at once, each of its largest run size (its batcher's cap, else the card's
        ``max_batch_size``), so the engine's memory pools reach their serving size at start-up
        (the RSS seen under load is the RSS seen idle). Dynamic-shape models (segmentation,
        bottom-up) are skipped: their sizes depend on the requests. Failures are logged, not
        raised (the model's requests will report them)."""
        for name in list(self.sessions):
            card = self.repository.cards.get(name)
            if card is None or has_dynamic_input(card):
                continue
            b = self.batcher(name)
            n = b.max_batch_size if b is not None else max(1, card.max_batch_size)
            feed: dict[str, np.ndarray] = {
                spec.name: np.zeros((n, *spec.dims), dtype=NUMPY_DTYPES[spec.dtype])
                for spec in card.inputs
            }
            try:
                await asyncio.gather(*(self.infer(name, feed) for _ in range(self.concurrent_runs)))
            except Exception as exc:  # logged; serving reports it per request
                log.warning("warm-up of model %s failed: %s", name, exc)

    async def ready(self, model: str | None = None) -> bool:
        return bool(self.sessions) if model is None else model in self.sessions

    async def close(self) -> None:
        for b in self._batchers.values():
            await b.close()
        self._batchers.clear()
        self._pool.shutdown(wait=False)
        self.sessions.clear()
