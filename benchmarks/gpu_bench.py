"""GPU figures for the HRNet family: throughput, latency, peak memory and reduced-precision accuracy.

One command, on any CUDA host (or ``--smoke`` on a CPU, the CI check that the script works)::

    python -m benchmarks.gpu_bench [--smoke] [--out FILE.json] [--models ...] [--engines ...]
                                   [--batches ...] [--budget-s S] [--checkpoint KEY=PATH ...]

Models (:data:`MODELS`, most important first) come from :func:`training.models.create_model` with
the registry names, random fixed-seed weights (``seed=0``, BatchNorm statistics set by
:func:`export.onnx_export.calibrate_batchnorm`) unless ``--checkpoint KEY=PATH`` gives real ones.
Inputs are real photographs from ``../shared`` (``HRNET_SHARED_DIR``):

* top-down pose: person crops cut with the gateway's own top-down preprocessing
  (:func:`service.geometry.bbox_xyxy2cs` padding 1.25, :func:`~service.geometry.fix_aspect_ratio`,
  :func:`~service.geometry.crop_persons`, :func:`service.pipelines.common.to_input_tensor`) from
  the ground-truth person boxes of ``mmpose_tests/coco`` and ``coco_mini`` (as ``hrnet-eval``
  selects them, :func:`benchmarks.eval_data.build_pose_items`); a batch larger than the number of
  crops repeats them in order;
* bottom-up pose (HigherHRNet, when :func:`create_model` knows the name): the ``samples/`` photos
  resized to the input size;
* segmentation: ``cityscapes_sample/demo.png`` and the Cityscapes ``leftImg8bit`` frame resized
  to the input size (``cv2.INTER_LINEAR``), alternating to fill the batch.

Engines (:data:`ENGINES`; each one is tried, and a failing or unavailable one gives an ``error`` /
``skipped`` row while the run goes on):

* ``eager_fp32``: PyTorch eager, strict fp32 (TF32 off) — also the accuracy reference;
* ``eager_tf32``: eager fp32 with TF32 convolutions/matmuls (PyTorch's cuDNN default), CUDA only;
* ``eager_fp16_cl`` / ``eager_bf16_cl``: ``torch.autocast`` fp16 / bf16 with channels-last
  weights and input (bf16 also on the CPU);
* ``cudagraph_fp16_cl``: the fp16 channels-last forward captured once per batch size in a CUDA
  graph on static buffers, timed by replay;
* ``compile_fp16_cl``: ``torch.compile`` (inductor, default mode, ``dynamic=False``: one compile
  per batch size, not timed) under fp16 autocast, channels-last;
* ``ort_cpu_fp32`` / ``ort_cuda_fp32`` / ``ort_trt_fp16``: ONNX Runtime on the ONNX graph written by
  :func:`export.onnx_export.export_onnx` (dynamic batch), with the CPU, CUDA (IO binding on device
  buffers) or TensorRT (fp16) execution provider; a provider missing from
  ``onnxruntime.get_available_providers()`` (the plain ``onnxruntime`` wheel has CPU only) gives a
  ``skipped`` row;
* ``tensorrt_fp16``: a TensorRT engine built by :func:`export.triton_config.build_tensorrt_plan`
  (fp16, batch 1..max) and run with the ``tensorrt`` Python API; ``skipped`` where ``tensorrt`` is
  not importable.

Per row (model x engine x batch): median batch latency (ms) over ``--iters`` timed iterations after
``--warmup`` untimed ones (CUDA events around each iteration; ``time.perf_counter`` on the CPU),
throughput = batch / median latency (crops/s for top-down pose, images/s otherwise), p90 latency,
peak memory (``torch.cuda.max_memory_allocated``, reset per row; torch engines only), set-up seconds
(export, engine build, graph capture or compile plus the first run), ``gmac_per_item`` (the
network's multiply-accumulates per crop/image, ``torch.utils.flop_counter``) and, for every engine but
``eager_fp32``, its accuracy against ``eager_fp32`` on the same input: ``max_abs_err`` (heatmap or
logit units), ``ref_max_abs`` (largest reference magnitude), ``argmax_agree_pct`` (pose: the
heatmap maximum, :func:`service.codecs.refine.get_heatmap_maximum`, at the same pixel, over every
crop and keypoint) or ``label_agree_pct`` (segmentation: the same class argmax per output pixel).
The JSON (``--out``) is rewritten after every row, so a run killed part-way leaves what it
measured; ``--budget-s`` turns the remaining rows into ``skipped`` rows once that many seconds have
passed.

Imports: torch, numpy, OpenCV, onnx/onnxscript/onnxruntime (ONNX engines), and the project's
torch-side and numpy modules; no FastAPI, uvicorn, httpx or pydantic (``tensorrt_fp16`` alone
needs pydantic, for the model card that :func:`build_tensorrt_plan` takes).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as _dt
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal, cast

import numpy as np
import torch

from benchmarks.eval_io import atomic_write_json
from export.paths import default_shared_dir

# --------------------------------------------------------------------------------------------
# what is measured
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchModel:
    """One benchmarked network.

    ``key``: short name in the table; ``registry_name``: the :func:`create_model` name;
    ``kind``: ``"topdown"``, ``"bottomup"`` or ``"segmentation"``; ``size_hw`` / ``smoke_hw``:
    network input ``(height, width)`` in pixels for the full run / ``--smoke``; ``batches`` /
    ``smoke_batches``: default batch sizes.
    """

    key: str
    registry_name: str
    kind: str
    size_hw: tuple[int, int]
    smoke_hw: tuple[int, int]
    batches: tuple[int, ...]
    smoke_batches: tuple[int, ...] = (1, 2)

    @property
    def unit(self) -> str:
        """``"crops/s"`` (top-down pose) or ``"images/s"``."""
        return "crops/s" if self.kind == "topdown" else "images/s"


POSE_BATCHES = (1, 8, 32, 64)
SEG_BATCHES = (1, 2)

#: In order of importance: the issue's goals first (W32 256x192, FCN hr18s 1024x2048).
MODELS: dict[str, BenchModel] = {
    m.key: m
    for m in (
        BenchModel(
            "hrnet_w32_256x192",
            "td-hm_hrnet-w32_8xb64-210e_coco-256x192",
            "topdown",
            (256, 192),
            (64, 64),
            POSE_BATCHES,
        ),
        BenchModel(
            "fcn_hr18s_1024x2048",
            "fcn_hr18s_4xb2-80k_cityscapes-512x1024",
            "segmentation",
            (1024, 2048),
            (64, 128),
            SEG_BATCHES,
        ),
        BenchModel(
            "hrnet_w48_384x288",
            "td-hm_hrnet-w48_8xb32-210e_coco-384x288",
            "topdown",
            (384, 288),
            (64, 64),
            POSE_BATCHES,
        ),
        BenchModel(
            "higher_hrnet_w32_512",
            "higher_hrnet32_coco_512x512",
            "bottomup",
            (512, 512),
            (64, 64),
            POSE_BATCHES,
        ),
        BenchModel(
            "fcn_hr48_1024x2048",
            "fcn_hr48_4xb2-80k_cityscapes-512x1024",
            "segmentation",
            (1024, 2048),
            (64, 128),
            SEG_BATCHES,
        ),
    )
}

#: Every engine, cheapest to set up first (so a time budget spends itself on the fast ones).
ENGINES = (
    "eager_fp32",
    "eager_tf32",
    "eager_fp16_cl",
    "eager_bf16_cl",
    "cudagraph_fp16_cl",
    "ort_cpu_fp32",
    "ort_cuda_fp32",
    "compile_fp16_cl",
    "ort_trt_fp16",
    "tensorrt_fp16",
)
#: Engines that run on a CPU (``--smoke`` uses these).
CPU_ENGINES = ("eager_fp32", "eager_bf16_cl", "ort_cpu_fp32")
#: Engines of a full run on a CUDA host unless ``--engines`` says otherwise (ORT CPU left out).
CUDA_ENGINES = tuple(e for e in ENGINES if e != "ort_cpu_fp32")

REFERENCE = "eager_fp32"
SEED = 0


class EngineSkipped(Exception):
    """The engine cannot run on this host (missing package, provider or device); not a failure."""


# --------------------------------------------------------------------------------------------
# inputs: real photographs through the project's own preprocessing
# --------------------------------------------------------------------------------------------

_IMAGENET = None


def _imagenet_norm():
    """The ImageNet RGB normalisation of every HRNet config, as an object with ``mean``, ``std``
    and ``channel_order`` (what :func:`service.pipelines.common.to_input_tensor` reads)."""
    global _IMAGENET
    if _IMAGENET is None:
        from service.pipelines.common import IMAGENET_MEAN_RGB, IMAGENET_STD_RGB

        _IMAGENET = SimpleNamespace(
            mean=IMAGENET_MEAN_RGB, std=IMAGENET_STD_RGB, channel_order="rgb"
        )
    return _IMAGENET


def person_crops(shared: Path, size_hw: tuple[int, int], max_crops: int) -> np.ndarray:
    """Up to ``max_crops`` top-down person crops ``(N, h, w, 3)`` uint8 BGR from real photos.

    Ground-truth person boxes (crowd and keypoint-less annotations skipped, clipped to the image,
    :func:`benchmarks.eval_data.build_pose_items`) of ``mmpose_tests/coco`` then ``coco_mini``,
    image by image, cut as the gateway's top-down pipeline does: padding 1.25, aspect ratio fixed
    to ``w / h``, ``cv2.warpAffine`` bilinear. Raises ``FileNotFoundError`` when no crop could be
    made (data missing).
    """
    import cv2

    from benchmarks.eval_data import build_pose_items, load_json
    from service.geometry import bbox_xyxy2cs, crop_persons, fix_aspect_ratio

    h, w = size_hw
    sets = [
        (shared / "data/mmpose_tests/coco/test_coco.json", shared / "data/mmpose_tests/coco"),
        (
            shared / "data/coco_mini/annotations/person_keypoints_train2017.json",
            shared / "data/coco_mini/train2017",
        ),
    ]
    crops: list[np.ndarray] = []
    for ann, images in sets:
        if len(crops) >= max_crops or not ann.exists():
            continue
        items, _, _ = build_pose_items(load_json(ann), images, "coco", box_source="gt")
        for item in items:
            if len(crops) >= max_crops:
                break
            image = cv2.imread(str(item.path), cv2.IMREAD_COLOR)
            if image is None:
                continue
            boxes = np.asarray(item.boxes, np.float32)[:, :4]
            centers, scales = bbox_xyxy2cs(boxes, padding=1.25)
            scales = fix_aspect_ratio(scales, aspect_ratio=w / h)
            crops.extend(crop_persons(image, centers, scales, (w, h)))
    if not crops:
        raise FileNotFoundError(
            f"no person crops: COCO annotations/images not found under {shared}/data"
        )
    return np.stack(crops[:max_crops])


def resized_photos(paths: Sequence[Path], size_hw: tuple[int, int]) -> np.ndarray:
    """The readable images of ``paths`` resized to ``size_hw`` ``(h, w)`` (``cv2.INTER_LINEAR``),
    ``(N, h, w, 3)`` uint8 BGR. Raises ``FileNotFoundError`` when none can be read."""
    import cv2

    out = []
    for p in paths:
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if img is not None:
            out.append(cv2.resize(img, (size_hw[1], size_hw[0]), interpolation=cv2.INTER_LINEAR))
    if not out:
        raise FileNotFoundError(f"none of these images could be read: {[str(p) for p in paths]}")
    return np.stack(out)


def model_inputs(
    bm: BenchModel, size_hw: tuple[int, int], max_batch: int, shared: Path
) -> np.ndarray:
    """The network input for the largest batch, ``(max_batch, 3, h, w)`` float32, normalised
    (ImageNet mean/std, RGB). A batch of ``b`` uses its first ``b`` rows. Raises
    ``FileNotFoundError`` if the shared data is missing."""
    from service.pipelines.common import to_input_tensor

    data = shared / "data"
    if bm.kind == "topdown":
        images = person_crops(shared, size_hw, max_crops=max(max_batch, 16))
    elif bm.kind == "segmentation":
        images = resized_photos(
            [
                data / "cityscapes_sample/demo.png",
                data / "cityscapes_sample/frankfurt_000000_000294_leftImg8bit.png",
            ],
            size_hw,
        )
    else:
        images = resized_photos(sorted((data / "samples").glob("*.jpg")), size_hw)
    idx = np.arange(max_batch) % len(images)
    return to_input_tensor(images[idx], _imagenet_norm())


# --------------------------------------------------------------------------------------------
# accuracy against the fp32 reference
# --------------------------------------------------------------------------------------------


def as_outputs(y: Any) -> list:
    """A model's output as a list of tensors/arrays (HigherHRNet returns a list of two)."""
    return list(y) if isinstance(y, (list, tuple)) else [y]


def accuracy(ref: Sequence[np.ndarray], got: Sequence[np.ndarray], kind: str) -> dict[str, Any]:
    """Compare one engine's outputs with the fp32 reference on the same input.

    ``ref`` / ``got``: the model's outputs, ``(N, C, h, w)`` float arrays each, in the same order.
    Returns ``max_abs_err`` and ``ref_max_abs`` over all outputs (heatmap/logit units) and, for
    pose, ``argmax_agree_pct``: % of (item, channel) pairs whose heatmap maximum
    (:func:`service.codecs.refine.get_heatmap_maximum`) is at the same pixel, on the last output
    (the highest-resolution heatmaps; HigherHRNet's 1/2-scale ones); for segmentation,
    ``label_agree_pct``: % of output pixels whose class argmax is the same. Non-finite outputs
    give ``max_abs_err = inf``. Raises ``ValueError`` on a count or shape mismatch.
    """
    from service.codecs.refine import get_heatmap_maximum

    if len(ref) != len(got):
        raise ValueError(f"{len(got)} outputs, reference has {len(ref)}")
    err = mag = 0.0
    for r, g in zip(ref, got):
        if r.shape != g.shape:
            raise ValueError(f"output shape {g.shape}, reference {r.shape}")
        d = np.abs(r.astype(np.float64) - g.astype(np.float64))
        err = max(err, float(d.max()) if np.isfinite(d).all() else float("inf"))
        mag = max(mag, float(np.abs(r).max()))
    out: dict[str, Any] = {"max_abs_err": err, "ref_max_abs": mag}
    r, g = ref[-1].astype(np.float32), np.nan_to_num(got[-1].astype(np.float32), nan=-np.inf)
    if kind == "segmentation":
        out["label_agree_pct"] = 100.0 * float(np.mean(r.argmax(1) == g.argmax(1)))
    else:
        loc_r, _ = get_heatmap_maximum(r)
        loc_g, _ = get_heatmap_maximum(g)
        out["argmax_agree_pct"] = 100.0 * float(np.mean(np.all(loc_r == loc_g, axis=-1)))
    return out


# --------------------------------------------------------------------------------------------
# engines
# --------------------------------------------------------------------------------------------


class Engine:
    """One way of running a model. ``load(x)`` puts a batch ``(b, 3, h, w)`` float32 numpy into
    the engine's input (one-off work per batch size such as graph capture happens here);
    ``step()`` runs one forward (asynchronously on a GPU); ``outputs()`` returns the last step's
    outputs as float32 numpy arrays; ``close()`` frees what the engine holds."""

    uses_torch_memory = True

    def load(self, x: np.ndarray) -> None:
        raise NotImplementedError

    def step(self) -> None:
        raise NotImplementedError

    def outputs(self) -> list[np.ndarray]:
        raise NotImplementedError

    def close(self) -> None:
        pass


def _to_numpy(ys: Sequence[torch.Tensor]) -> list[np.ndarray]:
    return [y.detach().float().cpu().numpy() for y in ys]


@contextlib.contextmanager
def tf32(enabled: bool):
    """Set cuDNN/cuBLAS TF32 (``torch.backends.cudnn.allow_tf32``, ``cuda.matmul.allow_tf32``)
    for the duration; restores both after."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


class TorchEngine(Engine):
    """PyTorch eager, optionally under autocast (``dtype``) with channels-last memory format,
    optionally compiled (``compile=True``). TF32 is on only when ``allow_tf32``. ``autocast_cache``
    False turns off autocast's cache of cast weights (required inside a CUDA graph capture)."""

    def __init__(
        self,
        model: torch.nn.Module,
        device: torch.device,
        *,
        dtype: torch.dtype | None = None,
        channels_last: bool = False,
        compile: bool = False,
        allow_tf32: bool = False,
        autocast_cache: bool = True,
    ):
        self.device, self.dtype, self.allow_tf32 = device, dtype, allow_tf32
        self.autocast_cache = autocast_cache
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        m = copy.deepcopy(model).to(device).eval()
        if channels_last:
            m = m.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # missing in torch's stub
        self.model: torch.nn.Module | None = m
        self.fn: Callable | None = torch.compile(m, dynamic=False) if compile else m
        self.x: torch.Tensor | None = None
        self.y: list[torch.Tensor] = []

    def _forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        with torch.inference_mode(), tf32(self.allow_tf32), contextlib.ExitStack() as stack:
            if self.dtype is not None:
                stack.enter_context(
                    torch.autocast(
                        self.device.type, dtype=self.dtype, cache_enabled=self.autocast_cache
                    )
                )
            if self.fn is None:
                raise RuntimeError("engine closed")
            return as_outputs(self.fn(x))

    def load(self, x: np.ndarray) -> None:
        self.x = torch.from_numpy(x).to(self.device).contiguous(memory_format=self.memory_format)

    def _loaded(self) -> torch.Tensor:
        if self.x is None:
            raise RuntimeError("no batch loaded (call load first)")
        return self.x

    def step(self) -> None:
        self.y = self._forward(self._loaded())

    def outputs(self) -> list[np.ndarray]:
        return _to_numpy(self.y)

    def close(self) -> None:
        self.model = self.fn = self.x = None
        self.y = []


class CudaGraphEngine(TorchEngine):
    """:class:`TorchEngine` (fp16 autocast, channels-last) captured in a CUDA graph per batch size:
    ``load`` copies the batch into a static input buffer and captures the forward after three
    warm-up runs on a side stream; ``step`` replays the graph."""

    def __init__(self, model: torch.nn.Module, device: torch.device):
        super().__init__(
            model, device, dtype=torch.float16, channels_last=True, autocast_cache=False
        )
        self.graph: torch.cuda.CUDAGraph | None = None

    def load(self, x: np.ndarray) -> None:
        self.graph, self.y = None, []
        super().load(x)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                self._forward(self._loaded())
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.y = self._forward(self._loaded())

    def step(self) -> None:
        if self.graph is None:
            raise RuntimeError("no graph captured (call load first)")
        self.graph.replay()

    def close(self) -> None:
        self.graph = None
        super().close()


def require_ort_provider(provider: str):
    """The ``onnxruntime`` module if it offers execution ``provider``; else raises
    :class:`EngineSkipped` naming the providers it has (the plain wheel: CPU only)."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise EngineSkipped(f"onnxruntime not importable ({exc})") from None
    available = ort.get_available_providers()
    if provider not in available:
        raise EngineSkipped(
            f"onnxruntime {ort.__version__} has no {provider} (available: "
            f"{', '.join(available)}); the GPU build is the onnxruntime-gpu wheel"
        )
    return ort


def require_tensorrt():
    """The ``tensorrt`` module; raises :class:`EngineSkipped` where it is not importable."""
    try:
        import tensorrt
    except ImportError as exc:
        raise EngineSkipped(
            f"TensorRT not importable ({exc}); needs the [tensorrt] extra"
        ) from None
    return tensorrt


class OrtEngine(Engine):
    """ONNX Runtime on ``onnx_path`` with ``provider`` (``"CPUExecutionProvider"``,
    ``"CUDAExecutionProvider"`` or ``"TensorrtExecutionProvider"``, the last with fp16 and an
    engine cache in ``cache_dir``). GPU providers run through IO binding on device buffers, so a
    step measures the network and not the host copies. Raises :class:`EngineSkipped` when the
    provider is not available, ``RuntimeError`` when the session silently fell back to another
    provider."""

    uses_torch_memory = False

    def __init__(self, onnx_path: Path, provider: str, cache_dir: Path, threads: int | None = None):
        ort = require_ort_provider(provider)
        if provider == "TensorrtExecutionProvider":
            providers: list = [
                (
                    provider,
                    {
                        "trt_fp16_enable": True,
                        "trt_engine_cache_enable": True,
                        "trt_engine_cache_path": str(cache_dir),
                    },
                ),
                "CUDAExecutionProvider",
            ]
        else:
            providers = [provider]
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = opts.inter_op_num_threads = threads
        self.ort = ort
        self.session = ort.InferenceSession(str(onnx_path), opts, providers=providers)
        if self.session.get_providers()[0] != provider:
            raise RuntimeError(
                f"ONNX Runtime fell back to {self.session.get_providers()} instead of {provider}"
            )
        self.gpu = provider != "CPUExecutionProvider"
        self.in_name = self.session.get_inputs()[0].name
        self.out_names = [o.name for o in self.session.get_outputs()]
        self.feed: Any = None
        self.binding: Any = None
        self.y: list[np.ndarray] = []

    def load(self, x: np.ndarray) -> None:
        if not self.gpu:
            self.feed = {self.in_name: np.ascontiguousarray(x)}
            return
        self.feed = self.ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(x), "cuda", 0)
        self.binding = self.session.io_binding()
        self.binding.bind_ortvalue_input(self.in_name, self.feed)
        for name in self.out_names:
            self.binding.bind_output(name, "cuda", 0)

    def step(self) -> None:
        if self.gpu:
            self.session.run_with_iobinding(self.binding)
        else:
            self.y = self.session.run(self.out_names, self.feed)

    def outputs(self) -> list[np.ndarray]:
        if self.gpu:
            return [np.asarray(v, np.float32) for v in self.binding.copy_outputs_to_cpu()]
        return [np.asarray(v, np.float32) for v in self.y]

    def close(self) -> None:
        self.session = self.binding = self.feed = None


class TensorRTEngine(Engine):
    """A TensorRT engine built from ``onnx_path`` by :func:`export.triton_config.build_tensorrt_plan`
    (fp16, one profile for batch ``1..max_batch``, ``opt = max_batch``, spatial size fixed at
    ``size_hw``), run with ``execute_async_v3`` on torch-allocated device buffers. Raises
    :class:`EngineSkipped` when ``tensorrt`` (or pydantic, for the card) is not importable."""

    uses_torch_memory = False

    def __init__(
        self, onnx_path: Path, bm: BenchModel, size_hw: tuple[int, int], max_batch: int, work: Path
    ):
        trt = require_tensorrt()
        try:
            from export.cards import card_for_entry
            from export.triton_config import build_tensorrt_plan
        except ImportError as exc:
            raise EngineSkipped(
                f"the card for build_tensorrt_plan needs pydantic ({exc})"
            ) from None
        from training.registry import get_entry

        card = card_for_entry(get_entry(bm.registry_name), bm.key, max_batch_size=max_batch)
        plan = build_tensorrt_plan(
            onnx_path,
            work / f"{bm.key}.plan",
            card,
            fp16=True,
            min_batch=1,
            opt_batch=max_batch,
            max_batch=max_batch,
            min_hw=size_hw,
            opt_hw=size_hw,
            max_hw=size_hw,
        )
        self.trt = trt
        logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(logger).deserialize_cuda_engine(plan.read_bytes())
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.in_name = next(
            n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT
        )
        self.out_names = [n for n in names if n != self.in_name]
        self.x: torch.Tensor | None = None
        self.y: list[torch.Tensor] = []

    def load(self, x: np.ndarray) -> None:
        trt = self.trt
        dtypes = {trt.float32: torch.float32, trt.float16: torch.float16}
        self.x = torch.from_numpy(x).cuda().contiguous()
        self.context.set_input_shape(self.in_name, tuple(self.x.shape))
        self.context.set_tensor_address(self.in_name, self.x.data_ptr())
        self.y = []
        for name in self.out_names:
            y = torch.empty(
                tuple(self.context.get_tensor_shape(name)),
                dtype=dtypes[self.engine.get_tensor_dtype(name)],
                device="cuda",
            )
            self.context.set_tensor_address(name, y.data_ptr())
            self.y.append(y)

    def step(self) -> None:
        if not self.context.execute_async_v3(torch.cuda.current_stream().cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")

    def outputs(self) -> list[np.ndarray]:
        return _to_numpy(self.y)

    def close(self) -> None:
        self.context = self.engine = self.x = None
        self.y = []


# --------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------


@dataclass
class RunConfig:
    """Everything one run needs (see :func:`build_parser` for the meaning of each field)."""

    device: torch.device
    smoke: bool
    models: list[BenchModel]
    engines: list[str]
    batches: list[int] | None
    warmup: int
    iters: int
    max_row_s: float
    budget_s: float | None
    shared: Path
    checkpoints: dict[str, str]
    exporter: str
    out: Path | None
    cpu_threads: int | None = None


class Runner:
    """Runs :class:`RunConfig`: builds each model, its inputs and fp32 reference outputs, then
    every engine at every batch size, one row each (see the module docstring for the fields)."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.t0 = time.monotonic()
        self.rows: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.env = environment(cfg.device)
        self.work = Path(tempfile.mkdtemp(prefix="hrnet-gpu-bench-"))

    # ---- bookkeeping -------------------------------------------------------------------
    def over_budget(self) -> bool:
        b = self.cfg.budget_s
        return b is not None and time.monotonic() - self.t0 > b

    def result(self) -> dict[str, Any]:
        """The JSON document: ``environment``, ``config``, ``rows``, ``notes``, ``elapsed_s``."""
        c = self.cfg
        return {
            "environment": self.env,
            "config": {
                "device": str(c.device),
                "smoke": c.smoke,
                "models": [m.key for m in c.models],
                "engines": c.engines,
                "batches": c.batches,
                "warmup": c.warmup,
                "iters": c.iters,
                "max_row_s": c.max_row_s,
                "budget_s": c.budget_s,
                "checkpoints": c.checkpoints,
                "exporter": c.exporter,
                "cpu_threads": c.cpu_threads,
                "weights": "random (seed 0, BatchNorm calibrated)"
                if not c.checkpoints
                else "checkpoints where given, random elsewhere",
            },
            "rows": self.rows,
            "notes": self.notes,
            "elapsed_s": round(time.monotonic() - self.t0, 3),
        }

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        print(format_row(row), flush=True)
        if self.cfg.out is not None:
            atomic_write_json(self.cfg.out, self.result())

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"# {text}", flush=True)

    # ---- per model ---------------------------------------------------------------------
    def size(self, bm: BenchModel) -> tuple[int, int]:
        return bm.smoke_hw if self.cfg.smoke else bm.size_hw

    def batches(self, bm: BenchModel) -> list[int]:
        if self.cfg.batches:
            return list(self.cfg.batches)
        return list(bm.smoke_batches if self.cfg.smoke else bm.batches)

    def build_model(self, bm: BenchModel) -> torch.nn.Module:
        """``create_model`` with seed 0; random weights get BatchNorm statistics from
        :func:`calibrate_batchnorm` (at most 256x512 pixels, batch 2) so the outputs are neither
        vanishing nor exploding. Raises ``KeyError`` for a name the registry does not know."""
        from export.onnx_export import calibrate_batchnorm
        from training.models import create_model

        ckpt = self.cfg.checkpoints.get(bm.key)
        model = create_model(bm.registry_name, checkpoint=ckpt, seed=SEED)
        if ckpt is None:
            h, w = self.size(bm)
            f = min(1.0, 256 / h, 512 / w)
            calibrate_batchnorm(
                model,
                (2, 3, max(32, int(h * f) // 32 * 32), max(32, int(w * f) // 32 * 32)),
                seed=SEED,
            )
        return model.eval()

    def reference(self, model: torch.nn.Module, x: np.ndarray) -> tuple[list[np.ndarray], float]:
        """Strict-fp32 eager outputs of ``model`` on ``x`` (on the run's device) and the
        multiply-accumulates per item in GMAC (``torch.utils.flop_counter``: convolutions and
        matmuls; resizes and element-wise ops are not counted)."""
        from torch.utils.flop_counter import FlopCounterMode

        eng = TorchEngine(model, self.cfg.device)
        try:
            eng.load(x)
            counter = FlopCounterMode(display=False)
            with counter:
                eng.step()
            return eng.outputs(), counter.get_total_flops() / 2e9 / len(x)
        finally:
            eng.close()

    def onnx_file(self, bm: BenchModel, model: torch.nn.Module) -> Path:
        """The model's ONNX graph (dynamic batch, fixed spatial size), exported once per model
        with :func:`export.onnx_export.export_onnx` (HigherHRNet: one named output per stage)."""
        from export.onnx_export import export_onnx

        path = self.work / f"{bm.key}.onnx"
        if path.exists():
            return path
        h, w = self.size(bm)
        names = {"segmentation": "logits", "bottomup": ["heatmaps_tags_1_4", "heatmaps_1_2"]}
        export_onnx(
            copy.deepcopy(model),
            path,
            input_shape=(2, 3, h, w),
            dynamic_batch=True,
            output_name=names.get(bm.kind, "heatmaps"),
            exporter=cast(Literal["auto", "dynamo", "legacy"], self.cfg.exporter),
        )
        return path

    def make_engine(
        self, name: str, bm: BenchModel, model: torch.nn.Module, max_batch: int
    ) -> Engine:
        """Build engine ``name`` for ``model``. Raises :class:`EngineSkipped` when it cannot run on
        this host, anything else when building it fails."""
        dev = self.cfg.device
        cuda = dev.type == "cuda"
        if name not in ("eager_fp32", "eager_bf16_cl", "ort_cpu_fp32") and not cuda:
            raise EngineSkipped("needs a CUDA device")
        if name == "eager_fp32":
            return TorchEngine(model, dev)
        if name == "eager_tf32":
            return TorchEngine(model, dev, allow_tf32=True)
        if name == "eager_fp16_cl":
            return TorchEngine(model, dev, dtype=torch.float16, channels_last=True)
        if name == "eager_bf16_cl":
            return TorchEngine(model, dev, dtype=torch.bfloat16, channels_last=True)
        if name == "cudagraph_fp16_cl":
            return CudaGraphEngine(model, dev)
        if name == "compile_fp16_cl":
            return TorchEngine(model, dev, dtype=torch.float16, channels_last=True, compile=True)
        providers = {
            "ort_cpu_fp32": "CPUExecutionProvider",
            "ort_cuda_fp32": "CUDAExecutionProvider",
            "ort_trt_fp16": "TensorrtExecutionProvider",
        }
        if name in providers:
            require_ort_provider(providers[name])  # before the export
            return OrtEngine(
                self.onnx_file(bm, model), providers[name], self.work, threads=self.cfg.cpu_threads
            )
        if name == "tensorrt_fp16":
            require_tensorrt()  # before the export
            return TensorRTEngine(
                self.onnx_file(bm, model), bm, self.size(bm), max_batch, self.work
            )
        raise ValueError(f"unknown engine {name!r}")

    def timed(self, eng: Engine, x: np.ndarray) -> tuple[list[float], float]:
        """``(per-iteration ms, set-up s)``: ``load`` + the first step (set-up), ``warmup - 1``
        more untimed steps, then up to ``iters`` timed steps (at least 3; stops early once
        ``max_row_s`` seconds of timed steps have passed)."""
        c = self.cfg
        cuda = c.device.type == "cuda"
        sync = torch.cuda.synchronize if cuda else (lambda: None)
        t = time.perf_counter()
        eng.load(x)
        eng.step()
        sync()
        setup = time.perf_counter() - t
        for _ in range(max(0, c.warmup - 1)):
            eng.step()
        sync()
        times: list[float] = []
        started = time.perf_counter()
        for i in range(max(1, c.iters)):
            if cuda:
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                eng.step()
                b.record()
                b.synchronize()
                times.append(a.elapsed_time(b))
            else:
                s = time.perf_counter()
                eng.step()
                times.append((time.perf_counter() - s) * 1e3)
            if i >= 2 and time.perf_counter() - started > c.max_row_s:
                break
        return times, setup

    def row(
        self, bm: BenchModel, engine: str, batch: int, status: str, **kw: Any
    ) -> dict[str, Any]:
        h, w = self.size(bm)
        r = {
            "model": bm.key,
            "registry_name": bm.registry_name,
            "kind": bm.kind,
            "engine": engine,
            "batch": batch,
            "input": [batch, 3, h, w],
            "status": status,
            "unit": bm.unit,
            "throughput": None,
            "latency_ms_median": None,
            "latency_ms_p90": None,
            "latency_ms_min": None,
            "iters": 0,
            "setup_s": None,
            "peak_mem_mb": None,
            "gmac_per_item": None,
            "max_abs_err": None,
            "ref_max_abs": None,
            ("label_agree_pct" if bm.kind == "segmentation" else "argmax_agree_pct"): None,
            "error": None,
        }
        r.update(kw)
        return r

    def run_model(self, bm: BenchModel) -> None:
        """Every engine at every batch size for one model (rows added as they are measured)."""
        cfg = self.cfg
        batches = self.batches(bm)

        def fill(status: str, why: str) -> None:
            for e in cfg.engines:
                for b in batches:
                    self.add(self.row(bm, e, b, status, error=why))

        if self.over_budget():
            return fill("skipped", "time budget spent")
        try:
            model = self.build_model(bm)
            x_all = model_inputs(bm, self.size(bm), max(batches), cfg.shared)
        except KeyError as exc:
            self.note(f"{bm.key}: skipped, create_model does not know {bm.registry_name!r} ({exc})")
            return fill("skipped", f"model not available: {exc}")
        except Exception as exc:
            return fill("error", f"model or inputs failed: {type(exc).__name__}: {exc}"[:2000])
        refs: dict[int, list[np.ndarray]] = {}
        gmac: float | None = None
        for engine in cfg.engines:
            eng: Engine | None = None
            skip: str | None = None
            failed: str | None = None  # set-up error: not retried for the next batch sizes
            for b in batches:
                if skip is not None or failed is not None:
                    self.add(
                        self.row(
                            bm, engine, b, "skipped" if skip else "error", error=skip or failed
                        )
                    )
                    continue
                if self.over_budget():
                    self.add(self.row(bm, engine, b, "skipped", error="time budget spent"))
                    continue
                try:
                    x = x_all[:b]
                    if b not in refs:
                        refs[b], gmac = self.reference(model, x)
                    if cfg.device.type == "cuda":
                        torch.cuda.empty_cache()
                        torch.cuda.reset_peak_memory_stats()
                    t = time.perf_counter()
                    if eng is None:
                        try:
                            eng = self.make_engine(engine, bm, model, max(batches))
                        except EngineSkipped:
                            raise
                        except Exception as exc:
                            failed = f"set-up failed at batch {b}: {type(exc).__name__}: {exc}"[
                                :2000
                            ]
                            raise
                    build = time.perf_counter() - t
                    times, setup = self.timed(eng, x)
                    med = statistics.median(times)
                    kw: dict[str, Any] = dict(
                        gmac_per_item=gmac,
                        throughput=b / (med / 1e3),
                        latency_ms_median=med,
                        latency_ms_p90=float(np.percentile(times, 90)),
                        latency_ms_min=min(times),
                        iters=len(times),
                        setup_s=round(build + setup, 3),
                    )
                    if cfg.device.type == "cuda" and eng.uses_torch_memory:
                        kw["peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
                    if engine != REFERENCE:
                        kw.update(accuracy(refs[b], eng.outputs(), bm.kind))
                    self.add(self.row(bm, engine, b, "ok", **kw))
                except EngineSkipped as exc:
                    skip = str(exc)
                    self.add(self.row(bm, engine, b, "skipped", error=skip))
                except Exception as exc:
                    msg = f"{type(exc).__name__}: {exc}"
                    self.add(self.row(bm, engine, b, "error", error=msg[:2000]))
                    traceback.print_exc(limit=3, file=sys.stdout)
                    if isinstance(exc, torch.cuda.OutOfMemoryError):
                        if eng is not None:
                            eng.close()
                        eng = None
            if eng is not None:
                eng.close()
            if cfg.device.type == "cuda":
                torch.cuda.empty_cache()

    def run(self) -> dict[str, Any]:
        """Every model in turn; returns :meth:`result` (also written to ``--out``)."""
        print(header(), flush=True)
        try:
            for bm in self.cfg.models:
                self.run_model(bm)
        finally:
            shutil.rmtree(self.work, ignore_errors=True)  # ONNX files and TensorRT plans
        res = self.result()
        if self.cfg.out is not None:
            atomic_write_json(self.cfg.out, res)
        return res


def environment(device: torch.device) -> dict[str, Any]:
    """Versions and hardware: python, torch (+ CUDA, cuDNN), onnx, onnxruntime (+ providers),
    tensorrt (None if absent), numpy, OpenCV, GPU name/capability/memory, CPU count, UTC date."""

    def version(mod: str) -> str | None:
        try:
            return getattr(__import__(mod), "__version__", "?")
        except Exception:
            return None

    env: dict[str, Any] = {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "numpy": np.__version__,
        "opencv": version("cv2"),
        "onnx": version("onnx"),
        "onnxruntime": version("onnxruntime"),
        "tensorrt": version("tensorrt"),
        "device": str(device),
        "gpu": None,
    }
    try:
        import onnxruntime as ort

        env["onnxruntime_providers"] = ort.get_available_providers()
    except ImportError:
        env["onnxruntime_providers"] = []
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        env["gpu"] = {
            "name": p.name,
            "capability": f"{p.major}.{p.minor}",
            "memory_gib": round(p.total_memory / 2**30, 1),
            "multiprocessors": p.multi_processor_count,
        }
    return env


# --------------------------------------------------------------------------------------------
# table
# --------------------------------------------------------------------------------------------

_COLUMNS = (
    "model",
    "engine",
    "batch",
    "status",
    "items/s",
    "lat ms",
    "p90 ms",
    "peak MB",
    "setup s",
    "max|err|",
    "agree %",
)
_WIDTHS = (21, 18, 5, 7, 10, 9, 9, 8, 8, 9, 8)


def header() -> str:
    """The table's header line."""
    return " ".join(c.ljust(w) for c, w in zip(_COLUMNS, _WIDTHS))


def format_row(r: dict[str, Any]) -> str:
    """One table line for a row dict; ``error``/``skipped`` rows end with the reason."""

    def f(v: Any, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    agree = r.get("argmax_agree_pct", r.get("label_agree_pct"))
    cells = (
        r["model"],
        r["engine"],
        str(r["batch"]),
        r["status"],
        f(r["throughput"], ".1f"),
        f(r["latency_ms_median"], ".3f"),
        f(r["latency_ms_p90"], ".3f"),
        f(r["peak_mem_mb"], ".0f"),
        f(r["setup_s"], ".1f"),
        f(r["max_abs_err"], ".2e"),
        f(agree, ".2f"),
    )
    line = " ".join(c.ljust(w) for c, w in zip(cells, _WIDTHS))
    if r.get("error"):
        line += f"  {r['error'].splitlines()[0][:200]}"
    return line


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m benchmarks.gpu_bench`` arguments."""
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_bench",
        description="HRNet throughput/latency/memory and reduced-precision "
        "accuracy per engine (see the module docstring).",
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help="CPU, tiny inputs (64x64 crops, 64x128 seg), batches 1 and 2, CPU engines: "
        "checks that the script works",
    )
    p.add_argument("--out", type=Path, default=None, help="JSON file, rewritten after every row")
    p.add_argument(
        "--models",
        nargs="+",
        default=None,
        choices=list(MODELS),
        help="default: all, in the order of importance",
    )
    p.add_argument(
        "--engines",
        nargs="+",
        default=None,
        choices=list(ENGINES),
        help=f"default: {', '.join(CUDA_ENGINES)} on CUDA; {', '.join(CPU_ENGINES)} "
        "on the CPU / --smoke",
    )
    p.add_argument(
        "--batches",
        nargs="+",
        type=int,
        default=None,
        help="default: 1 8 32 64 (pose), 1 2 (seg); 1 2 with --smoke",
    )
    p.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="after this many seconds the remaining rows are written as skipped",
    )
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per row (10; 1 smoke)")
    p.add_argument("--iters", type=int, default=None, help="timed steps per row (50; 3 smoke)")
    p.add_argument(
        "--max-row-s",
        type=float,
        default=5.0,
        help="stop timing a row after this many seconds (at least 3 steps)",
    )
    p.add_argument("--device", default=None, help="default: cuda if available (cpu with --smoke)")
    p.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        metavar="KEY=PATH",
        help="trained weights for model KEY (any published layout; repeatable)",
    )
    p.add_argument(
        "--exporter",
        default=None,
        choices=("auto", "dynamo", "legacy"),
        help="ONNX exporter (export_onnx): auto on a full run, legacy with --smoke (fast)",
    )
    p.add_argument(
        "--cpu-threads",
        type=int,
        default=None,
        help="torch and ONNX Runtime CPU threads (default: 1 with --smoke, where OpenMP "
        "threads on a busy shared CPU slow eager PyTorch by 10-50x; else the "
        "libraries' default)",
    )
    p.add_argument(
        "--shared-dir",
        type=Path,
        default=None,
        help="the shared data folder (default $HRNET_SHARED_DIR or ../shared)",
    )
    return p


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """Fill in the defaults that depend on ``--smoke`` and the device. Raises ``SystemExit`` with
    a message for bad values (a batch < 1, a malformed ``--checkpoint``, a CUDA device that is not
    there)."""
    if args.device is None:
        args.device = "cuda" if (torch.cuda.is_available() and not args.smoke) else "cpu"
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but torch sees no CUDA device")
    if args.batches and min(args.batches) < 1:
        raise SystemExit("error: batch sizes must be >= 1")
    checkpoints = {}
    for item in args.checkpoint:
        key, sep, path = item.partition("=")
        if not sep or key not in MODELS:
            raise SystemExit(
                f"error: --checkpoint wants KEY=PATH with KEY in {list(MODELS)}, got {item!r}"
            )
        checkpoints[key] = path
    engines = args.engines or list(CPU_ENGINES if device.type == "cpu" else CUDA_ENGINES)
    if REFERENCE in engines:  # the reference row first, whatever the order given
        engines = [REFERENCE] + [e for e in engines if e != REFERENCE]
    return RunConfig(
        device=device,
        smoke=args.smoke,
        models=[MODELS[k] for k in (args.models or list(MODELS))],
        engines=engines,
        batches=args.batches,
        warmup=args.warmup if args.warmup is not None else (1 if args.smoke else 10),
        iters=args.iters if args.iters is not None else (3 if args.smoke else 50),
        max_row_s=args.max_row_s,
        budget_s=args.budget_s,
        shared=args.shared_dir or default_shared_dir(),
        checkpoints=checkpoints,
        exporter=args.exporter or ("legacy" if args.smoke else "auto"),
        out=args.out,
        cpu_threads=args.cpu_threads
        if args.cpu_threads is not None
        else (1 if args.smoke else None),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; exit 0 when every row is ``ok`` or ``skipped``, 1 if any is ``error``."""
    args = build_parser().parse_args(argv)
    cfg = config_from_args(args)
    torch.manual_seed(SEED)
    if cfg.cpu_threads:
        torch.set_num_threads(cfg.cpu_threads)
    if cfg.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    runner = Runner(cfg)
    print(json.dumps(runner.env), flush=True)
    res = runner.run()
    errors = sum(r["status"] == "error" for r in res["rows"])
    print(
        f"# {len(res['rows'])} rows, {errors} errors, {res['elapsed_s']:.1f} s"
        + (f", JSON in {cfg.out}" if cfg.out else ""),
        flush=True,
    )
    return 1 if errors else 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
