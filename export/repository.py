"""Writing model-repository entries: ``<repo>/<name>/{config.pbtxt, card.json, 1/model.onnx}``.

The layout is Triton's (read by Triton Inference Server and by the gateway's
:class:`service.repository.ModelRepository`). An entry is assembled in a staging folder and moved
into place with renames, so a reader sees either the old entry or the new one, never a half
written one; rewriting identical content leaves the existing files untouched (no Triton reload).

Before writing, the card is checked against the ONNX graph (:func:`card_mismatches`): tensor
names, data types, ranks and static dims must agree, as Triton requires of ``config.pbtxt``.
Torch-free (onnxruntime only).
"""

from __future__ import annotations

import filecmp
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Literal

import numpy as np

from service.cards import ModelCard, TensorSpec, parse_card
from service.dtypes import NUMPY_DTYPES, ORT_DTYPES
from service.layout import CARD_FILENAME, CONFIG_FILENAME, MODEL_VERSION
from service.layout import ONNX_FILENAME as MODEL_FILENAME

from .onnx_export import ExportError, cpu_session

log = logging.getLogger(__name__)

STAGING_DIRNAME = ".staging"

LinkMode = Literal["copy", "hardlink", "symlink"]
OnnxSource = str | os.PathLike | bytes


def onnx_signature(onnx_path: Path | str, _sess=None) -> dict[str, dict[str, tuple[str, list]]]:
    """Inputs and outputs of an ONNX file as ONNX Runtime reports them.

    Returns ``{"inputs": {name: (dtype, shape)}, "outputs": {...}}`` where ``dtype`` is a card
    dtype (``"FP32"``, ...; the raw ORT string if unknown) and ``shape`` is the full shape
    *including* the batch axis, each dim an ``int`` or a ``str``/``None`` for a symbolic axis.
    Raises :class:`ExportError` if ONNX Runtime cannot load the file.
    """
    sess = _sess if _sess is not None else cpu_session(onnx_path)

    def table(args) -> dict[str, tuple[str, list]]:
        return {a.name: (ORT_DTYPES.get(a.type, a.type), list(a.shape)) for a in args}

    return {"inputs": table(sess.get_inputs()), "outputs": table(sess.get_outputs())}


def _static(d: Any) -> bool:
    return isinstance(d, int) and d >= 0


def card_mismatches(card: ModelCard, onnx_path: Path | str, *, probe: bool = True) -> list[str]:
    """Every way ``card`` disagrees with the ONNX graph at ``onnx_path``; empty when they agree.

    Checks (Triton's rules for ``config.pbtxt`` with ``max_batch_size > 0``):

    * the card's inputs are exactly the graph's inputs (by name), its outputs a subset of the
      graph's outputs; data types equal;
    * graph rank = ``len(dims) + 1`` (the batch axis); the graph's batch axis is symbolic, or
      static 1 when ``card.max_batch_size == 1``;
    * each static graph dim equals the card dim; a symbolic graph dim accepts any card dim.

    With ``probe`` the graph is also run once on zeros of batch 1 at the card's input dims
    (``-1`` -> 64 pixels), and every positive card output dim must equal the produced size
    (this catches symbolic graph dims such as RTMDet's ``dets`` last axis).
    Raises :class:`ExportError` only if the file cannot be loaded/run.
    """
    sess = cpu_session(onnx_path)
    sig = onnx_signature(onnx_path, sess)
    problems: list[str] = []

    def compare(kind: str, spec: TensorSpec, dtype: str, shape: list) -> None:
        if dtype != spec.dtype:
            problems.append(f"{kind} {spec.name!r}: card dtype {spec.dtype}, graph {dtype}")
        if len(shape) != len(spec.dims) + 1:
            problems.append(
                f"{kind} {spec.name!r}: card dims {spec.dims} (+ batch) but graph shape {shape}"
            )
            return
        batch = shape[0]
        if _static(batch) and not (batch == 1 and card.max_batch_size == 1):
            problems.append(
                f"{kind} {spec.name!r}: graph batch axis is static ({batch}) but "
                f"max_batch_size is {card.max_batch_size}"
            )
        for axis, (g, c) in enumerate(zip(shape[1:], spec.dims), start=1):
            if _static(g) and g != c:
                problems.append(f"{kind} {spec.name!r} axis {axis}: card {c}, graph {g}")

    graph_in, graph_out = sig["inputs"], sig["outputs"]
    card_in = {s.name: s for s in card.inputs}
    if set(card_in) != set(graph_in):
        problems.append(f"inputs: card {sorted(card_in)}, graph {sorted(graph_in)}")
    for name, spec in card_in.items():
        if name in graph_in:
            compare("input", spec, *graph_in[name])
    for spec in card.outputs:
        if spec.name not in graph_out:
            problems.append(f"output {spec.name!r} not in graph outputs {sorted(graph_out)}")
        else:
            compare("output", spec, *graph_out[spec.name])

    if probe and not problems:
        feed: dict[str, np.ndarray] = {
            s.name: np.zeros(
                [1] + [d if d > 0 else 64 for d in s.dims], dtype=NUMPY_DTYPES[s.dtype]
            )
            for s in card.inputs
        }
        names = [s.name for s in card.outputs]
        try:
            outs = sess.run(names, feed)
        except Exception as exc:
            raise ExportError(
                f"{onnx_path} failed on a zero input of the card's size: {exc}"
            ) from exc
        for spec, out in zip(card.outputs, outs):
            got = list(out.shape[1:])
            if len(got) != len(spec.dims) or any(c > 0 and c != g for c, g in zip(spec.dims, got)):
                problems.append(
                    f"output {spec.name!r}: card dims {spec.dims}, produced {got} (batch 1)"
                )
    return problems


def check_card(card: ModelCard, onnx_path: Path | str, *, probe: bool = True) -> None:
    """Raise :class:`ExportError` listing :func:`card_mismatches` if there are any."""
    problems = card_mismatches(card, onnx_path, probe=probe)
    if problems:
        raise ExportError(f"card {card.name!r} does not match {onnx_path}: " + "; ".join(problems))


def _place_model(src: OnnxSource, dst: Path, link: LinkMode) -> None:
    if isinstance(src, (bytes, bytearray)):
        dst.write_bytes(bytes(src))
        return
    src = Path(src)
    if not src.is_file():
        raise FileNotFoundError(f"ONNX file not found: {src}")
    if link == "symlink":
        dst.symlink_to(src.resolve())
    elif link == "hardlink":
        try:
            os.link(src, dst)
        except OSError:  # other filesystem / not permitted: fall back to a copy
            shutil.copyfile(src, dst)
    elif link == "copy":
        shutil.copyfile(src, dst)
    else:
        raise ValueError(f"link must be 'copy', 'hardlink' or 'symlink', got {link!r}")


def _same_entry(a: Path, b: Path) -> bool:
    """True when entry folders ``a`` and ``b`` hold the same three files with the same bytes
    (a symlinked model counts as equal when both point at the same file)."""
    rel = (CONFIG_FILENAME, CARD_FILENAME, f"{MODEL_VERSION}/{MODEL_FILENAME}")
    for r in rel:
        fa, fb = a / r, b / r
        if not (fa.exists() and fb.exists()):
            return False
        if fa.is_symlink() or fb.is_symlink():
            if not (fa.is_symlink() and fb.is_symlink() and os.readlink(fa) == os.readlink(fb)):
                return False
        elif not filecmp.cmp(fa, fb, shallow=False):
            return False
    return True


def write_entry(
    repo_dir: Path | str,
    name: str,
    onnx_src_or_bytes: OnnxSource,
    card: ModelCard,
    *,
    link: LinkMode = "copy",
    validate: bool = True,
    **config_kw: Any,
) -> Path:
    """Write the repository entry ``<repo_dir>/<name>/`` and return its folder.

    Writes ``config.pbtxt`` (:func:`export.triton_config.write_config` with ``config_kw``:
    ``platform``, ``max_batch_size``, ``preferred_batch_sizes``, ``max_queue_delay_us``,
    ``instance_kind``, ``instance_count``, ``trt_accelerator``, ...), ``card.json``
    (``card.save``) and ``1/model.onnx``.

    Args:
        repo_dir: the model repository (created if missing).
        name: model name = folder name = Triton model name; the card is saved with
            ``name`` (and with ``max_batch_size`` from ``config_kw`` if given), so card and
            config always agree.
        onnx_src_or_bytes: path of an ONNX file, or its bytes.
        link: ``"copy"`` (default), ``"hardlink"`` (falls back to copy across filesystems) or
            ``"symlink"`` (absolute; for big shared files that must not be duplicated).
        validate: check the card against the graph first (:func:`check_card`).

    Idempotent: if the entry exists with byte-identical files it is left untouched. Otherwise
    the new entry is staged in ``<repo_dir>/.staging/`` and swapped in by two renames; the
    staging folder is removed afterwards.

    Raises :class:`ExportError` (card/graph mismatch), ``FileNotFoundError`` (missing ONNX
    file), ``ValueError`` (bad name/link/config keywords).
    """
    if not name or "/" in name or name.startswith(".") or name != name.strip():
        raise ValueError(f"invalid model name {name!r}")
    repo = Path(repo_dir)
    repo.mkdir(parents=True, exist_ok=True)
    updates: dict[str, Any] = {"name": name}
    if config_kw.get("max_batch_size") is not None:
        updates["max_batch_size"] = int(config_kw["max_batch_size"])
    card = parse_card(card.model_copy(update=updates).model_dump())

    from .triton_config import write_config  # lazy: keeps import of this module light

    staging_root = repo / STAGING_DIRNAME
    staging_root.mkdir(exist_ok=True)
    token = uuid.uuid4().hex[:8]
    stage = staging_root / f"{name}-{token}"
    old = staging_root / f"{name}-{token}-old"
    try:
        (stage / MODEL_VERSION).mkdir(parents=True)
        model_path = stage / MODEL_VERSION / MODEL_FILENAME
        _place_model(onnx_src_or_bytes, model_path, link)
        if validate:
            check_card(card, model_path)
        card.save(stage)
        write_config(card, stage, **config_kw)

        target = repo / name
        if target.is_dir() and _same_entry(stage, target):
            log.info("%s unchanged", target)
            return target
        if target.exists() or target.is_symlink():
            os.replace(target, old)
        os.replace(stage, target)
        log.info("wrote %s", target)
        return target
    finally:
        for leftover in (stage, old):
            if leftover.is_symlink() or leftover.is_file():
                leftover.unlink()
            elif leftover.exists():
                shutil.rmtree(leftover, ignore_errors=True)
        try:
            staging_root.rmdir()  # only if empty: another writer may be staging too
        except OSError:
            pass


__all__ = [
    "MODEL_FILENAME",
    "MODEL_VERSION",
    "ORT_DTYPES",
    "card_mismatches",
    "check_card",
    "onnx_signature",
    "write_entry",
]
