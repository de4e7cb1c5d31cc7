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

Where the parts live: sizes, options and view planning in :mod:`service.pipelines.seg_plan`
(the router validates once into a :class:`~service.pipelines.seg_plan.SegPlan` that
:func:`run_segmentation` takes as is); slide windows, crops and canvases in
:mod:`service.pipelines.slide`; the row-strip bilinear resize in :mod:`service.interpolate`.

Memory: the last resize to the original size is evaluated lazily in row strips straight into the
argmax, so no ``C x H x W`` array at the original size exists unless several augmentations are
averaged (then one float32 accumulator, as MMSeg's TTA holds) or ``return_logits`` is asked for.
Large inputs switch from whole to slide inference above ``slide_pixels`` network-input pixels
(even when ``whole`` was asked for), and with ``max_call_pixels`` no backend call carries more
network-input pixels than that (windows / views are sent in several calls; at least one each). Keep-ratio resizes never
produce a 0-pixel side (clamped to 1, where mmcv's rounding would give 0 and MMSeg would fail).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

import cv2
import numpy as np

from ..backends.base import Backend, BackendError
from ..cards import SegmentationCard
from ..dtypes import NUMPY_DTYPES
from ..interpolate import STRIP_ELEMENTS, ArrayRows, FlippedRows, ResizedRows, RowSource
from .common import StageTimer, to_input_tensor
from .seg_plan import Augmentation, SegOptions, SegPlan, plan_segmentation
from .slide import cut_windows, merge_windows, slide_windows


def _rows(x: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Items ``lo:hi`` of the batch ``x`` (the whole-view chunk getter of ``_infer_in_calls``)."""
    return x[lo:hi]


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax along ``axis`` (float32), as ``torch.softmax``."""
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    e /= e.sum(axis=axis, keepdims=True)
    return e


# --------------------------------------------------------------------------------------------
# the pipeline


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
    logits: np.ndarray | None = None
    timing_ms: dict[str, float] = field(default_factory=dict)


async def _infer(backend: Backend, card: SegmentationCard, x: np.ndarray) -> np.ndarray:
    """Run the model on ``(N, 3, h, w)`` (one call; the backend splits by ``max_batch_size``);
    returns ``(N, h', w', C)`` float32. Raises BackendError on an output of the wrong shape."""
    in_spec, out_name = card.inputs[0], card.outputs[0].name
    x = x.astype(NUMPY_DTYPES[in_spec.dtype], copy=False)
    out = await backend.infer(card.name, {in_spec.name: x}, [out_name])
    y = np.asarray(out[out_name])
    if y.ndim != 4 or y.shape[0] != len(x):
        raise BackendError(
            f"model '{card.name}' returned '{out_name}' of shape {y.shape}; "
            f"expected (N, C, h, w) with N = {len(x)}"
        )
    if y.shape[1] != len(card.classes):
        raise BackendError(
            f"model '{card.name}' returned {y.shape[1]} channels; its card lists "
            f"{len(card.classes)} classes"
        )
    return np.ascontiguousarray(y.transpose(0, 2, 3, 1), dtype=np.float32)


async def _infer_in_calls(
    backend: Backend,
    card: SegmentationCard,
    total: int,
    take: Callable[[int, int], np.ndarray],
    item_pixels: int,
    max_pixels: int | None,
    timer: StageTimer,
) -> np.ndarray:
    """:func:`_infer` over ``total`` network inputs of ``item_pixels`` pixels each (views of one
    size, or slide windows), in consecutive calls of at most ``max(1, max_pixels // item_pixels)``
    inputs, so no backend call holds more than ``max_pixels`` network-input pixels (one input
    whatever its size); None: one call. ``take(lo, hi)`` returns inputs ``lo..hi-1`` as
    ``(hi - lo, 3, h, w)`` float32; it runs in a worker thread, timed as ``preprocess``, so crops
    are cut per call, never all at once. Returns ``(total, h', w', C)`` float32."""
    per_call = total if max_pixels is None else max(1, int(max_pixels) // int(item_pixels))
    heads = []
    for lo in range(0, total, per_call):
        with timer("preprocess"):
            batch = await asyncio.to_thread(take, lo, min(total, lo + per_call))
        with timer("inference"):
            heads.append(await _infer(backend, card, batch))
        del batch
    return heads[0] if len(heads) == 1 else np.concatenate(heads)


def _prepare(
    image_bgr: np.ndarray, size_wh: tuple[int, int], flips: Sequence[bool], card: SegmentationCard
) -> np.ndarray:
    """Resize (cv2 INTER_LINEAR, as mmcv ``imresize``), mirror, normalise: ``(len(flips), 3, h, w)``."""
    h0, w0 = image_bgr.shape[:2]
    img = (
        image_bgr
        if (w0, h0) == tuple(size_wh)
        else cv2.resize(image_bgr, tuple(size_wh), interpolation=cv2.INTER_LINEAR)
    )
    x = to_input_tensor(img[None], card.normalization)[0]  # normalised once, mirrored after
    return np.stack([x[:, :, ::-1] if f else x for f in flips])


def _finish_view(
    view: RowSource,
    height: int,
    width: int,
    n_cls: int,
    align_corners: bool,
    label: np.ndarray,
    acc: np.ndarray | None,
    logits: np.ndarray | None,
) -> None:
    """``postprocess_result`` of one view, strip by strip: resize its input-size logits to the
    original ``(height, width)``; without ``acc`` write the argmax into ``label`` (and the logits
    into ``logits``), with ``acc`` add their softmax to it (``SegTTAModel.merge_preds``)."""
    final = ResizedRows(view, height, width, align_corners)
    # rows per strip: bound the widest block of the chain (the view's rows feeding a strip too)
    src_rows_per_row = max(1.0, view.height / height)
    widest = max(width, view.width * src_rows_per_row)
    step = max(1, int(STRIP_ELEMENTS // (widest * n_cls)))
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
    step = max(1, STRIP_ELEMENTS // max(1, acc.shape[1] * acc.shape[2]))
    for lo in range(0, acc.shape[0], step):
        label[lo : lo + step] = acc[lo : lo + step].argmax(axis=-1)


def _check_inputs(image_bgr: np.ndarray, card: SegmentationCard) -> np.ndarray:
    """The image as an array; raises ValueError for a card of another task (a card copied past
    validation) or an image that is not ``(H, W, 3)`` uint8. The class count (at most 255) is
    checked when the card is loaded."""
    if card.task != "segmentation":
        raise ValueError(f"model '{card.name}' is a {card.task} model, not segmentation")
    image_bgr = np.asarray(image_bgr)
    if image_bgr.ndim != 3 or image_bgr.shape[2] != 3 or image_bgr.dtype != np.uint8:
        raise ValueError(
            f"expected an (H, W, 3) uint8 image, got {image_bgr.shape} {image_bgr.dtype}"
        )
    return image_bgr


async def segment(
    image_bgr: np.ndarray,
    card: SegmentationCard,
    backend: Backend,
    *,
    mode: str | None = None,
    flip: bool = False,
    scales: Sequence[float] | str | None = None,
    slide_pixels: int | None = None,
    max_input_pixels: int | None = None,
    max_call_pixels: int | None = None,
    return_logits: bool = False,
    timer: StageTimer | None = None,
) -> SegResult:
    """Semantic segmentation of one image from raw options: :meth:`SegOptions.parse`,
    :func:`~service.pipelines.seg_plan.plan_segmentation`, then :func:`run_segmentation`.

    Args:
        image_bgr, card, backend, max_call_pixels, return_logits, timer: as
            :func:`run_segmentation`.
        mode: ``"whole"`` | ``"slide"``; None: the card's. Either way a ``whole`` view whose
            network input exceeds ``slide_pixels`` pixels runs as ``slide``.
        flip: add a horizontally mirrored view per size (its logits mirrored back).
        scales: TTA ratios of the original image (or the preset ``"ms"``), see
            :func:`~service.pipelines.seg_plan.tta_resize_size`; None: the card's test resize only.
        slide_pixels: see ``mode``; None: never switch.
        max_input_pixels: largest network input (w * h) allowed for any view; None: no limit.

    Raises:
        ValueError: as :func:`run_segmentation`, and an unknown mode or invalid scales;
            :class:`~service.pipelines.seg_plan.InputTooLarge` (a ValueError) for a view above
            ``max_input_pixels``.
        BackendError: the model's output does not match the card (shape, class count).
    """
    image_bgr = _check_inputs(image_bgr, card)
    options = SegOptions.parse(mode, flip, scales)
    height, width = image_bgr.shape[:2]
    plan = plan_segmentation(
        (width, height), card, options, slide_pixels=slide_pixels, max_input_pixels=max_input_pixels
    )
    return await run_segmentation(
        image_bgr,
        card,
        backend,
        plan,
        max_call_pixels=max_call_pixels,
        return_logits=return_logits,
        timer=timer,
    )


async def run_segmentation(
    image_bgr: np.ndarray,
    card: SegmentationCard,
    backend: Backend,
    plan: SegPlan,
    *,
    max_call_pixels: int | None = None,
    return_logits: bool = False,
    timer: StageTimer | None = None,
) -> SegResult:
    """Semantic segmentation of one image along a validated plan, as MMSeg 1.x's test (or TTA)
    path computes it. The plan is taken as is (no second parse of mode or scales).

    Args:
        image_bgr: ``(H, W, 3)`` uint8 BGR image, of the size ``plan.size_wh`` was made for.
        card: a ``segmentation`` card: classes (C <= 255), normalisation, test pipeline,
            ``align_corners``, input/output tensor names, ``max_batch_size``.
        backend: runs ``card.name``: float32 ``(N, 3, h, w)`` -> logits ``(N, C, h', w')``
            (any ``h', w'``; MMSeg's FCN head gives about 1/4 of ``h, w``).
        plan: :class:`~service.pipelines.seg_plan.SegPlan` from
            :func:`~service.pipelines.seg_plan.plan_segmentation`.
        max_call_pixels: the most network-input pixels sent in one backend call: slide windows
            (and flipped views) beyond ``max_call_pixels // (h * w)`` per call (at least one) go
            in further calls, so slide inference really bounds the backend's activation memory
            (it would otherwise run up to ``max_batch_size`` windows at once). The numbers do
            not change: each image is inferred independently. None: one call per view size.
        return_logits: also return ``(C, H, W)`` float32: the original-size logits of the one
            view, or with several views the mean of their softmax probabilities.
        timer: stage timer receiving ``preprocess``, ``inference``, ``postprocess`` (ms).

    Returns:
        :class:`SegResult` whose ``label_map`` is ``(H, W)`` uint8: argmax of the one view's
        logits, or with several views argmax of the mean softmax (MMSeg ``SegTTAModel``).

    Raises:
        ValueError: a card of another task, an image that is not ``(H, W, 3)`` uint8 or not of
            the plan's size (the card's class count, at most 255, is checked when it is loaded).
        BackendError: the model's output does not match the card (shape, class count).
    """
    timer = timer or StageTimer()
    image_bgr = _check_inputs(image_bgr, card)
    height, width = image_bgr.shape[:2]
    if (width, height) != tuple(plan.size_wh):
        raise ValueError(
            f"the plan is for a {plan.size_wh[0]}x{plan.size_wh[1]} image, got {width}x{height}"
        )
    views = list(plan.views)
    n_cls = len(card.classes)
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
            m = 1
            head = await _infer_in_calls(
                backend, card, len(x), partial(_rows, x), h * w, max_call_pixels, timer
            )
            n_windows += [0] * len(flips)
        else:
            wins = slide_windows(h, w, plan.crop, plan.stride)
            m = len(wins)
            win_px = int((wins[0, 2] - wins[0, 0]) * (wins[0, 3] - wins[0, 1]))
            head = await _infer_in_calls(
                backend,
                card,
                m * len(flips),
                partial(cut_windows, x, wins),
                win_px,
                max_call_pixels,
                timer,
            )
            n_windows += [m] * len(flips)
        del x
        with timer("postprocess"):
            for i, f in enumerate(flips):  # one view's canvas at a time
                if vmode == "whole":
                    r: RowSource = ResizedRows(ArrayRows(head[i]), h, w, ac)
                else:
                    r = ArrayRows(
                        await asyncio.to_thread(
                            merge_windows, head[i * m : (i + 1) * m], wins, h, w, ac
                        )
                    )
                view = FlippedRows(r) if f else r
                await asyncio.to_thread(
                    _finish_view, view, height, width, n_cls, ac, label, acc, logits
                )
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
    return SegResult(
        label_map=label,
        augmentations=views,
        windows=n_windows,
        logits=out_logits,
        timing_ms=dict(timer.ms),
    )
