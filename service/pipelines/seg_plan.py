"""What a segmentation request runs: validated options and the views planned from them.

The router validates the request's ``mode`` / ``flip`` / ``scales`` once into a
:class:`SegOptions` (which checks the mode; the ``scales`` form field is checked as it is
parsed), plans the views for the decoded image's size with :func:`plan_segmentation` (which
raises before any work for a ratio that shrinks the image to nothing or a view above the pixel
limit), and hands the resulting :class:`SegPlan` to
:func:`service.pipelines.segmentation.run_segmentation` as is. Sizes follow mmcv's
``Resize`` / ``rescale_size`` (MMSeg 1.x test pipeline and ``tta_pipeline``); all sizes are
``(w, h)`` pixels unless named ``_hw``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..cards import SegmentationCard, SegTestPipeline
from ..forms import validate_ratios
from ..geometry import rescale_size, scale_size
from .slide import slide_geometry

#: MMSeg 1.x ``configs/_base_/datasets/*.py`` ``img_ratios`` of the multi-scale TTA pipeline.
MS_RATIOS: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
#: Named scale presets accepted wherever a list of TTA ratios is.
SCALE_PRESETS: dict[str, tuple[float, ...]] = {"ms": MS_RATIOS}
#: Inference modes (MMSeg ``test_cfg.mode``).
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
        return rescale_size(size_wh, (int(spec.scale[0]), int(spec.scale[1])))[0]
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
        raise ValueError(
            f"scale ratio {ratio} shrinks the {size_wh[0]}x{size_wh[1]} image to nothing"
        )
    return rescale_size(size_wh, target)[0]


def parse_scales(value: Sequence[float] | str | None) -> tuple[float, ...] | None:
    """Validate TTA ratios: a preset name (``"ms"``) or up to 8 finite floats in (0, 4]
    (:func:`service.forms.validate_ratios` with :data:`SCALE_PRESETS`). Raises ValueError."""
    return validate_ratios(value, SCALE_PRESETS)


class InputTooLarge(ValueError):
    """A view's network input would exceed the allowed number of pixels."""


@dataclass(frozen=True)
class Augmentation:
    """One test-time view: network input size ``(w, h)`` and whether the image is mirrored."""

    size_wh: tuple[int, int]
    flip: bool
    mode: str


def plan_augmentations(
    size_wh: tuple[int, int],
    spec: SegTestPipeline,
    *,
    mode: str | None = None,
    flip: bool = False,
    scales: Sequence[float] | None = None,
    slide_pixels: int | None = None,
    max_input_pixels: int | None = None,
) -> list[Augmentation]:
    """The views segmentation runs for an image of ``size_wh`` (original ``(w, h)``).

    No ``scales``: the card's test ``Resize``. With ``scales``: ``tta_resize_size`` of the original
    image per ratio (MMSeg 1.x ``tta_pipeline``). ``flip`` adds a mirrored view per size, right
    after its unflipped one. Mode: the given one, else the card's; a ``whole`` view whose network
    input exceeds ``slide_pixels`` pixels is switched to ``slide`` **even when ``whole`` was asked
    for** (memory bound: whole inference holds ``C x h x w`` float32 logits of the full input and
    the backbone's activations for it; MMSeg would run it whole). Raises ValueError for an unknown
    mode (:class:`SegOptions`), and :class:`InputTooLarge` (a ValueError) for a view above
    ``max_input_pixels`` network-input pixels.
    """
    options = SegOptions(mode, flip, None if scales is None else tuple(scales))
    return _views(size_wh, spec, options, slide_pixels, max_input_pixels)


def _views(
    size_wh: tuple[int, int],
    spec: SegTestPipeline,
    options: SegOptions,
    slide_pixels: int | None,
    max_input_pixels: int | None,
) -> list[Augmentation]:
    """:func:`plan_augmentations` of already validated ``options``."""
    sizes = (
        [network_input_size(size_wh, spec)]
        if options.ratios is None
        else [tta_resize_size(size_wh, r) for r in options.ratios]
    )
    views = []
    for w, h in sizes:
        if max_input_pixels is not None and w * h > max_input_pixels:
            raise InputTooLarge(
                f"the network input would be {w}x{h} = {w * h} pixels; the limit "
                f"is {max_input_pixels} (use a smaller image or smaller scales)"
            )
        m = options.mode or spec.mode
        if m == "whole" and slide_pixels is not None and w * h > slide_pixels:
            m = "slide"
        for f in (False, True) if options.flip else (False,):
            views.append(Augmentation((int(w), int(h)), f, m))
    return views


@dataclass(frozen=True)
class SegOptions:
    """A request's test-time choices, validated: ``mode`` (one of :data:`MODES`, None: the
    card's; checked here, the one place: ValueError naming it otherwise), ``flip`` (add mirrored
    views), ``ratios`` (TTA ratios of the original image, None: the card's test resize). Build it
    with :meth:`parse` unless the ratios are already checked (e.g. by
    :func:`service.forms.parse_scales_field`)."""

    mode: str | None = None
    flip: bool = False
    ratios: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.mode is not None and self.mode not in MODES:
            raise ValueError(f"unknown mode '{self.mode}'; expected one of {', '.join(MODES)}")

    @classmethod
    def parse(
        cls,
        mode: str | None = None,
        flip: bool = False,
        scales: Sequence[float] | str | None = None,
    ) -> SegOptions:
        """Validate raw values: ``mode`` must be in :data:`MODES` or None; ``scales`` as
        :func:`parse_scales`. Raises ValueError naming the bad value."""
        return cls(mode=mode, flip=bool(flip), ratios=parse_scales(scales))


@dataclass(frozen=True)
class SegPlan:
    """Everything :func:`service.pipelines.segmentation.run_segmentation` needs besides the image.

    ``size_wh``: the original image ``(w, h)`` pixels the plan was made for; ``views``: the views
    in run order (:func:`plan_augmentations`); ``crop`` / ``stride``: the slide geometry ``(h, w)``
    in network-input pixels (:func:`service.pipelines.slide.slide_geometry`), used by slide views.
    """

    size_wh: tuple[int, int]
    views: tuple[Augmentation, ...]
    crop: tuple[int, int]
    stride: tuple[int, int]


def plan_segmentation(
    size_wh: tuple[int, int],
    card: SegmentationCard,
    options: SegOptions,
    *,
    slide_pixels: int | None = None,
    max_input_pixels: int | None = None,
) -> SegPlan:
    """The :class:`SegPlan` for an image of ``size_wh`` (original ``(w, h)``) under ``card``.

    Views as :func:`plan_augmentations` with the options' mode, flip and ratios (``slide_pixels``:
    whole views above it run as slide; ``max_input_pixels``: the largest network input allowed).
    Raises ValueError (a ratio that shrinks the image to nothing) and :class:`InputTooLarge` (a
    ValueError) for a view above ``max_input_pixels``.
    """
    spec = card.test_pipeline or SegTestPipeline()
    views = _views(size_wh, spec, options, slide_pixels, max_input_pixels)
    crop, stride = slide_geometry(card.test_pipeline)
    return SegPlan(
        size_wh=(int(size_wh[0]), int(size_wh[1])), views=tuple(views), crop=crop, stride=stride
    )
