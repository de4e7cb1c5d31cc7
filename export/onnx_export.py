"""PyTorch -> ONNX export of the HRNet models, and an ONNX Runtime parity check.

Two exporters exist in torch 2.x:

* ``"dynamo"``: ``torch.onnx.export(..., dynamo=True, dynamic_shapes=...)`` — the torch.export
  based exporter, the default since torch 2.9. It emits opset >= 18 and down-converts to the
  requested opset; the graph is optimised (constant folding, no dead ``Identity`` nodes).
* ``"legacy"``: ``torch.onnx.export(..., dynamo=False, dynamic_axes=...)`` — the TorchScript
  tracer, deprecated but still shipped in torch 2.13.

``exporter="auto"`` (the default) tries dynamo first and falls back to legacy if dynamo raises.
The exporter actually used is recorded in the ONNX
``metadata_props`` under ``"exporter"`` (read it back with :func:`onnx_metadata`). Either way the
result is checked with :func:`check_parity` before it is trusted.

Measured with torch 2.13 CPU on HRNet-W32 256x192: both paths give max abs errors ~5e-6 against
PyTorch; dynamo's graph is smaller (743 vs 1059 nodes: BN folded into the convs, no ``Identity``
/``Constant`` nodes) but takes ~20 s to export against ~3 s for legacy.

Dynamic ``H, W`` (segmentation) work with both exporters at any example size (e.g. 64x64): the
HRNet-seg fusion computes its upsampled sizes from the symbolic input shape (no ``int()``) and
applies MMSeg's second resize unconditionally (an exact identity where sizes match), so the
traced graph has no size-dependent branch. Measured (torch 2.13 CPU, HRNet-W18-small, 19
classes, example 2x3x64x64): dynamo ~20 s (552 nodes), legacy ~1 s (1319 nodes); ONNX Runtime vs
PyTorch max abs err <= 6e-5 at 64x128, 97x97, 100x75 and 256x512 with either. A model with
``int(size * k)`` arithmetic would still get the example size baked in by either exporter;
verify every graph at sizes other than the example with :func:`check_parity`
(:func:`generic_spatial_size` picks sizes that exercise every HRNet second resize).

torch is imported lazily, inside the functions, so ``from export.onnx_export import ExportError``
stays cheap for torch-free callers (registering an existing ONNX file).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np

log = logging.getLogger(__name__)

Exporter = Literal["auto", "dynamo", "legacy"]
#: one output name, or one per output of a multi-output model (HigherHRNet: one per stage)
OutputNames = str | Sequence[str]


def _output_list(output_name: OutputNames) -> list[str]:
    return [output_name] if isinstance(output_name, str) else [str(n) for n in output_name]


class ExportError(RuntimeError):
    """Export, verification or registration of a model failed (bad graph, parity above tolerance,
    card/graph mismatch). The message names the model/shape/tensor concerned."""


def cpu_session(
    model: Path | str | bytes, *, log_severity_level: int | None = None, wrap_errors: bool = True
):
    """An ``onnxruntime.InferenceSession`` of ``model`` on the CPU execution provider only.

    ``model`` is an ONNX file's path or a serialised ``ModelProto`` (``bytes``).
    ``log_severity_level`` sets ``SessionOptions.log_severity_level`` (3: errors only, silencing
    ONNX Runtime's warnings); ``None`` passes no ``SessionOptions`` at all (ONNX Runtime's
    defaults: graph optimisations on, its own thread counts and log level).

    Raises :class:`ExportError` ``"ONNX Runtime cannot load <model>: <reason>"`` when ONNX
    Runtime cannot load the model, or, with ``wrap_errors=False``, ONNX Runtime's own exception
    unchanged (for callers that document or wrap it themselves).
    """
    import onnxruntime as ort

    opts = None
    if log_severity_level is not None:
        opts = ort.SessionOptions()
        opts.log_severity_level = log_severity_level
    source = model if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(source, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        if not wrap_errors:
            raise
        what = "the in-memory model" if isinstance(model, bytes) else model
        raise ExportError(f"ONNX Runtime cannot load {what}: {exc}") from exc


def _shape_key(shape: Sequence[int]) -> tuple[int, ...]:
    return tuple(int(s) for s in shape)


def _format_shape(shape: Sequence[int]) -> str:
    return "x".join(str(int(s)) for s in shape)


def _axis_names(
    dynamic_batch: bool, dynamic_spatial: bool, outputs: Sequence[str] = ("output",)
) -> tuple[dict[int, str], list[dict[int, str]]]:
    """``(input axes, [axes of each output])``: symbolic name per dynamic axis of the NCHW input
    and outputs (``batch``; ``height``/``width``, and ``out_height``/``out_width`` for a single
    output or ``<output>_height``/``<output>_width`` for each of several, whose sizes differ)."""
    in_names: dict[int, str] = {}
    if dynamic_batch:
        in_names[0] = "batch"
    if dynamic_spatial:
        in_names.update({2: "height", 3: "width"})
    out_names = []
    for name in outputs:
        axes = {0: "batch"} if dynamic_batch else {}
        if dynamic_spatial:
            prefix = "out" if len(outputs) == 1 else name
            axes.update({2: f"{prefix}_height", 3: f"{prefix}_width"})
        out_names.append(axes)
    return in_names, out_names


def onnx_metadata(path: Path | str) -> dict[str, str]:
    """The ``metadata_props`` key/value pairs of an ONNX file (e.g. ``{"exporter": "dynamo"}``).

    Reads only the graph header (external data is not loaded). Raises ``FileNotFoundError``.
    """
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def _finalise_graph(
    path: Path,
    *,
    input_name: str,
    output_name: OutputNames,
    dynamic_batch: bool,
    dynamic_spatial: bool,
    metadata: dict[str, str],
) -> None:
    """Name the dynamic axes uniformly (batch/height/width), add metadata, check the graph."""
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    inputs = [i for i in graph.input if i.name not in {init.name for init in graph.initializer}]
    if len(inputs) != 1 or inputs[0].name != input_name:
        raise ExportError(
            f"exported graph has inputs {[i.name for i in inputs]}, "
            f"expected exactly [{input_name!r}]"
        )
    outputs = _output_list(output_name)
    if [o.name for o in graph.output] != outputs:
        raise ExportError(
            f"exported graph has outputs {[o.name for o in graph.output]}, "
            f"expected exactly {outputs}"
        )

    def rename(value_info, names: dict[int, str]) -> None:
        dims = value_info.type.tensor_type.shape.dim
        for axis, sym in names.items():
            if axis < len(dims) and not dims[axis].HasField("dim_value"):
                dims[axis].dim_param = sym

    in_names, out_names = _axis_names(dynamic_batch, dynamic_spatial, outputs)
    rename(inputs[0], in_names)
    for vi, names in zip(graph.output, out_names):
        rename(vi, names)

    # the contract: batch (and spatial, if asked) axes symbolic, everything else static
    for vi, wanted in ((inputs[0], in_names), *zip(graph.output, out_names)):
        dims = vi.type.tensor_type.shape.dim
        for axis in wanted:
            if axis < len(dims) and dims[axis].HasField("dim_value"):
                raise ExportError(
                    f"axis {axis} of {vi.name!r} came out static "
                    f"({dims[axis].dim_value}); the exporter specialised it"
                )

    existing = {p.key: p for p in model.metadata_props}
    for key, value in metadata.items():
        if key in existing:
            existing[key].value = value
        else:
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    tmp = path.with_name(path.name + ".tmp")
    onnx.save(model, str(tmp))
    os.replace(tmp, path)


@contextlib.contextmanager
def _quiet_loggers(*names: str, level: int = logging.ERROR):
    """Raise the level of the named loggers for the duration (exporter progress chatter such as
    'torchvision is not installed' or the opset down-conversion notice)."""
    loggers = [logging.getLogger(n) for n in names]
    saved = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(level)
    try:
        yield
    finally:
        for lg, lvl in zip(loggers, saved):
            lg.setLevel(lvl)


def _export_dynamo(
    model,
    sample,
    path: Path,
    *,
    input_name: str,
    output_name: OutputNames,
    opset: int,
    dynamic_batch: bool,
    dynamic_spatial: bool,
) -> None:
    import torch
    from torch.export import Dim

    axes: dict[int, Any] = {}
    if dynamic_batch:
        axes[0] = Dim("batch", min=1, max=1024)
    if dynamic_spatial:
        axes[2] = Dim.DYNAMIC
        axes[3] = Dim.DYNAMIC
    # torch.export's non-strict front end (HRNet-W18-small seg: ~20 s vs ~31 s strict). It
    # would turn ``int(sym_size * k)`` into the example's constant without narrowing the axis
    # range; HRNet's fusion has no such ``int()``, and check_parity at other sizes catches it.
    with (
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()),
        warnings.catch_warnings(),
        _quiet_loggers("torch.onnx", "torch.export", "onnxscript"),
    ):
        warnings.simplefilter("ignore")
        program = torch.export.export(model, (sample,), dynamic_shapes=(axes,), strict=False)
        onnx_program = torch.onnx.export(
            program,
            (sample,),
            None,
            dynamo=True,
            input_names=[input_name],
            output_names=_output_list(output_name),
            opset_version=opset,
            external_data=False,
            optimize=True,
            verbose=False,
            report=False,
        )
        if onnx_program is None:
            raise RuntimeError("torch.onnx.export(dynamo=True) returned no program")
        onnx_program.save(str(path), external_data=False)


def _export_legacy(
    model,
    sample,
    path: Path,
    *,
    input_name: str,
    output_name: OutputNames,
    opset: int,
    dynamic_batch: bool,
    dynamic_spatial: bool,
) -> None:
    import torch

    outputs = _output_list(output_name)
    in_axes, out_axes = _axis_names(dynamic_batch, dynamic_spatial, outputs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (sample,),
            str(path),
            dynamo=False,
            input_names=[input_name],
            output_names=outputs,
            opset_version=opset,
            do_constant_folding=True,
            dynamic_axes={input_name: in_axes, **dict(zip(outputs, out_axes))} if in_axes else None,
        )


def export_onnx(
    model,
    path: Path | str,
    *,
    input_shape: Sequence[int],
    dynamic_batch: bool = True,
    dynamic_spatial: bool = False,
    input_name: str = "input",
    output_name: OutputNames = "heatmaps",
    opset: int = 17,
    exporter: Exporter = "auto",
) -> Path:
    """Export ``model`` (an ``nn.Module`` mapping one float32 NCHW tensor to one tensor, or to a
    tuple of tensors) to ONNX.

    Args:
        model: put in ``eval()`` mode and moved to CPU (in place) before tracing.
        path: destination ``.onnx`` file (parent directories are created). Weights are stored
            inline (no external-data file).
        input_shape: ``(N, 3, H, W)`` of the example input used for tracing (pixels). Use
            ``N >= 2`` for a dynamic batch: torch.export specialises size-1 axes.
        dynamic_batch: make axis 0 of input and output symbolic (``"batch"``).
        dynamic_spatial: also make ``H``/``W`` symbolic (``"height"``/``"width"``; the output
            axes are ``"out_height"``/``"out_width"``) — segmentation models. Any example
            ``H, W`` works for HRNet; check the graph at other sizes with :func:`check_parity`.
        input_name / output_name: graph tensor names (``"heatmaps"`` for pose, ``"logits"``
            for segmentation; a list of names, in order, for a model returning a tuple, e.g.
            the HigherHRNet stages); they become the Triton/card tensor names. Several outputs
            get their own spatial axis names ``<output>_height``/``<output>_width``.
        opset: ONNX opset. The dynamo exporter builds at >= 18 and down-converts.
        exporter: ``"auto"`` (dynamo, else legacy), ``"dynamo"`` or ``"legacy"``.

    Returns the written path. The file's ``metadata_props`` record ``exporter``,
    ``torch_version``, ``opset`` and ``sample_input_shape``.

    Raises:
        ExportError: the exporter failed (both, for ``"auto"``), the graph does not have exactly
            the named input/output, or a requested dynamic axis came out static.
        ValueError: ``input_shape`` is not 4-D, or an unknown ``exporter``.
    """
    import torch

    if len(input_shape) != 4:
        raise ValueError(f"input_shape must be (N, 3, H, W), got {tuple(input_shape)}")
    order = {"auto": ("dynamo", "legacy"), "dynamo": ("dynamo",), "legacy": ("legacy",)}
    if exporter not in order:
        raise ValueError(f"exporter must be one of {sorted(order)}, got {exporter!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval().cpu()
    sample = torch.zeros(_shape_key(input_shape), dtype=torch.float32)
    kw: dict[str, Any] = dict(
        input_name=input_name,
        output_name=output_name,
        opset=opset,
        dynamic_batch=dynamic_batch,
        dynamic_spatial=dynamic_spatial,
    )
    errors: list[str] = []
    for name in order[exporter]:
        fn = _export_dynamo if name == "dynamo" else _export_legacy
        try:
            with torch.no_grad():
                fn(model, sample, path, **kw)
            _finalise_graph(
                path,
                input_name=input_name,
                output_name=output_name,
                dynamic_batch=dynamic_batch,
                dynamic_spatial=dynamic_spatial,
                metadata={
                    "exporter": name,
                    "torch_version": torch.__version__,
                    "opset": str(opset),
                    "sample_input_shape": _format_shape(input_shape),
                },
            )
            log.info("exported %s with the %s exporter", path, name)
            return path
        except Exception as exc:
            errors.append(f"{name}: {type(exc).__name__}: {exc}")
            log.warning("%s exporter failed: %s", name, exc)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    raise ExportError(f"ONNX export to {path} failed: " + " | ".join(errors))


def _conv_out(size: int) -> int:
    """Output length of a 3x3, stride-2, padding-1 convolution (HRNet stem/transition)."""
    return (size - 1) // 2 + 1


def _branch_sizes(size: int, num_branches: int = 4) -> list[int]:
    sizes = [_conv_out(_conv_out(size))]  # the stem: two stride-2 convs -> 1/4
    while len(sizes) < num_branches:
        sizes.append(_conv_out(sizes[-1]))
    return sizes


def generic_spatial_size(
    min_h: int = 96, min_w: int = 96, num_branches: int = 4
) -> tuple[int, int]:
    """Smallest ``(H, W)`` >= ``(min_h, min_w)`` (pixels) at which no HRNet branch upsampled by
    ``2**(j-i)`` lands exactly on branch ``i``'s size, in either axis.

    HRNet (MMSeg) fuses branch ``j`` into branch ``i < j`` by upsampling x``2**(j-i)`` and then
    resizing to branch ``i``'s size, which changes the values only where the two sizes differ
    (inputs not a multiple of 32). At a size returned here every one of those second resizes is
    a real (non-identity) resample, so it is a good size at which to check an exported graph
    against PyTorch (:func:`check_parity`); it is no longer needed as the *example* size of
    the export (``training.hrnet`` traces the same graph at every size). Branch sizes follow
    the stem (two 3x3 stride-2 convs) and one 3x3 stride-2 conv per further branch:
    ``s -> (s - 1) // 2 + 1``.
    """

    def ok(size: int) -> bool:
        b = _branch_sizes(size, num_branches)
        return all(
            b[j] * 2 ** (j - i) != b[i]
            for i in range(num_branches)
            for j in range(i + 1, num_branches)
        )

    def first(lo: int) -> int:
        s = max(int(lo), 1)
        while not ok(s):
            s += 1
        return s

    return first(min_h), first(min_w)


def calibrate_batchnorm(model, input_shape: Sequence[int], seed: int = 0):
    """Set every BatchNorm's running mean/var to the batch statistics of one random input.

    For randomly initialised models only (tests, demos, ``--random-init``): with the default
    running stats (mean 0, var 1) a random HRNet's outputs either vanish (MMPose init,
    ``N(0, 0.001)`` convs: heatmaps ~1e-10) or explode (Kaiming init), which makes an absolute
    parity tolerance meaningless. After calibration every BN output has roughly zero mean and
    unit variance on normalised-image-like input (standard normal, ``numpy`` ``default_rng(seed)``,
    shape ``(N, 3, H, W)``, ``N >= 2``), as in a trained network. Affine BN weights and conv
    weights are unchanged. Returns ``model`` in ``eval()`` mode (modified in place).
    """
    import torch

    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: after one batch, exactly that batch's stats
    x = np.random.default_rng(seed).standard_normal(_shape_key(input_shape), dtype=np.float32)
    model.train()
    try:
        with torch.no_grad():
            model(torch.from_numpy(x))
    finally:
        for m, mom in zip(bns, saved):
            m.momentum = mom
        model.eval()
    return model


class ParityStats(NamedTuple):
    """ONNX Runtime vs PyTorch on one input shape (float32 units of the output: heatmap values
    or logits).

    ``max_abs_err``: ``max |ort - torch|``; ``ref_max_abs``: ``max |torch|`` (the reference
    magnitude); ``bound``: the allowed error ``atol + rtol * ref_max_abs``. For a model with
    several outputs these describe the one closest to (or furthest past) its own bound, named
    by ``output``, and ``per_output`` holds ``(name, max_abs_err, ref_max_abs, bound)`` of each.
    """

    max_abs_err: float
    ref_max_abs: float
    bound: float
    output: str = ""
    per_output: tuple[tuple[str, float, float, float], ...] = ()

    @property
    def ok(self) -> bool:
        """``max_abs_err <= bound`` (False for NaN)."""
        return bool(self.max_abs_err <= self.bound)


def check_parity(
    model,
    onnx_path: Path | str,
    shapes: Iterable[Sequence[int]],
    seed: int = 0,
    atol: float = 1e-4,
    rtol: float = 1e-5,
) -> dict[tuple[int, ...], ParityStats]:
    """Run PyTorch and ONNX Runtime (CPU) on the same random input and compare.

    For each ``shape`` ``(N, 3, H, W)`` an input is drawn from a standard normal
    (``numpy.random.default_rng(seed)``, float32 — the range of a mean/std-normalised image) and
    fed to ``model`` (in ``eval()`` mode, ``torch.no_grad``) and to the ONNX graph. Outputs are
    matched by position: every ONNX output against the module's tensor or tuple of tensors
    (their counts must agree); each output is held to its own bound.

    The criterion scales with the output's magnitude, since float32 rounding error does:
    ``max|ort - torch| <= atol + rtol * max|torch|`` per shape (one ``rtol * max`` for the whole
    tensor, not per element as ``numpy.allclose``, so near-zero logits of a large-logit model get
    the same slack as the large ones). Measured on HRNet-W18-small segmentation with logits up
    to ~100: errors ~6e-6 of ``max|torch|`` (5.6e-4 at max 98), which an absolute ``atol=1e-4``
    alone would reject; with heatmaps (max ~1) the bound stays ~``atol``.

    Returns ``{shape: ParityStats(max_abs_err, ref_max_abs, bound)}``.

    Raises:
        ExportError: the output count or an output shape differs, or some shape's
            ``max_abs_err`` exceeds its bound
            (the message lists every shape with its error, reference magnitude and bound); also
            if ONNX Runtime cannot load/run the file.
        ValueError: a negative ``atol`` or ``rtol``.
    """
    import torch

    if not (atol >= 0 and rtol >= 0):
        raise ValueError(f"atol and rtol must be >= 0, got atol={atol}, rtol={rtol}")
    model = model.eval().cpu()
    session = cpu_session(onnx_path)
    in_name = session.get_inputs()[0].name
    out_names = [o.name for o in session.get_outputs()]
    rng = np.random.default_rng(seed)
    stats: dict[tuple[int, ...], ParityStats] = {}
    for shape in shapes:
        key = _shape_key(shape)
        x = rng.standard_normal(key, dtype=np.float32)
        with torch.no_grad():
            refs = model(torch.from_numpy(x))
        refs = list(refs) if isinstance(refs, (tuple, list)) else [refs]
        try:
            gots = session.run(out_names, {in_name: x})
        except Exception as exc:
            raise ExportError(f"ONNX Runtime failed on input {_format_shape(key)}: {exc}") from exc
        if len(gots) != len(refs):
            raise ExportError(
                f"the ONNX graph has {len(gots)} outputs {out_names}, the model returns {len(refs)}"
            )
        per_output = []
        for name, got, ref in zip(out_names, gots, refs):
            ref = ref.detach().cpu().numpy().astype(np.float64)
            if got.shape != ref.shape:
                raise ExportError(
                    f"output {name!r} shape mismatch on input "
                    f"{_format_shape(key)}: onnx {got.shape} vs torch {ref.shape}"
                )
            err = float(np.max(np.abs(got.astype(np.float64) - ref))) if ref.size else 0.0
            mag = float(np.max(np.abs(ref))) if ref.size else 0.0
            per_output.append((name, err, mag, float(atol + rtol * mag)))
        # the output nearest its bound (NaN errors first) speaks for the shape
        worst = max(
            per_output, key=lambda o: np.inf if np.isnan(o[1]) else o[1] / max(o[3], 1e-300)
        )
        stats[key] = ParityStats(worst[1], worst[2], worst[3], worst[0], tuple(per_output))
    if not all(s.ok for s in stats.values()):
        detail = ", ".join(
            f"{_format_shape(k)}{f' {name}' if len(s.per_output) > 1 else ''}: "
            f"max abs err {err:.3g} (max |torch| {mag:.3g}, allowed {bound:.3g})"
            for k, s in stats.items()
            for name, err, mag, bound in s.per_output
        )
        raise ExportError(
            f"ONNX/PyTorch parity above atol={atol:g} + rtol={rtol:g} * max|torch| ({detail})"
        )
    return stats


__all__ = [
    "ExportError",
    "Exporter",
    "OutputNames",
    "ParityStats",
    "calibrate_batchnorm",
    "check_parity",
    "cpu_session",
    "export_onnx",
    "generic_spatial_size",
    "onnx_metadata",
]
