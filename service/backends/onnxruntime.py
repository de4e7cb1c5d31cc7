"""Embedded ONNX Runtime backend: the gateway's default (CPU here; CUDA provider where present)."""
from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnxruntime as ort

from ..cards import ModelCard
from ..repository import ModelRepository
from .base import Backend, BackendError, BackendUnavailable

log = logging.getLogger(__name__)


def default_providers() -> list[str]:
    """CUDA first when this onnxruntime build has it, then CPU."""
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


class OnnxRuntimeBackend(Backend):
    """One ``InferenceSession`` per model of the repository, created at start-up; a reload
    (:meth:`load_models`, :meth:`with_models`) makes a new backend object with new sessions for
    the changed models, sharing the rest and the worker threads.

    ``infer`` runs in a worker thread (ORT releases the GIL) so the event loop stays free;
    batches above the card's ``max_batch_size`` are split and concatenated. Raises
    :class:`BackendUnavailable` (503) for a carded model whose ONNX file was missing or could not
    be loaded at start-up (logged; the other models load and serve), :class:`BackendError` for
    unknown models or ORT failures (e.g. a wrong input shape), which fail that request only.
    """

    name = "onnxruntime"

    def __init__(self, repository: ModelRepository, providers: list[str] | None = None,
                 intra_op_threads: int = 0, models: list[str] | None = None):
        self.repository = repository
        self.providers = providers or default_providers()
        self.sessions: dict[str, ort.InferenceSession] = {}
        #: why a carded model has no session (ONNX file missing, or ONNX Runtime refused it)
        self.load_errors: dict[str, str] = {}
        self._opts = ort.SessionOptions()
        if intra_op_threads:
            self._opts.intra_op_num_threads = intra_op_threads
        for name in (models if models is not None else list(repository.cards)):
            path = repository.onnx_path(name)
            if not path.exists():
                log.warning("model %s has no %s; skipped by the embedded backend", name, path)
                self.load_errors[name] = f"{path} was missing at start-up"
                continue
            try:  # one unloadable model must not take the others (or the gateway) down
                self.sessions[name] = self._open(path)
            except Exception as exc:  # onnxruntime raises its own exception types
                log.error("model %s: ONNX Runtime cannot load %s: %s", name, path, exc)
                self.load_errors[name] = f"ONNX Runtime could not load it at start-up ({exc})"
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="ort")

    def _open(self, path) -> ort.InferenceSession:
        return ort.InferenceSession(str(path), sess_options=self._opts, providers=self.providers)

    def _load(self, cards: dict[str, ModelCard]) -> tuple[dict[str, ort.InferenceSession],
                                                          dict[str, str]]:
        staged, refused = {}, {}
        for name, card in cards.items():
            path = self.repository.onnx_path(name)
            if not path.exists():
                refused[name] = f"{path} is missing"
                continue
            try:
                sess = self._open(path)
            except Exception as exc:  # onnxruntime's own exception types
                refused[name] = f"ONNX Runtime cannot load {path}: {exc}"
                continue
            have_in = {i.name for i in sess.get_inputs()}
            have_out = {o.name for o in sess.get_outputs()}
            missing = ([t.name for t in card.inputs if t.name not in have_in]
                       + [t.name for t in card.outputs if t.name not in have_out])
            if missing:
                refused[name] = (f"{path} lacks the tensors {', '.join(missing)} named by its card "
                                 f"(inputs {sorted(have_in)}, outputs {sorted(have_out)})")
                continue
            staged[name] = sess
        return staged, refused

    async def load_models(self, cards: dict[str, ModelCard]) -> tuple[dict[str, ort.InferenceSession],
                                                                       dict[str, str]]:
        """New sessions for ``cards`` (opened in a worker thread while serving goes on); an entry
        is refused when its ``model.onnx`` is missing, does not load, or lacks a tensor its card
        names."""
        return await asyncio.to_thread(self._load, cards)

    def with_models(self, repository: ModelRepository,
                    staged: dict[str, ort.InferenceSession]) -> "OnnxRuntimeBackend":
        new = object.__new__(type(self))
        new.repository, new.providers, new._opts, new._pool = (
            repository, self.providers, self._opts, self._pool)
        new.sessions = {n: s for n, s in self.sessions.items() if n in repository.cards}
        new.sessions.update(staged)
        new.load_errors = {n: e for n, e in self.load_errors.items()
                           if n in repository.cards and n not in new.sessions}
        return new

    def _run(self, model: str, inputs: dict[str, np.ndarray],
             outputs: list[str] | None) -> dict[str, np.ndarray]:
        sess = self.sessions.get(model)
        if sess is None:
            if model in self.repository.cards:  # carded, but missing or unloadable at start-up
                log.error("model %s is not loaded: %s", model, self.load_errors.get(model, "?"))
                raise BackendUnavailable(f"model '{model}' is not loaded in the ONNX Runtime "
                                         f"backend", retry_after_s=30.0, model=model)
            raise BackendError(f"model '{model}' is not loaded in the ONNX Runtime backend",
                               model=model)
        names = outputs or [o.name for o in sess.get_outputs()]
        batch = next(iter(inputs.values())).shape[0]
        max_batch = self.repository.get(model).max_batch_size or batch
        chunks: list[list[np.ndarray]] = []
        try:
            for start in range(0, max(batch, 1), max(max_batch, 1)):
                feed = {k: np.ascontiguousarray(v[start:start + max_batch]) for k, v in inputs.items()}
                chunks.append(sess.run(names, feed))
        except Exception as exc:  # onnxruntime raises its own exception types
            raise BackendError(f"ONNX Runtime failed on model '{model}': {exc}",
                               model=model) from exc
        if len(chunks) == 1:
            return dict(zip(names, chunks[0]))
        return {n: np.concatenate([c[i] for c in chunks], axis=0) for i, n in enumerate(names)}

    async def infer(self, model: str, inputs: dict[str, np.ndarray],
                    outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._run, model, inputs, outputs)

    async def ready(self, model: str | None = None) -> bool:
        return bool(self.sessions) if model is None else model in self.sessions

    async def close(self) -> None:
        self._pool.shutdown(wait=False)
        self.sessions.clear()
