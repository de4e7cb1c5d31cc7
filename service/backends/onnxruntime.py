"""Embedded ONNX Runtime backend: the gateway's default (CPU here; CUDA provider where present)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort

from ..cards import ModelCard
from ..repository import ModelRepository
from .embedded import EmbeddedBackend, cpu_cores, has_dynamic_input

if TYPE_CHECKING:
    from ..batching import BatchConfig

__all__ = ["OnnxRuntimeBackend", "default_providers"]


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


class OnnxRuntimeBackend(EmbeddedBackend):
    """One ``InferenceSession`` per model of the repository (the shared behaviour, reload,
    batching and errors: :class:`service.backends.embedded.EmbeddedBackend`).

    ``infer`` runs in one shared pool of ``concurrent_runs`` threads (ORT releases the GIL; 0: one
    per core this process may use) so the event loop stays free and at most that many ORT runs
    compete for the cores. Sessions of models with a fixed per-item input shape (top-down crops,
    detector) use ``intra_op_threads`` threads each (0: the cores / ``concurrent_runs``, i.e. 1 by
    default: measured on 2 cores, two single-threaded PP-TinyPose runs at once give 1.2-1.9x the
    crops/s of one two-threaded run, HRNet-W32 1.05-1.1x); models with dynamic input sizes
    (segmentation, bottom-up: one large image a run, nothing to run beside it) use
    ``dynamic_intra_op_threads`` (0: every core). ``inter_op_threads``: 0 = ORT's default;
    ``allow_spinning=False`` makes idle ORT threads sleep instead of spin-waiting (for cores
    shared with other work).
    """

    name = "onnxruntime"
    engine = "ONNX Runtime"

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
        super().__init__(repository, models, concurrent_runs=concurrent_runs, batching=batching)
        self.providers = providers or default_providers()
        self._opts = _session_options(
            intra_op_threads or max(1, cpu_cores() // self.concurrent_runs),
            inter_op_threads,
            allow_spinning,
        )
        self._opts_dynamic = _session_options(
            dynamic_intra_op_threads or cpu_cores(), inter_op_threads, allow_spinning
        )

    def _open(self, name: str, path: Path, card: ModelCard) -> ort.InferenceSession:
        opts = self._opts_dynamic if has_dynamic_input(card) else self._opts
        return ort.InferenceSession(str(path), sess_options=opts, providers=self.providers)

    def _input_names(self, session: ort.InferenceSession) -> list[str]:
        return [i.name for i in session.get_inputs()]

    def _output_names(self, session: ort.InferenceSession) -> list[str]:
        return [o.name for o in session.get_outputs()]

    def _run_chunk(
        self, session: ort.InferenceSession, outputs: list[str], feed: dict[str, np.ndarray]
    ) -> list[np.ndarray]:
        return session.run(outputs, feed)
