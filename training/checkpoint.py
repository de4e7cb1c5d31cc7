"""Checkpoints: read the published HRNet layouts safely, map them onto our models, write them.

Published layouts (``state_dict`` keys; ``<bb>`` = the HRNet backbone keys of
:mod:`training.hrnet`, e.g. ``conv1.weight``, ``stage4.2.fuse_layers.0.3.0.1.weight``):

============  =================================================================================
``mmpose1``   ``{"meta": {...}, "state_dict": {"backbone.<bb>", "head.final_layer.*"}}``
              (MMPose 1.x, mmengine; ``meta`` may hold numpy arrays, e.g. ``dataset_meta``)
``mmpose0``   ``{"meta": {...}, "state_dict": {"backbone.<bb>", "keypoint_head.final_layer.*"}}``
              (MMPose 0.x, ``TopdownHeatmapSimpleHead`` with no deconv/extra conv layers)
``hrnet``     a bare state_dict ``{"<bb>", "final_layer.*"}`` (leoxiaobin/
              deep-high-resolution-net.pytorch ``PoseHighResolutionNet``)
``mmpose0``   (bottom-up) ``{"meta", "state_dict": {"backbone.<bb>",
              "keypoint_head.final_layers.*", "keypoint_head.deconv_layers.*"}}``
              (MMPose 0.x ``AEHigherResolutionHead``)
``higherhrnet`` a bare state_dict ``{"<bb>", "final_layers.*", "deconv_layers.*"}``
              (HRNet/HigherHRNet-Human-Pose-Estimation ``PoseHigherResolutionNet``)
``mmseg``     ``{"meta": {...}, "state_dict": {"backbone.<bb>", "decode_head.convs.0.conv.weight",
              "decode_head.convs.0.bn.*", "decode_head.conv_seg.*"}}`` (MMSeg 0.x and 1.x
              ``FCNHead``; FCN-HRNet configs have no ``auxiliary_head``)
============  =================================================================================

Our own key names (``model.state_dict()``) are the ``mmpose1`` ones for pose (``backbone.*`` +
``head.*``, also for the bottom-up HigherHRNet, whose head has no MMPose 1.x checkpoint) and the
``mmseg`` ones for segmentation. A uniform ``module.`` prefix (DataParallel) is stripped.
BatchNorm ``num_batches_tracked`` counters absent from a file are taken from the model
(old files lack them; they do not affect inference); every other key must match exactly.

Loading is always ``torch.load(weights_only=True)``: only tensors, containers, primitive
types and an explicit allow-list of numpy types (what numpy arrays and numpy scalars in
``meta`` need, under both the numpy 1.x ``numpy.core`` and numpy 2.x ``numpy._core`` names)
are unpickled. Anything else (a custom class, ``os.system``...) is refused with
:class:`CheckpointError`.
"""

from __future__ import annotations

import collections
import hashlib
import os
import re
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "LAYOUTS",
    "TASK_LAYOUTS",
    "CheckpointError",
    "numpy_safe_globals",
    "read_checkpoint",
    "extract_state_dict",
    "detect_layout",
    "convert_state_dict",
    "to_layout",
    "load_checkpoint",
    "save_checkpoint",
    "hash_prefix",
    "sha256_file",
    "download_checkpoint",
    "default_cache_dir",
]

LAYOUTS = ("mmpose1", "mmpose0", "hrnet", "higherhrnet", "mmseg")
#: the layouts each task's models load and save (HigherHRNet has MMPose 0.x and original files)
TASK_LAYOUTS = {
    "topdown_pose": ("mmpose1", "mmpose0", "hrnet"),
    "bottomup_pose": ("mmpose0", "higherhrnet"),
    "segmentation": ("mmseg",),
}
#: bare (prefix-free) layouts: the head's top-level module names in the file
_BARE_HEADS = {"hrnet": ("final_layer",), "higherhrnet": ("final_layers", "deconv_layers")}


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read, recognised or loaded; the message says exactly why."""


# ----------------------------------------------------------------------------- safe reading


def numpy_safe_globals() -> list[Any]:
    """The numpy globals allowed when unpickling a checkpoint (for ``torch.serialization.safe_globals``).

    Exactly what numpy arrays and numpy scalars need (found by unpickling such objects under
    ``weights_only=True`` and adding each global it refused): the array reconstructor and
    ``ndarray``, the scalar reconstructor, ``numpy.dtype`` and the concrete dtype classes of
    the boolean, integer and floating dtypes (``numpy.dtypes.Float32DType``...), which the
    unpickler must be allowed to ``BUILD``. The reconstructors are registered under both
    their numpy 2 (``numpy._core.multiarray``) and numpy 1 (``numpy.core.multiarray``) names,
    so files written with either numpy load. No object, string or void dtypes.
    """
    try:
        from numpy._core import multiarray as _ma  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray as _ma  # type: ignore[no-redef]
    allowed: list[Any] = [np.ndarray, np.dtype]
    for fn in (_ma._reconstruct, _ma.scalar):
        allowed.append(fn)
        for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            allowed.append((fn, f"{module}.{fn.__name__}"))
    for name in (
        "bool",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "float16",
        "float32",
        "float64",
    ):
        allowed.append(type(np.dtype(name)))
    return allowed


def read_checkpoint(path: str | os.PathLike) -> Any:
    """Unpickle a checkpoint file safely (``weights_only=True`` + :func:`numpy_safe_globals`).

    Handles both torch file formats (zip and the legacy one MMPose/MMSeg publish with).
    Tensors are mapped to CPU. Returns the unpickled object (usually a dict).
    Raises :class:`CheckpointError` for a missing/unreadable file or a file that needs any
    other global (the message names it and says it was refused); never falls back to
    ``weights_only=False``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        with torch.serialization.safe_globals(numpy_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError / RuntimeError / ValueError...
        msg = str(exc).strip()
        m = re.search(
            r"(Unsupported global: GLOBAL [\w.]+|but got <class '[\w.]+'>|"
            r"Unsupported operand \d+)",
            msg,
        )
        if m:
            detail = m.group(1)
        else:
            detail = msg.splitlines()[0][:300] if msg else type(exc).__name__
        raise CheckpointError(
            f"refusing to load {path}: it is not a plain weights file that can be unpickled "
            f"safely (weights_only=True, numpy arrays allowed): {detail}"
        ) from exc


# ----------------------------------------------------------------------------- layouts


def extract_state_dict(checkpoint: Any) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split a loaded checkpoint into ``(state_dict, meta)``.

    Accepts ``{"state_dict": sd, "meta": ...}`` (mmengine/mmcv), ``{"model": sd}`` or a bare
    mapping of tensors (original HRNet repo). A uniform ``module.`` prefix is stripped.
    Raises :class:`CheckpointError` if no mapping of string keys to tensors is found.
    """
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f"checkpoint is a {type(checkpoint).__name__}, expected a dict")
    meta: dict[str, Any] = {}
    sd: Any = checkpoint
    for key in ("state_dict", "model"):
        if key in checkpoint and isinstance(checkpoint[key], Mapping):
            sd = checkpoint[key]
            raw_meta = checkpoint.get("meta")
            meta = dict(raw_meta) if isinstance(raw_meta, Mapping) else {}
            break
    bad = [k for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad or not sd:
        raise CheckpointError(
            "checkpoint holds no state_dict of tensors"
            + (
                f" (non-tensor entries: {', '.join(map(str, bad[:5]))})"
                if bad
                else " (it is empty)"
            )
        )
    sd = dict(sd)
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd, meta


def detect_layout(state_dict: Mapping[str, Any]) -> str:
    """Name the published layout of ``state_dict``: one of :data:`LAYOUTS`.

    ``backbone.*`` with ``head.*`` -> ``mmpose1``; with ``keypoint_head.*`` -> ``mmpose0``;
    with ``decode_head.*`` -> ``mmseg``; bare backbone keys (``conv1.weight``) with
    ``final_layer.*`` -> ``hrnet``, with ``final_layers.*`` -> ``higherhrnet``. Raises
    :class:`CheckpointError` (naming sample keys) for anything else.
    """
    keys = list(state_dict)
    tops = {k.split(".", 1)[0] for k in keys}
    if "backbone" in tops:
        names = {"head": "mmpose1", "keypoint_head": "mmpose0", "decode_head": "mmseg"}
        heads = [p for p in names if p in tops]
        if len(heads) == 1:
            return names[heads[0]]
        what = "no head keys" if not heads else f"several heads {heads}"
        raise CheckpointError(
            f"unrecognised checkpoint layout: backbone.* keys with {what}; "
            f"top-level prefixes: {sorted(tops)}"
        )
    if "conv1.weight" in state_dict:
        for layout, heads in _BARE_HEADS.items():
            if heads[0] in tops:
                return layout
    raise CheckpointError(
        "unrecognised checkpoint layout (expected backbone.* + head.*/keypoint_head.*/decode_head.*, "
        "or bare HRNet keys + final_layer.*/final_layers.*); top-level prefixes: "
        f"{sorted(tops)[:12]}, first keys: {keys[:3]}"
    )


def convert_state_dict(state_dict: Mapping[str, Tensor], task: str) -> dict[str, Tensor]:
    """Rename a published ``state_dict`` to our model's key names for ``task``.

    ``task`` ``"topdown_pose"`` accepts ``mmpose1`` (unchanged), ``mmpose0``
    (``keypoint_head.`` -> ``head.``) and ``hrnet`` (``final_layer.*`` -> ``head.final_layer.*``,
    every other key gets ``backbone.``); ``"bottomup_pose"`` accepts ``mmpose0`` and
    ``higherhrnet`` (``final_layers.*``/``deconv_layers.*`` -> ``head.*``, every other key gets
    ``backbone.``); ``"segmentation"`` accepts ``mmseg`` (unchanged) (:data:`TASK_LAYOUTS`).
    Tensors are not copied. Raises :class:`CheckpointError` for an unknown task, an unrecognised
    layout (:func:`detect_layout`) or a layout of the other task.
    """
    return _convert(state_dict, detect_layout(state_dict), task)


def _convert(state_dict: Mapping[str, Tensor], layout: str, task: str) -> dict[str, Tensor]:
    """:func:`convert_state_dict` with the layout already detected."""
    if task not in TASK_LAYOUTS:
        raise CheckpointError(f"unknown task {task!r}")
    if layout not in TASK_LAYOUTS[task]:
        raise CheckpointError(
            f"a {layout!r} checkpoint cannot be loaded into a {task} model "
            f"(it takes {', '.join(TASK_LAYOUTS[task])})"
        )
    return {_key_from_layout(k, layout): v for k, v in state_dict.items()}


def _key_from_layout(key: str, layout: str) -> str:
    """One published key of ``layout`` -> our key name."""
    if layout == "mmpose0" and key.startswith("keypoint_head."):
        return "head." + key[len("keypoint_head.") :]
    if layout in _BARE_HEADS:
        head = key.split(".", 1)[0] in _BARE_HEADS[layout]
        return ("head." if head else "backbone.") + key
    return key


def _key_to_layout(key: str, layout: str) -> str:
    """Our key name -> the name it has in a ``layout`` file."""
    if layout == "mmpose0" and key.startswith("head."):
        return "keypoint_head." + key[len("head.") :]
    if layout in _BARE_HEADS:
        for prefix in ("head.", "backbone."):
            if key.startswith(prefix):
                return key[len(prefix) :]
        raise ValueError(f"unexpected key {key!r} for the {layout} layout")
    return key


def to_layout(state_dict: Mapping[str, Tensor], layout: str) -> dict[str, Tensor]:
    """Rename our model's keys (``backbone.*`` + ``head.*``/``decode_head.*``) to ``layout``.

    The inverse of :func:`convert_state_dict`; the task is read from the keys
    (``decode_head.*``: segmentation, ``head.final_layers.*``: bottom-up, else top-down). Raises
    ``ValueError`` for an unknown layout or a layout of another task (:data:`TASK_LAYOUTS`).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    if any(k.startswith("decode_head.") for k in state_dict):
        task = "segmentation"
    elif any(k.startswith("head.final_layers.") for k in state_dict):
        task = "bottomup_pose"
    else:
        task = "topdown_pose"
    if layout not in TASK_LAYOUTS[task]:
        raise ValueError(
            f"layout {layout!r} does not fit a {task} model "
            f"(it takes {', '.join(TASK_LAYOUTS[task])})"
        )
    return {_key_to_layout(k, layout): v for k, v in state_dict.items()}


def _model_task(model: nn.Module) -> str:
    task = getattr(model, "task", None)
    if task in TASK_LAYOUTS:
        return task
    raise CheckpointError(f"cannot tell the task of a {type(model).__name__} (no .task attribute)")


def _fmt(keys: Iterable[str], limit: int = 20) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def load_checkpoint(
    model: nn.Module, path_or_dict: str | os.PathLike | Mapping[str, Any], strict: bool = True
) -> dict[str, Any]:
    """Load a published checkpoint (file path or already-loaded dict) into ``model``.

    The counterpart of mmengine's ``load_checkpoint(model, filename, strict=...)`` (which MMPose
    and MMSeg use), plus the layout renaming of :mod:`training.checkpoint`.
    The layout is detected (:func:`detect_layout`) and renamed (:func:`convert_state_dict`)
    for ``model.task``. Then every key is compared with ``model.state_dict()``:

    * missing keys (in the model, not in the file), except BN ``num_batches_tracked``,
    * unexpected keys (in the file, not in the model),
    * shape mismatches (both shapes given).

    With ``strict=True`` (default) any of these raises :class:`CheckpointError` whose message
    lists them all, named as they are (or would be) in the file's layout; with
    ``strict=False`` the matching tensors are loaded, the rest keep the model's values and are
    reported (in our key names). Values are copied (cast to the model's dtype). A file of the
    other task's layout raises :class:`CheckpointError` even with ``strict=False``.

    Returns ``info``: ``{"layout", "num_loaded", "missing", "unexpected", "shape_mismatch",
    "filled_num_batches_tracked", "meta"}``.
    """
    if isinstance(path_or_dict, Mapping):
        raw = path_or_dict
    else:
        raw = read_checkpoint(path_or_dict)
    sd, meta = extract_state_dict(raw)
    layout = detect_layout(sd)
    sd = _convert(sd, layout, _model_task(model))

    own = model.state_dict()
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    filled = [k for k in own if k not in sd and k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in own]
    mismatch = {
        k: (tuple(sd[k].shape), tuple(own[k].shape))
        for k in sd
        if k in own and tuple(sd[k].shape) != tuple(own[k].shape)
    }
    if strict and (missing or unexpected or mismatch):
        named = lambda k: _key_to_layout(k, layout)  # noqa: E731 - name keys as the file does
        lines = [f"checkpoint ({layout} layout) does not match {type(model).__name__}:"]
        if missing:
            lines.append(f"missing keys ({len(missing)}): {_fmt(map(named, missing))}")
        if unexpected:
            lines.append(f"unexpected keys ({len(unexpected)}): {_fmt(map(named, unexpected))}")
        if mismatch:
            items = [
                f"{named(k)}: checkpoint {list(a)} vs model {list(b)}"
                for k, (a, b) in sorted(mismatch.items())
            ]
            lines.append(
                f"shape mismatches ({len(items)}): "
                + "; ".join(items[:20])
                + (f"; ... ({len(items) - 20} more)" if len(items) > 20 else "")
            )
        raise CheckpointError("\n".join(lines))

    taken = {k: v for k, v in sd.items() if k in own and k not in mismatch}
    model.load_state_dict({**own, **taken}, strict=True)  # keys not taken keep the model's values
    return {
        "layout": layout,
        "num_loaded": len(taken),
        "missing": missing,
        "unexpected": unexpected,
        "shape_mismatch": mismatch,
        "filled_num_batches_tracked": filled,
        "meta": meta,
    }


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(
    model: nn.Module,
    path: str | os.PathLike,
    layout: str = "mmpose1",
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model`` as a published checkpoint of ``layout`` (one of :data:`LAYOUTS`).

    ``mmpose1``/``mmpose0``/``mmseg``: ``{"meta": meta or {}, "state_dict": OrderedDict}``
    written in torch's legacy (non-zip) format, as the OpenMMLab ``publish_model`` tools do;
    ``hrnet``/``higherhrnet``: the bare state_dict in the zip format. The file is written
    atomically (temp file, then rename). Returns the path. Raises ``ValueError`` for an unknown layout or one
    of the other task.
    """
    path = Path(path)
    own = model.state_dict()
    sd = to_layout(own, layout)
    state = collections.OrderedDict((k, v.detach().cpu().clone()) for k, v in sd.items())
    # keep torch's per-module ``_metadata`` (BN versions...), as real state_dicts carry it
    metadata = getattr(own, "_metadata", None)
    if metadata is not None:
        renamed: dict[str, Any] = {}
        for module_path, value in metadata.items():
            new = _key_to_layout(module_path + ".", layout)[:-1] if module_path else ""
            renamed.setdefault(new, value)
        state._metadata = renamed  # type: ignore[attr-defined]
    if layout in _BARE_HEADS:
        obj: Any = state
        legacy = False
    else:
        obj = {"meta": dict(meta or {}), "state_dict": state}
        legacy = True
    _atomic_write(path, lambda f: torch.save(obj, f, _use_new_zipfile_serialization=not legacy))
    return path


# ----------------------------------------------------------------------------- download

_HASH_RE = re.compile(r"-([0-9a-f]{8,64})(?=[._])")


def hash_prefix(filename: str) -> str | None:
    """The sha256 prefix a published file name carries, or None.

    The last ``-<8..64 lowercase hex>`` followed by ``.`` or ``_``: torch.hub's
    ``hrnet_w32-36af842e.pth`` (``HASH_REGEX``), MMSeg's ``..._014216-93db27d0.pth`` and
    MMPose's ``hrnet_w32_coco_256x192-c78dce93_20200708.pth`` (``publish_model``:
    ``-{sha256[:8]}_{date}``).
    """
    matches = _HASH_RE.findall(Path(filename).name)
    return matches[-1] if matches else None


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """sha256 digest of the file at ``path`` as 64 lowercase hex characters, read ``chunk``
    bytes at a time. Raises ``OSError`` (e.g. ``FileNotFoundError``) if it cannot be read."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def default_cache_dir() -> Path:
    """``$HRNET_CACHE_DIR`` or ``~/.cache/hrnet-serving/checkpoints``."""
    env = os.environ.get("HRNET_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "hrnet-serving" / "checkpoints"


def download_checkpoint(
    url: str, cache_dir: str | os.PathLike, progress: bool = False, timeout: float = 60.0
) -> Path:
    """Fetch ``url`` (``http://``, ``https://`` or ``file://``) into ``cache_dir``; return its path.

    The file keeps the URL's base name. It is streamed to a temporary file in ``cache_dir``
    and renamed into place only when complete (and verified), so a crash never leaves a
    half file under the final name. If the name carries a hash (:func:`hash_prefix`), the
    file's sha256 must start with it: on mismatch the download is deleted and
    :class:`CheckpointError` raised. A cached file is reused without downloading when it
    exists and (if the name has a hash) its sha256 matches; a cached file with a wrong hash is
    downloaded again. Raises :class:`CheckpointError` for an unsupported scheme, a URL
    without a file name, or any network/IO error (message has the URL).
    """
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("http", "https", "file"):
        raise CheckpointError(f"unsupported checkpoint URL scheme {parsed.scheme!r} in {url!r}")
    name = Path(urllib.parse.unquote(parsed.path)).name
    if not name:
        raise CheckpointError(f"checkpoint URL has no file name: {url!r}")
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    dest = cache_dir / name
    expected = hash_prefix(name)

    if dest.is_file() and (expected is None or sha256_file(dest).startswith(expected)):
        return dest

    fd, tmp_name = tempfile.mkstemp(prefix=name + ".", suffix=".part", dir=cache_dir)
    tmp = Path(tmp_name)
    try:
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            try:
                # scheme checked above: http, https or file only
                with urllib.request.urlopen(url, timeout=timeout) as resp:  # nosec B310
                    total = resp.headers.get("Content-Length") if hasattr(resp, "headers") else None
                    bar = _progress_bar(
                        progress, int(total) if total and total.isdigit() else None, name
                    )
                    try:
                        while True:
                            block = resp.read(1 << 20)
                            if not block:
                                break
                            out.write(block)
                            h.update(block)
                            if bar is not None:
                                bar.update(len(block))
                    finally:
                        if bar is not None:
                            bar.close()
            except OSError as exc:  # URLError, HTTPError, timeouts, file not found
                raise CheckpointError(f"cannot download {url}: {exc}") from exc
        digest = h.hexdigest()
        if expected is not None and not digest.startswith(expected):
            raise CheckpointError(
                f"sha256 mismatch for {url}: file name says {expected}..., downloaded file is "
                f"{digest}; the download was deleted"
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _progress_bar(enabled: bool, total: int | None, name: str):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is in the eval extra
        return None
    return tqdm(total=total, unit="B", unit_scale=True, desc=name)
