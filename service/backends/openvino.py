"""Embedded OpenVINO backend (the ``[openvino]`` extra): the same model repository entries as the
ONNX Runtime backend (``<repo>/<name>/1/model.onnx``, fp32 or int8 QDQ graphs), compiled for the
CPU by OpenVINO, with a per-model inference precision (f32, or bf16 on CPUs that have it).

The shared behaviour (per-model load errors, pool, batching, batch splitting, reload, card check)
is :class:`service.backends.embedded.EmbeddedBackend`'s; this module only opens and runs models.
OpenVINO is imported when this backend is made, never by the rest of the gateway.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..cards import ModelCard
from ..repository import ModelRepository
from .embedded import EmbeddedBackend, cpu_cores, has_dynamic_input

if TYPE_CHECKING:
    from ..batching import BatchConfig

#: values of ``HRNET_OPENVINO_PRECISION``: OpenVINO's ``INFERENCE_PRECISION_HINT``
PRECISIONS: tuple[str, ...] = ("f32", "bf16", "f16")
INSTALL_HINT = "pip install 'hrnet-serving[openvino]'"
#: runtime precisions of a compiled graph's nodes that mean quantised (int8) arithmetic
_INT8_TYPES = {"u8", "i8"}


def import_openvino() -> Any:
    """The ``openvino`` module; raises RuntimeError naming the extra to install when it is not."""
    try:
        import openvino
    except ImportError as exc:
        raise RuntimeError(
            f"the openvino backend needs the OpenVINO runtime, which is not installed: "
            f"{INSTALL_HINT}"
        ) from exc
    return openvino


@dataclass
class OpenVinoModel:
    """One compiled model: ``compiled`` (``openvino.CompiledModel``), its tensor names, and the
    ``precision`` it runs at (``"int8"`` when the compiled graph has quantised nodes, e.g. a QDQ
    entry, else the plugin's ``INFERENCE_PRECISION_HINT``, e.g. ``"bf16"``; ``float_precision``:
    that hint, which the non-quantised nodes use). Infer requests are per thread (an OpenVINO
    infer request runs one inference at a time)."""

    compiled: Any
    inputs: list[str]
    outputs: list[str]
    precision: str
    float_precision: str
    _local: threading.local = field(default_factory=threading.local, repr=False)

    def request(self) -> Any:
        """This thread's infer request (created on first use)."""
        req = getattr(self._local, "request", None)
        if req is None:
            req = self._local.request = self.compiled.create_infer_request()
        return req


def _type_name(t: Any) -> str:
    """``openvino.Type`` -> its short name (``bf16``, ``f32``, ...)."""
    return str(t.get_type_name()) if hasattr(t, "get_type_name") else str(t)


class OpenVinoBackend(EmbeddedBackend):
    """One OpenVINO ``CompiledModel`` per model of the repository, on ``device`` (``"CPU"``).

    ``precision``: the ``INFERENCE_PRECISION_HINT`` of every model (``"f32"`` default, ``"bf16"``;
    ``"f16"`` where the CPU has fp16 arithmetic, else the plugin picks its best, e.g. bf16), with
    per-model overrides ``precisions`` (``{name: precision}``). The hint is always set: without it
    OpenVINO picks bf16 by itself on CPUs that have it. Int8 QDQ graphs run their quantised nodes
    in int8 whatever the hint. :meth:`describe` reports what each compiled model runs at.

    Threads: ``concurrent_runs`` runs at once in the shared pool (0: one per core), each on
    ``threads`` OpenVINO threads (0: the cores / ``concurrent_runs``). A compiled model runs as
    many infer requests at once as it has streams, so a model with a fixed per-item input shape
    gets ``NUM_STREAMS`` = ``concurrent_runs`` and ``INFERENCE_NUM_THREADS`` = ``threads`` x
    ``concurrent_runs`` (OpenVINO splits the threads over the streams): with one stream, two
    requests of one model queue behind each other and half of a 2-core host idles (measured,
    HRNet-W32 int8 batch 4: 26.1 crops/s with 1 stream x 1 thread and two requests, 51.3 with 2
    streams x 1 thread). A model with a dynamic input (segmentation, bottom-up: one large image a
    run) gets one stream on every core, as the ONNX Runtime backend does. No core pinning
    (``ENABLE_CPU_PINNING`` off: the cores are shared with the gateway's own work). Batches are
    split above the card's ``max_batch_size``; errors and batching as
    :class:`service.backends.embedded.EmbeddedBackend`. Raises RuntimeError when OpenVINO is not
    installed and ValueError for an unknown precision.
    """

    name = "openvino"
    engine = "OpenVINO"

    def __init__(
        self,
        repository: ModelRepository,
        models: list[str] | None = None,
        *,
        precision: str = "f32",
        precisions: dict[str, str] | None = None,
        threads: int = 0,
        concurrent_runs: int = 1,
        batching: BatchConfig | None = None,
        device: str = "CPU",
    ):
        ov = import_openvino()
        for p in [precision, *(precisions or {}).values()]:
            if p not in PRECISIONS:
                raise ValueError(
                    f"unknown OpenVINO precision {p!r}: one of {', '.join(PRECISIONS)}"
                )
        super().__init__(repository, models, concurrent_runs=concurrent_runs, batching=batching)
        self.core = ov.Core()
        self.device = device
        self.precision = precision
        self.precisions = dict(precisions or {})
        self.threads = threads or max(1, cpu_cores() // self.concurrent_runs)

    def config_for(self, name: str, dynamic: bool = False) -> dict[str, Any]:
        """The ``compile_model`` properties of model ``name`` (OpenVINO 2026 property names);
        ``dynamic``: the model's input has a dynamic per-item shape (one stream, every core)."""
        streams = 1 if dynamic else self.concurrent_runs
        return {
            "INFERENCE_PRECISION_HINT": self.precisions.get(name, self.precision),
            "INFERENCE_NUM_THREADS": cpu_cores() if dynamic else self.threads * streams,
            "NUM_STREAMS": streams,
            "ENABLE_CPU_PINNING": False,
        }

    def _open(self, name: str, path: Path, card: ModelCard) -> OpenVinoModel:
        compiled = self.core.compile_model(
            self.core.read_model(str(path)),
            self.device,
            self.config_for(name, dynamic=has_dynamic_input(card)),
        )
        hint = _type_name(compiled.get_property("INFERENCE_PRECISION_HINT"))
        runtime = {
            str(op.get_rt_info()["runtimePrecision"].astype(str))
            for op in compiled.get_runtime_model().get_ops()
            if "runtimePrecision" in op.get_rt_info()
        }
        return OpenVinoModel(
            compiled,
            [i.get_any_name() for i in compiled.inputs],
            [o.get_any_name() for o in compiled.outputs],
            precision="int8" if runtime & _INT8_TYPES else hint,
            float_precision=hint,
        )

    def _input_names(self, session: OpenVinoModel) -> list[str]:
        return session.inputs

    def _output_names(self, session: OpenVinoModel) -> list[str]:
        return session.outputs

    def _run_chunk(
        self, session: OpenVinoModel, outputs: list[str], feed: dict[str, np.ndarray]
    ) -> list[np.ndarray]:
        result = session.request().infer(feed)
        # copies: the request's output tensors are reused by its next inference
        return [np.array(result[n], copy=True) for n in outputs]

    def describe(self, model: str) -> dict[str, Any]:
        """``{"precision": ..., "float_precision": ..., "device": ...}`` of a loaded model (see
        :class:`OpenVinoModel`); empty when it is not loaded."""
        m = self.sessions.get(model)
        if m is None:
            return {}
        return {
            "precision": m.precision,
            "float_precision": m.float_precision,
            "device": self.device,
        }
