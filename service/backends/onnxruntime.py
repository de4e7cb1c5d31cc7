"""Embedded ONNX Runtime backend: the gateway's default (CPU here; CUDA provider where present)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort

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


def _session_options(intra: int, inter: int, allow_spinning: bool) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = intra
    if inter:
        opts.inter_op_num_threads = inter
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
    return opts


def default_providers() -> list[str]:
    """CUDA first when this onnxruntime build has it, then CPU."""
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


class OnnxRuntimeBackend(Backend):
    """One ``InferenceSession`` per model of the repository, opened by :meth:`start`; a reload
    (:meth:`load_models`, :meth:`with_models`) makes a new backend object with new sessions for
    the changed models, sharing the rest and the worker threads.

    ``infer`` runs in one shared pool of ``concurrent_runs`` threads (ORT releases the GIL; 0: one
    per core this process may use, Triton's CPU ``instance_group`` count) so the event loop stays
    free and at most that many ORT runs compete for the cores. Sessions of models with a fixed
    per-item input shape (top-down crops, detector) use ``intra_op_threads`` threads each (0: the
    cores / ``concurrent_runs``, i.e. 1 by default: measured on 2 cores, two single-threaded
    PP-TinyPose runs at once give 1.2-1.9x the crops/s of one two-threaded run, HRNet-W32 1.05-1.1x);
    models with dynamic input sizes (segmentation, bottom-up: one large image a run, nothing to run
    beside it) use ``dynamic_intra_op_threads`` (0: every core). ``inter_op_threads``: 0 = ORT's
    default; ``allow_spinning=False`` makes idle ORT threads sleep instead of spin-waiting (for
    cores shared with other work). Batches above the card's ``max_batch_size`` are split and
    concatenated.
    With ``batching`` (a :class:`service.batching.BatchConfig`), models whose inputs have a fixed
    per-item shape go through a :class:`service.batching.DynamicBatcher` each (crops of concurrent
    requests share runs; bounded queue, 503 :class:`service.batching.Overloaded` when full);
    models with dynamic input dims (segmentation, bottom-up) run per call. Raises
    :class:`BackendUnavailable` (503) for a carded model whose ONNX file was missing or could not
    be loaded at start-up (logged; the other models load and serve), :class:`BackendError` for
    unknown models or ORT failures (e.g. a wrong input shape), which fail that request only.
    """

    name = "onnxruntime"

    def __init__(
        self,
        repository: ModelRepository,
        providers: list[str] | None = None,
        intra_op_threads: int = 0,
        models: list[str] | None = None,
        *,
        inter_op_threads: int = 0,
        concurrent_runs: int = 1,
        allow_spinning: bool = True,
        batching: BatchConfig | None = None,
        dynamic_intra_op_threads: int = 0,
    ):
        if concurrent_runs < 0:
            raise ValueError(
                f"concurrent_runs must be >= 0 (0: one per core), got {concurrent_runs}"
            )
        concurrent_runs = concurrent_runs or cpu_cores()
        self.concurrent_runs = concurrent_runs
        self.repository = repository
        self.providers = providers or default_providers()
        self.sessions: dict[str, ort.InferenceSession] = {}
        #: why a carded model has no session (ONNX file missing, or ONNX Runtime refused it)
        self.load_errors: dict[str, str] = {}
        self.batching = batching
        self._batchers: dict[str, DynamicBatcher] = {}
        self._opts = _session_options(
            intra_op_threads or max(1, cpu_cores() // concurrent_runs),
            inter_op_threads,
            allow_spinning,
        )
        self._opts_dynamic = _session_options(
            dynamic_intra_op_threads or cpu_cores(), inter_op_threads, allow_spinning
        )
        self._models = models
        self._pool = ThreadPoolExecutor(max_workers=concurrent_runs, thread_name_prefix="ort")

    async def start(self, cards: dict[str, ModelCard] | None = None) -> None:
        """Open one session per model (``<repository>/<name>/1/model.onnx``): the ``models``
        given to the constructor, else every carded model of this backend's repository (the
        lifespan's ``cards`` are that repository's; they are not needed here). A model whose ONNX
        file is missing or that ONNX Runtime cannot load is logged and recorded in
        :attr:`load_errors` (its requests get 503); the others load and serve."""
        names = self._models if self._models is not None else list(self.repository.cards)
        for name in names:
            path = self.repository.onnx_path(name)
            if not path.exists():
                log.warning("model %s has no %s; skipped by the embedded backend", name, path)
                self.load_errors[name] = f"{path} was missing at start-up"
                continue
            try:  # one unloadable model must not take the others (or the gateway) down
                self.sessions[name] = self._open(path, self.repository.cards.get(name))
            except Exception as exc:  # onnxruntime raises its own exception types
                log.error("model %s: ONNX Runtime cannot load %s: %s", name, path, exc)
                self.load_errors[name] = f"ONNX Runtime could not load it at start-up ({exc})"

    def _open(self, path, card: ModelCard | None) -> ort.InferenceSession:
        dynamic = card is not None and any(d < 0 for spec in card.inputs for d in spec.dims)
        opts = self._opts_dynamic if dynamic else self._opts
        return ort.InferenceSession(str(path), sess_options=opts, providers=self.providers)

    def _load(
        self, cards: dict[str, ModelCard]
    ) -> tuple[dict[str, ort.InferenceSession], dict[str, str]]:
        staged, refused = {}, {}
        for name, card in cards.items():
            path = self.repository.onnx_path(name)
            if not path.exists():
                refused[name] = f"{path} is missing"
                continue
            try:
                sess = self._open(path, card)
            except Exception as exc:  # onnxruntime's own exception types
                refused[name] = f"ONNX Runtime cannot load {path}: {exc}"
                continue
            have_in = {i.name for i in sess.get_inputs()}
            have_out = {o.name for o in sess.get_outputs()}
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

    async def load_models(
        self, cards: dict[str, ModelCard]
    ) -> tuple[dict[str, ort.InferenceSession], dict[str, str]]:
        """New sessions for ``cards`` (opened in a worker thread while serving goes on); an entry
        is refused when its ``model.onnx`` is missing, does not load, or lacks a tensor its card
        names."""
        return await asyncio.to_thread(self._load, cards)

    def with_models(
        self, repository: ModelRepository, staged: dict[str, ort.InferenceSession]
    ) -> OnnxRuntimeBackend:
        """A new backend serving ``repository`` (a reload's result): ``staged`` sessions (from
        :meth:`load_models`) for new or changed models, this backend's sessions for the rest;
        the thread pool, options and unchanged models' batchers are shared, so requests already
        running on this backend finish on their old sessions."""
        new = object.__new__(type(self))
        new.repository, new.providers, new._pool, new.batching, new._models = (
            repository,
            self.providers,
            self._pool,
            self.batching,
            self._models,
        )
        new._opts, new._opts_dynamic, new.concurrent_runs = (
            self._opts,
            self._opts_dynamic,
            self.concurrent_runs,
        )
        # unchanged models keep their batchers (same sessions); changed ones get new batchers
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

    def _run(
        self, model: str, inputs: dict[str, np.ndarray], outputs: list[str] | None
    ) -> dict[str, np.ndarray]:
        sess = self.sessions.get(model)
        if sess is None:
            if model in self.repository.cards:  # carded, but missing or unloadable at start-up
                log.error("model %s is not loaded: %s", model, self.load_errors.get(model, "?"))
                raise BackendUnavailable(
                    f"model '{model}' is not loaded in the ONNX Runtime backend",
                    retry_after_s=30.0,
                    model=model,
                )
            raise BackendError(
                f"model '{model}' is not loaded in the ONNX Runtime backend", model=model
            )
        names = outputs or [o.name for o in sess.get_outputs()]
        batch = next(iter(inputs.values())).shape[0]
        max_batch = self.repository.get(model).max_batch_size or batch
        chunks: list[list[np.ndarray]] = []
        try:
            for start in range(0, max(batch, 1), max(max_batch, 1)):
                feed = {
                    k: np.ascontiguousarray(v[start : start + max_batch]) for k, v in inputs.items()
                }
                chunks.append(sess.run(names, feed))
        except Exception as exc:  # onnxruntime raises its own exception types
            raise BackendError(
                f"ONNX Runtime failed on model '{model}': {exc}", model=model
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
            if card.max_batch_size < 1 or any(d < 0 for spec in card.inputs for d in spec.dims):
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
        ``max_batch_size``), so ORT's memory arena reaches its serving size at start-up (the RSS
        seen under load is the RSS seen idle). Dynamic-shape models (segmentation, bottom-up)
        are skipped: their sizes depend on the requests. Failures are logged, not raised (the
        model's requests will report them)."""
        for name in list(self.sessions):
            card = self.repository.cards.get(name)
            if card is None or any(d < 0 for spec in card.inputs for d in spec.dims):
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
