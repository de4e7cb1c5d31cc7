"""Triton model configuration (``config.pbtxt``) and TensorRT plans, generated from a model card.

One card describes a model; this module turns it into the ``config.pbtxt`` that Triton Inference
Server reads from ``model_repository/<name>/config.pbtxt``:

* ``platform: "onnxruntime_onnx"`` (Triton's ONNX Runtime backend, file ``1/model.onnx``), optionally
  with the TensorRT execution accelerator of that backend;
* ``platform: "tensorrt_plan"`` (file ``1/model.plan`` built by :func:`build_tensorrt_plan`);
* ``backend: "python"`` (used by the test adapter in :mod:`export.triton_adapter`).

Tensor names, data types and dims come from ``card.inputs`` / ``card.outputs`` (batch axis excluded,
-1 for a dynamic axis, exactly Triton's convention when ``max_batch_size > 0``); batching is
Triton's dynamic batcher. The text is written by hand (no protobuf needed at export time) and
:func:`parse_config` reads it back with Triton's own ``ModelConfig`` protobuf message, as the server
does. Semantics follow Triton's ``model_config.proto`` (triton-inference-server/common).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from service.cards import ModelCard, SegmentationCard, TensorSpec, load_card
from service.dtypes import config_dtype
from service.layout import CONFIG_FILENAME, ONNX_FILENAME, PLAN_FILENAME, PYTHON_FILENAME

#: platform -> default file name of the model inside ``<name>/<version>/``
MODEL_FILENAMES = {
    "onnxruntime_onnx": ONNX_FILENAME,
    "tensorrt_plan": PLAN_FILENAME,
}
#: backend -> default file name (Triton's Python backend runs ``model.py``)
BACKEND_FILENAMES = {
    "python": PYTHON_FILENAME,
    "onnxruntime": ONNX_FILENAME,
    # Triton's OpenVINO backend reads model.xml by default; it also reads ONNX when named
    "openvino": ONNX_FILENAME,
    "tensorrt": PLAN_FILENAME,
}
INSTANCE_KINDS = ("KIND_AUTO", "KIND_GPU", "KIND_CPU", "KIND_MODEL")


def default_preferred_batch_sizes(max_batch_size: int) -> list[int]:
    """Powers of two from 4 up to ``max_batch_size``, plus ``max_batch_size`` itself.

    E.g. 32 -> ``[4, 8, 16, 32]``, 12 -> ``[4, 8, 12]``, 2 -> ``[2]``. These are the sizes the dynamic
    batcher tries to form before its queue delay expires.
    """
    sizes = [b for b in (4, 8, 16, 32, 64, 128, 256, 512, 1024) if b < max_batch_size]
    return sizes + [max_batch_size]


def _q(s: str) -> str:
    """A protobuf text-format string literal."""
    return json.dumps(s)


def _tensor_block(kind: str, specs: Iterable[TensorSpec]) -> list[str]:
    lines = [f"{kind} ["]
    specs = list(specs)
    for i, spec in enumerate(specs):
        dims = ", ".join(str(int(d)) for d in spec.dims)
        lines += [
            "  {",
            f"    name: {_q(spec.name)}",
            f"    data_type: {config_dtype(spec.dtype)}",
            f"    dims: [ {dims} ]",
            "  }" + ("," if i < len(specs) - 1 else ""),
        ]
    lines.append("]")
    return lines


def render_config(
    card: ModelCard,
    *,
    platform: str = "onnxruntime_onnx",
    backend: str | None = None,
    max_batch_size: int | None = None,
    preferred_batch_sizes: list[int] | None = None,
    max_queue_delay_us: int = 500,
    instance_kind: str = "KIND_GPU",
    instance_count: int = 1,
    trt_accelerator: bool = False,
    trt_precision: str = "FP16",
    trt_workspace_bytes: int | None = None,
    default_model_filename: str | None = None,
    openvino_bf16: bool = False,
) -> str:
    """Triton ``config.pbtxt`` text for ``card``.

    Args:
        card: the model card; ``card.name`` becomes the Triton model name (it must equal the folder
            name), ``card.inputs``/``card.outputs`` the tensors (dims without the batch axis).
        platform: ``"onnxruntime_onnx"`` or ``"tensorrt_plan"``; ignored when ``backend`` is given.
        backend: a Triton backend name instead of a platform (``"python"`` for the test adapter).
        max_batch_size: largest batch Triton accepts (default ``card.max_batch_size``); must be >= 1
            because the gateway always sends a leading batch axis.
        preferred_batch_sizes: dynamic-batcher preferred sizes (default
            :func:`default_preferred_batch_sizes`); each must lie in ``1..max_batch_size``.
        max_queue_delay_us: how long (microseconds) the dynamic batcher waits to fill a batch.
        instance_kind: ``KIND_GPU`` (production), ``KIND_CPU``, ``KIND_AUTO`` or ``KIND_MODEL``.
        instance_count: model instances per device.
        trt_accelerator: for ``onnxruntime_onnx``, run the graph through ONNX Runtime's TensorRT
            execution provider (``optimization.execution_accelerators``), ``precision_mode``
            ``trt_precision`` (``"FP16"`` or ``"FP32"``), optional ``max_workspace_size_bytes``.
        default_model_filename: file name inside ``<version>/`` (default: ``model.onnx``,
            ``model.plan`` or ``model.py`` by platform/backend).
        openvino_bf16: with ``backend="openvino"`` (Triton's OpenVINO backend, which runs the same
            ``model.onnx``), ask it for bfloat16 inference (its ``HINT_BF16`` parameter); that
            backend always gets ``NUM_STREAMS`` 1 and the ``LATENCY`` ``PERFORMANCE_HINT``, as the
            gateway's embedded OpenVINO backend uses.

    Returns the text (ends with a newline). Raises ``ValueError`` for an unknown platform or kind,
    a batch size below 1, preferred sizes outside ``1..max_batch_size``, or ``trt_accelerator``
    on anything but ``onnxruntime_onnx``.
    """
    mbs = card.max_batch_size if max_batch_size is None else int(max_batch_size)
    if mbs < 1:
        raise ValueError(f"max_batch_size must be >= 1 (the gateway always batches), got {mbs}")
    if backend is None and platform not in MODEL_FILENAMES:
        raise ValueError(
            f"unknown platform '{platform}'; expected one of {sorted(MODEL_FILENAMES)}"
        )
    if instance_kind not in INSTANCE_KINDS:
        raise ValueError(
            f"unknown instance kind '{instance_kind}'; expected one of {INSTANCE_KINDS}"
        )
    if instance_count < 1:
        raise ValueError(f"instance_count must be >= 1, got {instance_count}")
    if max_queue_delay_us < 0:
        raise ValueError(f"max_queue_delay_us must be >= 0, got {max_queue_delay_us}")
    preferred = (
        default_preferred_batch_sizes(mbs)
        if preferred_batch_sizes is None
        else sorted({int(b) for b in preferred_batch_sizes})
    )
    bad = [b for b in preferred if not 1 <= b <= mbs]
    if bad:
        raise ValueError(f"preferred batch sizes {bad} outside 1..{mbs}")
    if trt_accelerator and (backend is not None or platform != "onnxruntime_onnx"):
        raise ValueError("trt_accelerator applies to platform 'onnxruntime_onnx' only")
    if trt_precision not in ("FP16", "FP32"):
        raise ValueError(f"trt_precision must be FP16 or FP32, got {trt_precision}")
    if not card.inputs or not card.outputs:
        raise ValueError(f"card '{card.name}' lists no inputs or no outputs")
    if openvino_bf16 and backend != "openvino":
        raise ValueError("openvino_bf16 applies to backend 'openvino' only")

    if default_model_filename is None:
        default_model_filename = (
            BACKEND_FILENAMES.get(backend, PYTHON_FILENAME)
            if backend
            else MODEL_FILENAMES[platform]
        )

    lines = [f"name: {_q(card.name)}"]
    lines.append(f"backend: {_q(backend)}" if backend else f"platform: {_q(platform)}")
    lines.append(f"max_batch_size: {mbs}")
    lines.append(f"default_model_filename: {_q(default_model_filename)}")
    lines += _tensor_block("input", card.inputs)
    lines += _tensor_block("output", card.outputs)
    lines += [
        "dynamic_batching {",
        f"  preferred_batch_size: [ {', '.join(str(b) for b in preferred)} ]",
        f"  max_queue_delay_microseconds: {int(max_queue_delay_us)}",
        "}",
        "instance_group [",
        "  {",
        f"    count: {int(instance_count)}",
        f"    kind: {instance_kind}",
        "  }",
        "]",
    ]
    if backend == "openvino":
        params = {"NUM_STREAMS": "1", "PERFORMANCE_HINT": "LATENCY"}
        if openvino_bf16:
            params["HINT_BF16"] = "YES"
        lines += [
            f"parameters {{ key: {_q(k)} value: {{ string_value: {_q(v)} }} }}"
            for k, v in params.items()
        ]
    if trt_accelerator:
        lines += [
            "optimization {",
            "  execution_accelerators {",
            "    gpu_execution_accelerator: [",
            "      {",
            '        name: "tensorrt"',
            f'        parameters {{ key: "precision_mode" value: {_q(trt_precision)} }}',
        ]
        if trt_workspace_bytes:
            lines.append(
                '        parameters { key: "max_workspace_size_bytes" '
                f"value: {_q(str(int(trt_workspace_bytes)))} }}"
            )
        lines += [
            "      }",
            "    ]",
            "  }",
            "}",
        ]
    return "\n".join(lines) + "\n"


def write_config(card: ModelCard, model_dir: Path | str, **kw: Any) -> Path:
    """Write ``<model_dir>/config.pbtxt`` from :func:`render_config` (same keywords); returns the path.

    ``model_dir`` is the model's folder in the repository (created if missing); its name should be
    ``card.name``, which Triton requires. Raises ``ValueError`` as :func:`render_config`.
    """
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    path = model_dir / CONFIG_FILENAME
    path.write_text(render_config(card, **kw))
    return path


def parse_config(text: str):
    """Parse ``config.pbtxt`` text into Triton's ``inference.ModelConfig`` protobuf message.

    Uses the ``model_config_pb2`` module shipped with ``tritonclient`` (the ``[triton]`` extra) and
    ``google.protobuf.text_format``, i.e. the same message and text format the server reads.
    Raises ``google.protobuf.text_format.ParseError`` on malformed text or unknown fields, and
    ``ImportError`` when tritonclient is not installed.
    """
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(text, model_config_pb2.ModelConfig())


# --------------------------------------------------------------------------------------------
# TensorRT plans
# --------------------------------------------------------------------------------------------

TENSORRT_MISSING = (
    "TensorRT is not installed (Python package 'tensorrt' not importable): install "
    "the [tensorrt] extra on a GPU host (pip install 'hrnet-serving[tensorrt]', "
    "i.e. the 'tensorrt' wheel matching the CUDA driver) to build model.plan"
)


def _import_tensorrt():
    try:
        import tensorrt
    except ImportError as exc:  # also covers a broken install (missing CUDA libraries)
        raise RuntimeError(f"{TENSORRT_MISSING}: {exc}") from exc
    return tensorrt


def profile_shapes(
    card: ModelCard,
    spec: TensorSpec,
    *,
    min_batch: int,
    opt_batch: int,
    max_batch: int,
    min_hw: tuple[int, int],
    opt_hw: tuple[int, int],
    max_hw: tuple[int, int],
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(min, opt, max) full shapes, batch first, of one input for a TensorRT optimisation profile.

    Fixed dims are kept; a dynamic NCHW spatial axis (-1 in the last two dims of a rank-3 spec) takes
    ``*_hw`` = ``(height, width)`` in pixels. Raises ``ValueError`` for another dynamic axis.
    """
    lo, mid, hi = [min_batch], [opt_batch], [max_batch]
    rank = len(spec.dims)
    for axis, d in enumerate(spec.dims):
        if d >= 0:
            lo.append(d)
            mid.append(d)
            hi.append(d)
            continue
        spatial = axis - (rank - 2)
        if rank < 2 or spatial < 0:
            raise ValueError(
                f"input '{spec.name}' of '{card.name}' has a dynamic non-spatial "
                f"axis {axis} (dims {spec.dims}); TensorRT needs a range for it"
            )
        lo.append(min_hw[spatial])
        mid.append(opt_hw[spatial])
        hi.append(max_hw[spatial])
    return tuple(lo), tuple(mid), tuple(hi)


def default_spatial_ranges(
    card: ModelCard,
) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """(min, opt, max) ``(height, width)`` in pixels for dynamic spatial inputs (segmentation).

    Slide mode: opt = ``crop_size``; whole mode: opt = the keep-ratio ``scale`` as landscape
    ``(short, long)``. Cards without a pipeline use ``input_size`` if fixed, else 512 x 1024 opt.
    Min is 64 x 64.

    Max covers the gateway's multi-scale TTA (``/segment`` ``scales=ms``): MMSeg 1.x applies the
    ratios :data:`service.pipelines.seg_plan.MS_RATIOS` (up to 1.75) to the *original* image
    (``tta_resize_size``), so an image of the card's test size (e.g. a 2048 x 1024 Cityscapes
    frame) reaches ``ceil(1.75 * 2048) = 3584`` pixels on its long side. Max is therefore
    ``ceil(max(MS_RATIOS) * L)`` on both axes (either orientation), ``L`` the long side of
    ``scale`` (or of opt if larger, or if there is no ``scale``). Larger inputs (bigger originals,
    custom ratios up to ``MAX_SCALE_RATIO``) are outside the profile: pass ``max_hw`` to
    :func:`build_tensorrt_plan` (``--max-hw H W``) or keep the ONNX Runtime entry.
    """
    from service.pipelines.seg_plan import MS_RATIOS

    tp = card.test_pipeline if isinstance(card, SegmentationCard) else None
    if tp is not None and tp.mode == "slide" and tp.crop_size:
        opt = (int(tp.crop_size[0]), int(tp.crop_size[1]))
    elif tp is not None and tp.scale:
        opt = (int(min(tp.scale)), int(max(tp.scale)))
    elif card.input_size[0] and card.input_size[1]:
        opt = (int(card.input_size[1]), int(card.input_size[0]))
    else:
        opt = (512, 1024)
    long_side = max(opt)
    if tp is not None and tp.scale:
        long_side = max(long_side, int(max(tp.scale)))
    side = max(long_side, math.ceil(max(MS_RATIOS) * long_side))
    return (min(64, opt[0]), min(64, opt[1])), opt, (side, side)


def build_tensorrt_plan(
    onnx_path: Path | str,
    plan_path: Path | str,
    card: ModelCard,
    *,
    fp16: bool = True,
    min_batch: int = 1,
    opt_batch: int | None = None,
    max_batch: int | None = None,
    min_hw: tuple[int, int] | None = None,
    opt_hw: tuple[int, int] | None = None,
    max_hw: tuple[int, int] | None = None,
    workspace_bytes: int = 2 << 30,
) -> Path:
    """Build a serialized TensorRT engine (``model.plan``) from ``onnx_path`` for Triton's
    ``tensorrt_plan`` platform, on the GPU of this host.

    One optimisation profile covers batch ``min_batch..max_batch`` (default ``1..card.max_batch_size``,
    opt = ``max(1, max_batch // 2)``) and, for dynamic spatial inputs (segmentation), ``(height,
    width)`` in pixels from ``min_hw..max_hw`` (defaults: :func:`default_spatial_ranges`). ``fp16``
    enables half-precision kernels (I/O stays as in the ONNX graph, FP32). The engine is tied to the
    GPU model and TensorRT version it was built with, so build on the serving host.

    Raises ``RuntimeError`` when TensorRT is not installed (message names the ``[tensorrt]`` extra)
    or when parsing/building fails (with TensorRT's parser errors); ``ValueError`` for bad ranges.
    """
    trt = _import_tensorrt()
    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    max_batch = card.max_batch_size if max_batch is None else int(max_batch)
    opt_batch = max(1, max_batch // 2) if opt_batch is None else int(opt_batch)
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise ValueError(
            f"need 1 <= min_batch <= opt_batch <= max_batch, got "
            f"{min_batch}, {opt_batch}, {max_batch}"
        )
    d_min, d_opt, d_max = default_spatial_ranges(card)
    min_hw, opt_hw, max_hw = min_hw or d_min, opt_hw or d_opt, max_hw or d_max
    if not all(a <= b <= c for a, b, c in zip(min_hw, opt_hw, max_hw)):
        raise ValueError(
            f"spatial ranges must satisfy min <= opt <= max: {min_hw} {opt_hw} {max_hw}"
        )

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    explicit = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)
    if explicit is not None and int(trt.__version__.split(".")[0]) < 10:
        flags = 1 << int(explicit)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    specs = {s.name: s for s in card.inputs}
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        spec = specs.get(tensor.name)
        if spec is None:
            raise RuntimeError(
                f"ONNX input '{tensor.name}' is not in card '{card.name}' "
                f"(card inputs: {sorted(specs)})"
            )
        lo, mid, hi = profile_shapes(
            card,
            spec,
            min_batch=min_batch,
            opt_batch=opt_batch,
            max_batch=max_batch,
            min_hw=min_hw,
            opt_hw=opt_hw,
            max_hw=max_hw,
        )
        profile.set_shape(tensor.name, lo, mid, hi)
    config.add_optimization_profile(profile)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise RuntimeError(f"TensorRT failed to build an engine for {onnx_path} (see log above)")
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    with open(plan_path, "wb") as f:
        f.write(engine)
    return plan_path


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """``python -m export.triton_config {config,plan} MODEL_DIR [...]``.

    ``config`` (re)writes ``MODEL_DIR/config.pbtxt`` from ``MODEL_DIR/card.json``; ``plan`` builds
    ``MODEL_DIR/<version>/model.plan`` from ``<version>/model.onnx`` with TensorRT and turns the entry
    into a ``tensorrt_plan`` one (same card, same name, batch range ``1..card.max_batch_size``; the
    ONNX file stays for the embedded backend).
    Exit status 2 with the :data:`TENSORRT_MISSING` message when TensorRT is absent.
    """
    import argparse
    import sys

    p = argparse.ArgumentParser(prog="python -m export.triton_config", description=main.__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("config", "plan"):
        s = sub.add_parser(name)
        s.add_argument("model_dir", type=Path)
        s.add_argument("--version", type=int, default=1)
        s.add_argument("--instance-kind", default="KIND_GPU", choices=INSTANCE_KINDS)
        s.add_argument("--instance-count", type=int, default=1)
        s.add_argument("--max-queue-delay-us", type=int, default=500)
        s.add_argument(
            "--preferred-batch-sizes",
            default=None,
            help="comma list, default powers of two up to max_batch_size",
        )
    cfg = sub.choices["config"]
    cfg.add_argument("--platform", default="onnxruntime_onnx", choices=sorted(MODEL_FILENAMES))
    cfg.add_argument(
        "--trt-accelerator",
        action="store_true",
        help="ONNX Runtime backend with its TensorRT execution accelerator",
    )
    plan = sub.choices["plan"]
    plan.add_argument("--no-fp16", dest="fp16", action="store_false")
    plan.add_argument("--min-batch", type=int, default=1)
    plan.add_argument("--opt-batch", type=int, default=None)
    for which in ("min", "opt", "max"):
        plan.add_argument(
            f"--{which}-hw",
            type=int,
            nargs=2,
            default=None,
            metavar=("H", "W"),
            help=f"{which} (height, width) of dynamic spatial inputs, pixels",
        )
    args = p.parse_args(argv)

    card = load_card(args.model_dir)
    kw: dict[str, Any] = dict(
        instance_kind=args.instance_kind,
        instance_count=args.instance_count,
        max_queue_delay_us=args.max_queue_delay_us,
    )
    if args.preferred_batch_sizes:
        kw["preferred_batch_sizes"] = [int(b) for b in args.preferred_batch_sizes.split(",")]
    if args.cmd == "config":
        path = write_config(
            card, args.model_dir, platform=args.platform, trt_accelerator=args.trt_accelerator, **kw
        )
        print(path)
        return 0
    vdir = args.model_dir / str(args.version)
    try:
        build_tensorrt_plan(
            vdir / ONNX_FILENAME,
            vdir / PLAN_FILENAME,
            card,
            fp16=args.fp16,
            min_batch=args.min_batch,
            opt_batch=args.opt_batch,
            min_hw=tuple(args.min_hw) if args.min_hw else None,
            opt_hw=tuple(args.opt_hw) if args.opt_hw else None,
            max_hw=tuple(args.max_hw) if args.max_hw else None,
        )
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2 if str(exc).startswith("TensorRT is not installed") else 1
    print(write_config(card, args.model_dir, platform="tensorrt_plan", **kw))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
