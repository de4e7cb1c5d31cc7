"""Export orchestration: registry model + weights -> ONNX -> parity check -> repository entry.

:func:`export_model` is what ``hrnet-export --arch`` runs and what other code (the training
package after a run, notebooks, tests) calls directly: no argparse, no exit codes. It reports
progress through a callable (``print`` by default, the lines ``hrnet-export`` prints) and raises:

* :class:`ExportInputError` (a ValueError) for a caller's mistake: an unknown arch, both or
  neither of checkpoint / random init, negative tolerances, a checkpoint file that is missing;
* :class:`export.onnx_export.ExportError` when the export or the ONNX Runtime vs PyTorch parity
  check fails, or the card does not match the graph (nothing is written then);
* ``training.checkpoint.CheckpointError`` for a checkpoint that cannot be downloaded or loaded.

Tensor names are the card constants of :mod:`export.cards` (``POSE_INPUT``, ``POSE_OUTPUT``,
``SEG_OUTPUT``, the bottom-up output names). Parity shapes follow the registry entry's task (see
:func:`parity_shapes`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from service.cards import ModelCard
from service.layout import ONNX_FILENAME

from .cards import BOTTOMUP_INPUT, POSE_INPUT, POSE_OUTPUT, SEG_INPUT, SEG_OUTPUT

PROG = "hrnet-export"


class ExportInputError(ValueError):
    """A caller's mistake (unknown arch, conflicting or missing weights, bad tolerance, missing
    file); ``hrnet-export`` prints its message as one line and exits with status 2."""


@dataclass(frozen=True)
class ExportedEntry:
    """A model-repository entry written by :func:`export_model`: its ``name``, folder ``path``
    (``<repository>/<name>``) and the ``card`` written to it."""

    name: str
    path: Path
    card: ModelCard


def registry_entry(arch: str) -> Any:
    """``training.registry.get_entry(arch)``; an unknown name raises :class:`ExportInputError`
    with the registry's close matches."""
    from training.registry import get_entry

    try:
        return get_entry(arch)
    except KeyError as exc:
        msg = exc.args[0] if exc.args else str(exc)
        raise ExportInputError(f"unknown arch {arch!r}: {msg} (see '{PROG} --list')") from None


def resolve_checkpoint(src: str, cache_dir: Path | str | None = None) -> Path:
    """A local checkpoint file for ``src``: a path (must exist, else :class:`ExportInputError`)
    or an ``http(s)://`` / ``file://`` URL downloaded (hash-checked) into ``cache_dir`` (None:
    ``training.checkpoint.default_cache_dir()``)."""
    if "://" in src:
        from training.checkpoint import default_cache_dir, download_checkpoint

        cache = Path(cache_dir) if cache_dir else default_cache_dir()
        return download_checkpoint(src, cache)
    path = Path(src)
    if not path.is_file():
        raise ExportInputError(f"checkpoint file not found: {path}")
    return path


def parity_shapes(
    entry: Any, check_sizes: Sequence[tuple[int, int]] | None = None
) -> tuple[tuple[int, ...], list[tuple[int, ...]]]:
    """``(sample, checks)`` NCHW shapes for a registry ``entry``: the tracing sample and the
    ONNX Runtime vs PyTorch parity inputs.

    Top-down pose: the fixed input size, batches 2 (trace), 1 and 5 (check). Bottom-up: traced at
    128x192 (dynamic H, W), checked at batches 1 and 2 of ``check_sizes`` (``(h, w)`` pixels;
    default ``S x ceil64(1.5 S)`` and ``(S + 128) x S`` for the test size ``S``). Segmentation:
    traced at a generic 96x96-ish size, checked at batch 2 of ``check_sizes`` (default half the
    training crop rounded to 32, and a third of it that is not a multiple of 32).
    """
    from .onnx_export import generic_spatial_size

    if entry.task == "topdown_pose":
        w, h = entry.input_size
        return (2, 3, int(h), int(w)), [(1, 3, int(h), int(w)), (5, 3, int(h), int(w))]
    if entry.task == "bottomup_pose":
        s = int(min(entry.input_size))
        sizes = check_sizes or [(s, -(-s * 3 // 2 // 64) * 64), (s + 128, s)]
        return (2, 3, 128, 192), [(n, 3, int(hh), int(ww)) for hh, ww in sizes for n in (1, 2)]
    crop_h, crop_w = entry.crop_size
    sizes = check_sizes or [
        (max(32, crop_h // 64 * 32), max(32, crop_w // 64 * 32)),
        generic_spatial_size(max(33, crop_h // 3), max(33, crop_w // 3)),
    ]
    return (2, 3, *generic_spatial_size(96, 96)), [(2, 3, int(hh), int(ww)) for hh, ww in sizes]


def export_model(
    arch: str,
    repository: Path | str,
    *,
    name: str | None = None,
    checkpoint: str | None = None,
    random_init: bool = False,
    cache_dir: Path | str | None = None,
    seed: int = 0,
    opset: int = 17,
    exporter: Literal["auto", "dynamo", "legacy"] = "auto",
    check: bool = True,
    atol: float = 1e-4,
    rtol: float = 1e-5,
    check_sizes: Sequence[tuple[int, int]] | None = None,
    config_kw: dict[str, Any] | None = None,
    report: Callable[[str], None] = print,
    write: Callable[[str, Path, ModelCard], tuple[Path, ModelCard]] | None = None,
) -> ExportedEntry:
    """Export registry model ``arch`` to ONNX and write it into ``repository`` as ``name``.

    Args:
        arch: a registry name (``training.registry``).
        repository: the model-repository folder (created if needed).
        name: the entry's name (default: the registry name).
        checkpoint: checkpoint file or URL (published MMPose 1.x/0.x, MMSeg or original-HRNet
            layout, loaded strictly); exactly one of ``checkpoint`` / ``random_init``.
        random_init: fixed-seed random weights (BatchNorm statistics calibrated on random input);
            the card then carries no published URL or metrics.
        cache_dir: download cache for checkpoint URLs.
        seed: seed of random weights and parity inputs.
        opset, exporter: ``torch.onnx`` opset and path (``auto``, ``dynamo``, ``legacy``).
        check: run the parity check; it passes when ``max|onnx - torch| <= atol + rtol *
            max|torch|`` for every shape of :func:`parity_shapes`.
        check_sizes: parity ``(h, w)`` sizes in pixels for segmentation / bottom-up models.
        config_kw: keywords of :func:`export.triton_config.write_config` (``max_batch_size``,
            ``instance_kind``, ...).
        report: receives one line per step (export, parity per shape, registration).
        write: registers the checked fp32 graph instead of copying it as is: called with the
            entry name, the ONNX file (a temporary path) and the card; returns the written
            entry's path and card (``hrnet-export --precision int8`` quantises there).

    Returns:
        The :class:`ExportedEntry` written.

    Raises:
        ExportInputError, ExportError, CheckpointError: see the module docstring.
    """
    entry = registry_entry(arch)
    if random_init and checkpoint:
        raise ExportInputError("give either --checkpoint or --random-init, not both")
    if not random_init and not checkpoint:
        hint = f" (published: {entry.url})" if entry.url else ""
        raise ExportInputError(f"no weights: give --checkpoint FILE_OR_URL{hint} or --random-init")
    if check and not (atol >= 0 and rtol >= 0):
        raise ExportInputError(f"--atol and --rtol must be >= 0, got {atol:g} and {rtol:g}")
    name = name or entry.name

    from training.checkpoint import load_checkpoint
    from training.models import create_model

    from .cards import bottomup_output_names, bottomup_spec, card_for_entry
    from .onnx_export import (
        _format_shape,
        calibrate_batchnorm,
        check_parity,
        export_onnx,
        onnx_metadata,
    )
    from .repository import write_entry

    pose = entry.task == "topdown_pose"
    input_name = {"topdown_pose": POSE_INPUT, "bottomup_pose": BOTTOMUP_INPUT}.get(
        entry.task, SEG_INPUT
    )
    output_name: str | list[str] = (
        POSE_OUTPUT
        if pose
        else bottomup_output_names(bottomup_spec(entry))
        if entry.task == "bottomup_pose"
        else SEG_OUTPUT
    )
    sample, checks = parity_shapes(entry, check_sizes)

    if random_init:
        model = create_model(entry.name, seed=seed)
        calibrate_batchnorm(model, sample, seed=seed)
        source = None
        notes = (
            f"RANDOM WEIGHTS (seed {seed}, BatchNorm statistics calibrated on random "
            "input): not a trained model; for tests and demos only."
        )
    else:
        if checkpoint is None:  # checked above; narrows the type
            raise ExportInputError("no weights: give --checkpoint or --random-init")
        ckpt = resolve_checkpoint(checkpoint, cache_dir)
        model = create_model(entry.name, seed=seed)
        info = load_checkpoint(model, ckpt, strict=True)
        source = checkpoint
        notes = f"Weights from {ckpt.name} ({info.get('layout')} layout, strict load)."
    model.eval()

    with tempfile.TemporaryDirectory(prefix="hrnet-export-") as tmp:
        onnx_path = Path(tmp) / ONNX_FILENAME
        export_onnx(
            model,
            onnx_path,
            input_shape=sample,
            dynamic_batch=True,
            dynamic_spatial=not pose,
            input_name=input_name,
            output_name=output_name,
            opset=opset,
            exporter=exporter,
        )
        used = onnx_metadata(onnx_path).get("exporter", "?")
        report(
            f"exported {entry.name} ({entry.arch}, {entry.task}) with the torch.onnx "
            f"{used} exporter, opset {opset}"
        )
        parity_note = "parity not checked"
        if check:
            stats = check_parity(model, onnx_path, checks, seed=seed, atol=atol, rtol=rtol)
            multi = not isinstance(output_name, str)
            for shape, st in stats.items():
                for out, err, mag, bound in st.per_output:
                    report(
                        f"parity {_format_shape(shape)}{f' {out}' if multi else ''}: max abs "
                        f"err {err:.3g} (max |torch| {mag:.3g}, allowed {bound:.3g})"
                    )
            parity_note = "ONNX Runtime vs PyTorch max abs err " + ", ".join(
                f"{_format_shape(s)}{f' {out}' if multi else ''}: {err:.2g} (max |output| "
                f"{mag:.2g})"
                for s, st in stats.items()
                for out, err, mag, _ in st.per_output
            )
        card = card_for_entry(
            entry,
            name,
            checkpoint=source,
            notes=f"{notes} Exported with torch.onnx ({used}), opset {opset}; {parity_note}.",
        )
        if random_init:  # the published URL/metrics describe weights we did not use
            card = card.model_copy(
                update={"source": card.source.model_copy(update={"url": None, "metrics": {}})}
            )
        if write is not None:
            path, card = write(name, onnx_path, card)
            return ExportedEntry(name=name, path=Path(path), card=card)
        path = write_entry(
            Path(repository), name, onnx_path, card, link="copy", **(config_kw or {})
        )
    report(f"registered {name}: {path}")
    return ExportedEntry(name=name, path=Path(path), card=card)
