"""Semantic segmentation at test time: MMSeg 1.x semantics in numpy/OpenCV (no torch).

The ONNX model (card task ``segmentation``) maps a float32 ``(N, 3, h, w)`` normalised image to
logits ``(N, C, h', w')`` — the FCN head's output, about 1/4 of the input size and *not* resized.
Everything MMSeg does around the network is done here, step for step:

1. ``Resize(scale=card.test_pipeline.scale, keep_ratio=True)`` (``mmcv.transforms.Resize`` ->
   ``mmcv.imrescale``/``rescale_size``; ``cv2.resize`` ``INTER_LINEAR`` on the uint8 BGR image);
   with test-time augmentation, MMSeg 1.x's ``tta_pipeline`` instead:
   ``Resize(scale_factor=r, keep_ratio=True)`` of the *original* image for every ratio ``r``, each
   unflipped and (with ``flip``) ``RandomFlip(prob=1, direction='horizontal')``; ``flip`` without
   ratios mirrors the card's resize (a ``TestTimeAug`` over that one ``Resize``);
2. ``SegDataPreProcessor``: BGR->RGB, ``(x - mean) / std``; no test-time padding (the HRNet
   configs set no ``test_cfg`` on the preprocessor);
3. ``EncoderDecoder.whole_inference`` (``decode_head.predict`` resizes the logits bilinearly to
   the network input size) or ``slide_inference`` (each crop's logits resized to the crop size,
   summed into the canvas, divided by the per-pixel window count);
4. ``BaseSegmentor.postprocess_result``: the logits of a flipped input flipped back, resized
   bilinearly (``align_corners`` of the card) to the original image size, argmax over classes;
5. ``SegTTAModel.merge_preds``: with several augmentations, the **softmax** of each augmentation's
   original-size logits is averaged and the argmax taken.

Bilinear resizing of logits follows ``torch.nn.functional.interpolate(mode='bilinear')`` (both
``align_corners`` values; horizontal pass then vertical, as torch's kernel evaluates it): the
vertical pass and the ``align_corners=True`` horizontal pass are numpy with torch's float32 source
coordinates; the ``align_corners=False`` horizontal pass is OpenCV ``INTER_LINEAR`` on float32
(same half-pixel rule, coordinates in double: ~1e-5 from torch at odd ratios, exact at 2x/4x).

Memory: the last resize to the original size is evaluated lazily in row strips straight into the
argmax, so no ``C x H x W`` array at the original size exists unless several augmentations are
averaged (then one float32 accumulator, as MMSeg's TTA holds) or ``return_logits`` is asked for.
Large inputs switch from whole to slide inference above ``slide_pixels`` network-input pixels
(even when ``whole`` was asked for), and with ``max_call_pixels`` no backend call carries more
network-input pixels than that (windows / views are sent in several calls; at least one each). Keep-ratio resizes never produce a 0-pixel side (clamped to 1,
where mmcv's rounding would give 0 and MMSeg would fail).
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Optional, Protocol, Sequence

import cv2
import numpy as np

from ..backends.base import Backend, BackendError
from ..cards import SegmentationCard, SegTestPipeline
from ..forms import validate_ratios
from ..geometry import rescale_size, scale_size
from ..interpolate import linear_taps
from .common import StageTimer, to_input_tensor

#: MMSeg 1.x ``configs/_base_/datasets/*.py`` ``img_ratios`` of the multi-scale TTA pipeline.
MS_RATIOS: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
#: Named scale presets accepted wherever a list of TTA ratios is.
SCALE_PRESETS: dict[str, tuple[float, ...]] = {"ms": MS_RATIOS}
#: Slide window used when slide inference is needed but the card names no crop (h, w): the
#: Cityscapes slide configs' 1024x1024 crop with a 768 stride.
DEFAULT_CROP = (1024, 1024)
DEFAULT_STRIDE = (768, 768)
#: Elements (rows x width x classes) per strip of the final resize: small enough to stay in cache.
_STRIP_ELEMENTS = 1 << 20

MODES = ("whole", "slide")


# --------------------------------------------------------------------------------------------
# sizes (mmcv.image.geometric; scale_size / rescale_size live in service.geometry)


def network_input_size(size_wh: tuple[int, int], spec: SegTestPipeline) -> tuple[int, int]:
    """Network input ``(w, h)`` of the card's test ``Resize`` (``mmcv.transforms.Resize``).

    ``spec.scale`` None: no resize. ``keep_ratio``: :func:`rescale_size` to ``scale``;
    otherwise exactly ``scale`` (``mmcv.imresize``).
    """
    if spec.scale is None:
        return tuple(size_wh)  # type: ignore[return-value]
    if spec.keep_ratio:
        return rescale_size(size_wh, tuple(spec.scale))[0]
    return int(spec.scale[0]), int(spec.scale[1])


def tta_resize_size(size_wh: tuple[int, int], ratio: float) -> tuple[int, int]:
    """Network input ``(w, h)`` of MMSeg 1.x's TTA ``Resize(scale_factor=ratio, keep_ratio=True)``.

    mmcv first turns the factor into a target scale ``scale_size((w, h), ratio)``, then resizes
    with keep-ratio to that scale — two roundings, e.g. ``(999, 10)`` at 0.75 gives ``(749, 7)``
    where a single rounding would give ``(749, 8)``. Raises ValueError for ``ratio <= 0``.
    """
    if not ratio > 0:
        raise ValueError(f"invalid scale ratio {ratio}, must be positive")
    target = scale_size(size_wh, ratio)
    if min(target) <= 0:
        raise ValueError(f"scale ratio {ratio} shrinks the {size_wh[0]}x{size_wh[1]} image to nothing")
    return rescale_size(size_wh, target)[0]


def parse_scales(value: Sequence[float] | str | None) -> Optional[tuple[float, ...]]:
    """Validate TTA ratios: a preset name (``"ms"``) or up to 8 finite floats in (0, 4]
    (:func:`service.forms.validate_ratios` with :data:`SCALE_PRESETS`). Raises ValueError."""
    return validate_ratios(value, SCALE_PRESETS)


# --------------------------------------------------------------------------------------------
# slide windows (EncoderDecoder.slide_inference)


def slide_windows(height: int, width: int, crop: tuple[int, int],
                  stride: tuple[int, int]) -> np.ndarray:
    """Windows of MMSeg's ``slide_inference`` over an ``height x width`` network input.

    ``crop`` and ``stride`` are ``(h, w)`` in pixels (as in ``test_cfg``). There are
    ``max(H - crop_h + stride_h - 1, 0) // stride_h + 1`` window rows (likewise columns); a window
    starts at ``idx * stride``, ends at ``min(start + crop, H)`` and is then moved back to start at
    ``max(end - crop, 0)``, so every window has size ``min(crop, image)``.
    Returns ``(M, 4)`` int64 rows ``[x1, y1, x2, y2]`` (end exclusive), row-major (top row first),
    the order MMSeg visits them. Raises ValueError for non-positive sizes.
    """
    ch, cw = int(crop[0]), int(crop[1])
    sh, sw = int(stride[0]), int(stride[1])
    if min(height, width, ch, cw, sh, sw) <= 0:
        raise ValueError(f"sizes must be positive: image {height}x{width}, crop {crop}, stride {stride}")

    def axis(n: int, c: int, s: int) -> tuple[np.ndarray, np.ndarray]:
        grids = max(n - c + s - 1, 0) // s + 1
        end = np.minimum(np.arange(grids, dtype=np.int64) * s + c, n)
        return np.maximum(end - c, 0), end

    y1, y2 = axis(height, ch, sh)
    x1, x2 = axis(width, cw, sw)
    gy = np.repeat(np.arange(len(y1)), len(x1))
    gx = np.tile(np.arange(len(x1)), len(y1))
    return np.stack([x1[gx], y1[gy], x2[gx], y2[gy]], axis=1)


def window_counts(height: int, width: int, windows: np.ndarray) -> np.ndarray:
    """``(H, W)`` float32: how many windows cover each pixel (MMSeg's ``count_mat``)."""
    count = np.zeros((height, width), np.float32)
    for x1, y1, x2, y2 in np.asarray(windows, np.int64):
        count[y1:y2, x1:x2] += 1.0
    return count


def slide_merge(crop_logits, windows: np.ndarray, height: int, width: int) -> np.ndarray:
    """Average overlapping window logits into one canvas (``slide_inference``'s sum / count).

    ``crop_logits``: ``(M, h_c, w_c, C)`` float32 channels-last array, or any iterable of ``M``
    ``(h_c, w_c, C)`` arrays, each already resized to its window's size (summed in window order,
    as MMSeg does); ``windows``: ``(M, 4)`` ``[x1, y1, x2, y2]`` from :func:`slide_windows`.
    Returns ``(H, W, C)`` float32 = sum of the windows covering a pixel / their number.
    Raises ValueError if the counts disagree, a window's size does not match its logits, or a
    pixel is covered by no window.
    """
    windows = np.asarray(windows, np.int64)
    preds = None
    n = 0
    for k, logit in enumerate(crop_logits):
        if k >= len(windows):
            raise ValueError(f"more window logits than the {len(windows)} windows")
        x1, y1, x2, y2 = (int(v) for v in windows[k])
        if tuple(logit.shape[:2]) != (y2 - y1, x2 - x1):
            raise ValueError(f"window {k} is {y2 - y1}x{x2 - x1}, its logits {tuple(logit.shape[:2])}")
        if preds is None:
            preds = np.zeros((height, width, logit.shape[2]), np.float32)
        preds[y1:y2, x1:x2] += logit
        n += 1
    if n != len(windows) or preds is None:
        raise ValueError(f"{n} window logits for {len(windows)} windows")
    count = window_counts(height, width, windows)
    if (count == 0).any():
        raise ValueError("some pixels are covered by no window")
    preds /= count[..., None]
    return preds


# --------------------------------------------------------------------------------------------
# bilinear resize (torch.nn.functional.interpolate, mode='bilinear')


class _Rows(Protocol):
    """Lazily computed ``(height, width, C)`` float32 map, read in row ranges."""

    height: int
    width: int

    def rows(self, lo: int, hi: int) -> np.ndarray: ...


class _ArrayRows:
    """Rows of a materialised ``(H, W, C)`` array."""

    def __init__(self, array: np.ndarray):
        self.array = array
        self.height, self.width = array.shape[:2]

    def rows(self, lo: int, hi: int) -> np.ndarray:
        return self.array[lo:hi]


class _FlippedRows:
    """Rows of a source map mirrored left-right (flip-back of a flipped input's logits)."""

    def __init__(self, src: _Rows):
        self.src, self.height, self.width = src, src.height, src.width

    def rows(self, lo: int, hi: int) -> np.ndarray:
        return self.src.rows(lo, hi)[:, ::-1]


class _ResizedRows:
    """Rows of a source map bilinearly resized to ``(height, width)`` (torch semantics).

    Each requested row range reads only the source rows it needs; the horizontal pass runs first,
    then the vertical one, the order of torch's ``upsample_bilinear2d`` arithmetic. Same size is a
    copy, as in torch.
    """

    def __init__(self, src: _Rows, height: int, width: int, align_corners: bool):
        self.src, self.height, self.width = src, int(height), int(width)
        self.align_corners = bool(align_corners)
        self.same_w = self.width == src.width
        self.same_h = self.height == src.height
        self.hx = None if self.same_w else linear_taps(src.width, self.width, align_corners)
        self.vy = None if self.same_h else linear_taps(src.height, self.height, align_corners)

    def _horizontal(self, x: np.ndarray) -> np.ndarray:
        if self.hx is None:
            return x
        if not self.align_corners:
            # rows are independent in a width-only resize, and OpenCV's INTER_LINEAR uses torch's
            # half-pixel rule (``align_corners=False``) in float32: same numbers, several times
            # faster than the numpy gathers. At most 512 channels per call (CV_CN_MAX).
            n, _, c = x.shape
            out = np.empty((n, self.width, c), np.float32)
            for c0 in range(0, c, 512):
                part = np.ascontiguousarray(x[:, :, c0:c0 + 512], dtype=np.float32)
                out[:, :, c0:c0 + 512] = cv2.resize(part, (self.width, n), interpolation=cv2.INTER_LINEAR
                                                    ).reshape(n, self.width, -1)
            return out
        i0, i1, w0, w1 = self.hx
        out = x[:, i0] * w0[:, None]
        out += x[:, i1] * w1[:, None]
        return out

    def rows(self, lo: int, hi: int) -> np.ndarray:
        if self.vy is None:
            return self._horizontal(self.src.rows(lo, hi))
        i0, i1, w0, w1 = (a[lo:hi] for a in self.vy)
        a, b = int(i0[0]), int(i1[-1]) + 1
        t = self._horizontal(self.src.rows(a, b))
        out = t[i0 - a] * w0[:, None, None]
        out += t[i1 - a] * w1[:, None, None]
        return out


def resize_logits(logits: np.ndarray, size_hw: tuple[int, int], align_corners: bool = False,
                  channels_last: bool = False) -> np.ndarray:
    """Bilinear resize of a logit map, as ``F.interpolate(mode='bilinear', align_corners=...)``.

    ``logits``: ``(C, h, w)`` float (or ``(h, w, C)`` with ``channels_last``); ``size_hw``: the
    output ``(H, W)`` in pixels. Returns float32 in the same layout. Follows MMSeg's
    ``mmseg.models.utils.wrappers.resize`` (a thin wrapper of torch's interpolate); any number of
    channels. Raises ValueError for a non-3-D input or an empty size.
    """
    x = np.asarray(logits, dtype=np.float32)
    if x.ndim != 3:
        raise ValueError(f"expected a 3-D logit map, got shape {x.shape}")
    if min(size_hw) <= 0:
        raise ValueError(f"output size must be positive, got {size_hw}")
    hwc = x if channels_last else np.ascontiguousarray(x.transpose(1, 2, 0))
    out = _ResizedRows(_ArrayRows(hwc), size_hw[0], size_hw[1], align_corners).rows(0, size_hw[0])
    out = np.ascontiguousarray(out, dtype=np.float32)
    return out if channels_last else np.ascontiguousarray(out.transpose(2, 0, 1))


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax along ``axis`` (float32), as ``torch.softmax``."""
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    e /= e.sum(axis=axis, keepdims=True)
    return e


# --------------------------------------------------------------------------------------------
# the pipeline


class InputTooLarge(ValueError):
    """A view's network input would exceed the allowed number of pixels."""


@dataclass
class Augmentation:
    """One test-time view: network input size ``(w, h)`` and whether the image is mirrored."""

    size_wh: tuple[int, int]
    flip: bool
    mode: str


@dataclass
class SegResult:
    """Outcome of :func:`segment`.

    ``label_map``: ``(H, W)`` uint8 class ids at the original image size (255 never produced; it
    is the ignore id of label files). ``logits``: ``(C, H, W)`` float32 when asked for — the
    original-size logits for one view, the averaged softmax probabilities with TTA (as MMSeg's
    ``seg_logits``). ``augmentations``: the views run; ``windows``: slide windows per view
    (0 for whole); ``timing_ms``: per-stage milliseconds.
    """

    label_map: np.ndarray
    augmentations: list[Augmentation]
    windows: list[int] = field(default_factory=list)
    logits: Optional[np.ndarray] = None
    timing_ms: dict[str, float] = field(default_factory=dict)


def plan_augmentations(size_wh: tuple[int, int], spec: SegTestPipeline, *,
                       mode: Optional[str] = None, flip: bool = False,
                       scales: Optional[Sequence[float]] = None,
                       slide_pixels: Optional[int] = None,
                       max_input_pixels: Optional[int] = None) -> list[Augmentation]:
    """The views :func:`segment` runs for an image of ``size_wh`` (original ``(w, h)``).

    No ``scales``: the card's test ``Resize``. With ``scales``: ``tta_resize_size`` of the original
    image per ratio (MMSeg 1.x ``tta_pipeline``). ``flip`` adds a mirrored view per size, right
    after its unflipped one. Mode: the given one, else the card's; a ``whole`` view whose network
    input exceeds ``slide_pixels`` pixels is switched to ``slide`` **even when ``whole`` was asked
    for** (memory bound: whole inference holds ``C x h x w`` float32 logits of the full input and
    the backbone's activations for it; MMSeg would run it whole). Raises ValueError for an unknown
    mode, and :class:`InputTooLarge` (a ValueError) for a view above ``max_input_pixels``
    network-input pixels.
    """
    if mode is not None and mode not in MODES:
        raise ValueError(f"unknown mode '{mode}'; expected one of {', '.join(MODES)}")
    sizes = ([network_input_size(size_wh, spec)] if scales is None
             else [tta_resize_size(size_wh, r) for r in scales])
    views = []
    for w, h in sizes:
        if max_input_pixels is not None and w * h > max_input_pixels:
            raise InputTooLarge(f"the network input would be {w}x{h} = {w * h} pixels; the limit "
                                f"is {max_input_pixels} (use a smaller image or smaller scales)")
        m = mode or spec.mode
        if m == "whole" and slide_pixels is not None and w * h > slide_pixels:
            m = "slide"
        for f in ((False, True) if flip else (False,)):
            views.append(Augmentation((int(w), int(h)), f, m))
    return views


def _slide_geometry(card: SegmentationCard) -> tuple[tuple[int, int], tuple[int, int]]:
    """Slide ``(crop, stride)`` as ``(h, w)``: the card's; a crop without stride strides 3/4 of
    it; no crop: :data:`DEFAULT_CROP` / :data:`DEFAULT_STRIDE`."""
    spec = card.test_pipeline or SegTestPipeline()
    crop = tuple(spec.crop_size) if spec.crop_size else DEFAULT_CROP
    stride = tuple(spec.stride) if spec.stride else (
        DEFAULT_STRIDE if not spec.crop_size else tuple(max(1, (3 * c) // 4) for c in crop))
    return crop, stride  # type: ignore[return-value]


async def _infer(backend: Backend, card: SegmentationCard, x: np.ndarray) -> np.ndarray:
    """Run the model on ``(N, 3, h, w)`` (one call; the backend splits by ``max_batch_size``);
    returns ``(N, h', w', C)`` float32. Raises BackendError on an output of the wrong shape."""
    in_spec, out_name = card.inputs[0], card.outputs[0].name
    if in_spec.dtype == "FP16":
        x = x.astype(np.float16)
    out = await backend.infer(card.name, {in_spec.name: x}, [out_name])
    y = np.asarray(out[out_name])
    if y.ndim != 4 or y.shape[0] != len(x):
        raise BackendError(f"model '{card.name}' returned '{out_name}' of shape {y.shape}; "
                           f"expected (N, C, h, w) with N = {len(x)}")
    if y.shape[1] != len(card.classes):
        raise BackendError(f"model '{card.name}' returned {y.shape[1]} channels; its card lists "
                           f"{len(card.classes)} classes")
    return np.ascontiguousarray(y.transpose(0, 2, 3, 1), dtype=np.float32)


async def _infer_bounded(backend: Backend, card: SegmentationCard, x: np.ndarray,
                         max_pixels: Optional[int]) -> np.ndarray:
    """:func:`_infer` in consecutive calls of at most ``max(1, max_pixels // (h * w))`` images
    (``x``: ``(N, 3, h, w)``), so no single backend call holds more than ``max_pixels`` network-input
    pixels (one image whatever its size); None: one call. Returns ``(N, h', w', C)``."""
    per_call = len(x) if max_pixels is None else max(1, int(max_pixels) // (x.shape[2] * x.shape[3]))
    if per_call >= len(x):
        return await _infer(backend, card, x)
    parts = [await _infer(backend, card, x[i:i + per_call]) for i in range(0, len(x), per_call)]
    return np.concatenate(parts)


def _prepare(image_bgr: np.ndarray, size_wh: tuple[int, int], flips: Sequence[bool],
             card: SegmentationCard) -> np.ndarray:
    """Resize (cv2 INTER_LINEAR, as mmcv ``imresize``), mirror, normalise: ``(len(flips), 3, h, w)``."""
    h0, w0 = image_bgr.shape[:2]
    img = image_bgr if (w0, h0) == tuple(size_wh) else cv2.resize(
        image_bgr, tuple(size_wh), interpolation=cv2.INTER_LINEAR)
    batch = np.stack([img[:, ::-1] if f else img for f in flips])
    return to_input_tensor(batch, card.normalization)


def _cut_windows(x: np.ndarray, windows: np.ndarray, lo: int = 0,
                 hi: Optional[int] = None) -> np.ndarray:
    """Window crops ``lo..hi-1`` of the image-major sequence "every window of image 0, then of
    image 1, ...": ``(hi - lo, 3, h_c, w_c)`` contiguous float32 (``x``: ``(N, 3, h, w)``)."""
    m = len(windows)
    hi = len(x) * m if hi is None else hi
    parts = []
    for k in range(lo, hi):
        x1, y1, x2, y2 = windows[k % m]
        parts.append(x[k // m, :, y1:y2, x1:x2])
    return np.stack(parts)


def _merge_windows(head: np.ndarray, windows: np.ndarray, h: int, w: int,
                   align_corners: bool) -> np.ndarray:
    """Slide canvas ``(h, w, C)`` from per-window head outputs ``(M, h', w', C)``.

    Same numbers as :func:`slide_merge` of the windows' logits resized to their size (the same
    additions in the same window order, then the division by the window count), but each window's
    resize is added strip by strip, so no full-size window logit map is materialised.
    """
    windows = np.asarray(windows, np.int64)
    n_cls = head.shape[-1]
    preds = np.zeros((h, w, n_cls), np.float32)
    for k, (x1, y1, x2, y2) in enumerate(windows):
        wh, ww = int(y2 - y1), int(x2 - x1)
        resized = _ResizedRows(_ArrayRows(head[k]), wh, ww, align_corners)
        step = max(1, _STRIP_ELEMENTS // (max(ww, head.shape[2]) * n_cls))
        for lo in range(0, wh, step):
            hi = min(wh, lo + step)
            preds[y1 + lo:y1 + hi, x1:x2] += resized.rows(lo, hi)
    count = window_counts(h, w, windows)
    if (count == 0).any():
        raise ValueError("some pixels are covered by no window")
    preds /= count[..., None]
    return preds


def _finish_view(view: _Rows, height: int, width: int, n_cls: int, align_corners: bool,
                 label: np.ndarray, acc: Optional[np.ndarray], logits: Optional[np.ndarray]) -> None:
    """``postprocess_result`` of one view, strip by strip: resize its input-size logits to the
    original ``(height, width)``; without ``acc`` write the argmax into ``label`` (and the logits
    into ``logits``), with ``acc`` add their softmax to it (``SegTTAModel.merge_preds``)."""
    final = _ResizedRows(view, height, width, align_corners)
    # rows per strip: bound the widest block of the chain (the view's rows feeding a strip too)
    src_rows_per_row = max(1.0, view.height / height)
    widest = max(width, view.width * src_rows_per_row)
    step = max(1, int(_STRIP_ELEMENTS // (widest * n_cls)))
    for lo in range(0, height, step):
        hi = min(height, lo + step)
        s = final.rows(lo, hi)
        if acc is None:
            label[lo:hi] = s.argmax(axis=-1)
            if logits is not None:
                logits[lo:hi] = s
        else:
            acc[lo:hi] += softmax(s, axis=-1)


def _argmax_rows(acc: np.ndarray, label: np.ndarray) -> None:
    """``label[...] = acc.argmax(-1)`` in row strips (no full int64 index map)."""
    step = max(1, _STRIP_ELEMENTS // max(1, acc.shape[1] * acc.shape[2]))
    for lo in range(0, acc.shape[0], step):
        label[lo:lo + step] = acc[lo:lo + step].argmax(axis=-1)


async def segment(image_bgr: np.ndarray, card: SegmentationCard, backend: Backend, *,
                  mode: Optional[str] = None, flip: bool = False,
                  scales: Optional[Sequence[float] | str] = None,
                  slide_pixels: Optional[int] = None, max_input_pixels: Optional[int] = None,
                  max_call_pixels: Optional[int] = None,
                  return_logits: bool = False, timer: Optional[StageTimer] = None) -> SegResult:
    """Semantic segmentation of one image, as MMSeg 1.x's test (or TTA) path computes it.

    Args:
        image_bgr: ``(H, W, 3)`` uint8 BGR image.
        card: a ``segmentation`` card: classes (C <= 255), normalisation, test pipeline,
            ``align_corners``, input/output tensor names, ``max_batch_size``.
        backend: runs ``card.name``: float32 ``(N, 3, h, w)`` -> logits ``(N, C, h', w')``
            (any ``h', w'``; MMSeg's FCN head gives about 1/4 of ``h, w``).
        mode: ``"whole"`` | ``"slide"``; None: the card's. Either way a ``whole`` view whose
            network input exceeds ``slide_pixels`` pixels runs as ``slide``.
        flip: add a horizontally mirrored view per size (its logits mirrored back).
        scales: TTA ratios of the original image (or the preset ``"ms"``), see
            :func:`tta_resize_size`; None: the card's test resize only.
        slide_pixels: see ``mode``; None: never switch.
        max_call_pixels: the most network-input pixels sent in one backend call: slide windows
            (and flipped views) beyond ``max_call_pixels // (h * w)`` per call (at least one) go
            in further calls, so slide inference really bounds the backend's activation memory
            (it would otherwise run up to ``max_batch_size`` windows at once). The numbers do
            not change: each image is inferred independently. None: one call per view size.
        max_input_pixels: largest network input (w * h) allowed for any view; None: no limit.
        return_logits: also return ``(C, H, W)`` float32: the original-size logits of the one
            view, or with several views the mean of their softmax probabilities.
        timer: stage timer receiving ``preprocess``, ``inference``, ``postprocess`` (ms).

    Returns:
        :class:`SegResult` whose ``label_map`` is ``(H, W)`` uint8: argmax of the one view's
        logits, or with several views argmax of the mean softmax (MMSeg ``SegTTAModel``).

    Raises:
        ValueError: non-segmentation card, more than 255 classes, an image that is not
            ``(H, W, 3)`` uint8, an unknown mode or invalid scales; :class:`InputTooLarge` (a
            ValueError) for a view above ``max_input_pixels``.
        BackendError: the model's output does not match the card (shape, class count).
    """
    timer = timer or StageTimer()
    if card.task != "segmentation":
        raise ValueError(f"model '{card.name}' is a {card.task} model, not segmentation")
    n_cls = len(card.classes)
    if n_cls > 255:
        raise ValueError(f"{n_cls} classes do not fit a uint8 label map (255 is the ignore id)")
    image_bgr = np.asarray(image_bgr)
    if image_bgr.ndim != 3 or image_bgr.shape[2] != 3 or image_bgr.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {image_bgr.shape} {image_bgr.dtype}")
    height, width = image_bgr.shape[:2]
    ratios = parse_scales(scales)
    spec = card.test_pipeline or SegTestPipeline()
    views = plan_augmentations((width, height), spec, mode=mode, flip=flip, scales=ratios,
                               slide_pixels=slide_pixels, max_input_pixels=max_input_pixels)
    crop, stride = _slide_geometry(card)
    ac = bool(card.align_corners)

    multi = len(views) > 1
    label = np.empty((height, width), np.uint8)
    acc = np.zeros((height, width, n_cls), np.float32) if multi else None
    logits = np.empty((height, width, n_cls), np.float32) if (return_logits and not multi) else None
    n_windows: list[int] = []

    # views come in runs of one size (unflipped, then flipped): one backend call per run
    groups: list[tuple[tuple[int, int], str, list[bool]]] = []
    for v in views:
        if groups and v.flip and groups[-1][0] == v.size_wh and groups[-1][1] == v.mode:
            groups[-1][2].append(True)
        else:
            groups.append((v.size_wh, v.mode, [v.flip]))

    for (w, h), vmode, flips in groups:
        with timer("preprocess"):
            x = await asyncio.to_thread(_prepare, image_bgr, (w, h), flips, card)
        if vmode == "whole":
            with timer("inference"):
                head = await _infer_bounded(backend, card, x, max_call_pixels)
            n_windows += [0] * len(flips)
        else:
            wins = slide_windows(h, w, crop, stride)
            m = len(wins)
            total = m * len(flips)
            win_px = int((wins[0, 2] - wins[0, 0]) * (wins[0, 3] - wins[0, 1]))
            per_call = total if max_call_pixels is None else max(1, int(max_call_pixels) // win_px)
            heads = []
            for lo in range(0, total, per_call):  # crops cut per call, not all at once
                with timer("preprocess"):
                    crops = await asyncio.to_thread(_cut_windows, x, wins, lo,
                                                    min(total, lo + per_call))
                with timer("inference"):
                    heads.append(await _infer(backend, card, crops))
                del crops
            head = heads[0] if len(heads) == 1 else np.concatenate(heads)
            del heads
            n_windows += [m] * len(flips)
        del x
        with timer("postprocess"):
            for i, f in enumerate(flips):  # one view's canvas at a time
                if vmode == "whole":
                    r: _Rows = _ResizedRows(_ArrayRows(head[i]), h, w, ac)
                else:
                    r = _ArrayRows(await asyncio.to_thread(_merge_windows, head[i * m:(i + 1) * m],
                                                           wins, h, w, ac))
                view = _FlippedRows(r) if f else r
                await asyncio.to_thread(_finish_view, view, height, width, n_cls, ac, label, acc,
                                        logits)
                del r, view
        del head

    out_logits = None
    with timer("postprocess"):
        if acc is not None:
            await asyncio.to_thread(_argmax_rows, acc, label)
            if return_logits:
                acc /= np.float32(len(views))
                out_logits = np.ascontiguousarray(acc.transpose(2, 0, 1))
        elif logits is not None:
            out_logits = np.ascontiguousarray(logits.transpose(2, 0, 1))
    return SegResult(label_map=label, augmentations=views, windows=n_windows, logits=out_logits,
                     timing_ms=dict(timer.ms))
