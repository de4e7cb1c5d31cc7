"""Model cards for registry models: :class:`service.cards.ModelCard` built from a
:class:`training.registry.ModelEntry` plus the dataset metainfo in :mod:`service.datasets`.

The card records the test-time behaviour of the upstream config the checkpoint was published
with (MMPose 1.x ``TopdownPoseEstimator`` / MMSeg 1.x ``EncoderDecoder``):

* top-down pose: ``PoseDataPreprocessor`` mean ``(123.675, 116.28, 103.53)`` / std
  ``(58.395, 57.12, 57.375)`` with ``bgr_to_rgb=True`` (the model sees RGB); ``GetBBoxCenterScale``
  padding ``entry.bbox_padding`` (1.25; 1.0 for the MMPose 0.x ATRW rows); ``TopdownAffine(use_udp=...)``; the codec (``MSRAHeatmap`` with ``unbiased`` for
  DARK configs, ``UDPHeatmap`` for UDP configs; MMPose's default ``blur_kernel_size=11``, which
  every HRNet DARK config keeps, 384x288 included); ``test_cfg`` ``flip_test=True``,
  ``flip_mode='heatmap'``, ``shift_heatmap`` True except UDP configs (False).
* bottom-up pose (MMPose 0.x HigherHRNet): ``NormalizeTensor`` with the ImageNet mean/std on
  0..1 RGB values (the same normalisation on 0..255 values), the config's associative-embedding
  ``test_cfg`` (:class:`service.cards.BottomUpSpec`), flip test; any input size (multiples of
  64), one output per resolution stage.
* segmentation: ``SegDataPreProcessor`` with the same mean/std, RGB; test pipeline
  ``Resize(scale, keep_ratio=True)`` then ``test_cfg.mode`` whole or slide.

Torch-free: ``entry`` is a :class:`training.registry.ModelEntry` (itself torch-free), typed
``Any`` here so that this module does not import the registry.
"""

from __future__ import annotations

from typing import Any

from service.cards import (
    BottomUpCard,
    BottomUpSpec,
    CodecSpec,
    ModelCard,
    Normalization,
    SegmentationCard,
    SegTestPipeline,
    SourceSpec,
    TensorSpec,
    TopDownCard,
)
from service.datasets import get_pose_dataset, get_seg_dataset
from service.pipelines.common import IMAGENET_MEAN_RGB, IMAGENET_STD_RGB

#: The ImageNet RGB normalisation of every HRNet config (values in :mod:`service.pipelines.common`).
IMAGENET_RGB = Normalization(mean=IMAGENET_MEAN_RGB, std=IMAGENET_STD_RGB, channel_order="rgb")

#: ``GetBBoxCenterScale`` default padding in the MMPose 1.x top-down configs.
BBOX_PADDING = 1.25

#: ``MSRAHeatmap`` default ``blur_kernel_size`` (MMPose 1.x); no HRNet DARK config overrides it.
DEFAULT_BLUR_KERNEL = 11

POSE_INPUT = "input"
POSE_OUTPUT = "heatmaps"
SEG_INPUT = "input"
SEG_OUTPUT = "logits"
BOTTOMUP_INPUT = "input"


def bottomup_output_names(spec: BottomUpSpec) -> list[str]:
    """Graph/card output names of a bottom-up model, one per resolution stage, lowest first:
    ``heatmaps_tags_1_4`` (stage with tags, at 1/4 of the input) / ``heatmaps_1_2`` (heatmaps
    only, at 1/2), from ``spec.with_ae``."""
    return [
        ("heatmaps_tags" if ae else "heatmaps") + f"_1_{4 // 2**s}"
        for s, ae in enumerate(spec.with_ae)
    ]


def _dataset_and_width(entry: Any, task: str) -> tuple[Any, int]:
    """``(metainfo of entry.dataset, entry.num_outputs)`` after checking ``entry.task == task``
    and that the head width equals the dataset's keypoint (pose) / class (seg) count.

    Raises ``ValueError`` for another task or a width mismatch, ``KeyError`` (from
    :mod:`service.datasets`) for an unknown dataset.
    """
    if entry.task != task:
        raise ValueError(f"{entry.name} is a {entry.task} entry, not {task}")
    if task in ("topdown_pose", "bottomup_pose"):
        info = get_pose_dataset(entry.dataset)
        count, what = len(info.keypoint_names), "keypoints"
    else:
        info = get_seg_dataset(entry.dataset)
        count, what = len(info.classes), "classes"
    n = int(entry.num_outputs)
    if n != count:
        raise ValueError(
            f"{entry.name}: head has {n} outputs but dataset {entry.dataset!r} has {count} {what}"
        )
    return info, n


def _source(entry: Any, checkpoint: str | None, notes: str | None) -> SourceSpec:
    parts = [n for n in (entry.notes, notes) if n]
    return SourceSpec(
        arch=entry.name,
        config=entry.config,
        checkpoint=checkpoint,
        url=entry.url or None,
        metrics={str(k): float(v) for k, v in dict(entry.metrics).items()},
        notes=" ".join(parts) or None,
    )


def pose_card(
    entry: Any,
    name: str,
    *,
    checkpoint: str | None = None,
    notes: str | None = None,
    max_batch_size: int = 32,
    input_name: str = POSE_INPUT,
    output_name: str = POSE_OUTPUT,
) -> TopDownCard:
    """Card for a ``topdown_pose`` registry entry.

    Input ``input_name`` FP32 ``[3, H, W]`` with ``(W, H) = entry.input_size`` (pixels); output
    ``output_name`` FP32 ``[K, h, w]`` with ``K = entry.num_outputs`` and ``(w, h) =
    entry.heatmap_size`` (heatmap pixels). Codec ``entry.codec`` with ``entry.sigma``,
    ``unbiased=entry.dark``; ``use_udp``/``flip_test``/``shift_heatmap`` from the entry (MMPose:
    UDP configs set ``TopdownAffine(use_udp=True)`` and ``shift_heatmap=False``). Keypoint names,
    skeleton, flip indices and OKS sigmas come from ``get_pose_dataset(entry.dataset)`` (the
    head's keypoints); ``output_keypoint_indices`` from the entry (MMPose ``test_cfg``: the
    keypoints served, e.g. the COCO 17 of the 19-keypoint COCO-AIC combine head).

    Raises ``ValueError`` if the entry is not pose or its head width ``num_outputs`` differs from
    the dataset's keypoint count; ``KeyError`` for an unknown dataset.
    """
    info, k = _dataset_and_width(entry, "topdown_pose")
    w, h = (int(v) for v in entry.input_size)
    hw, hh = (int(v) for v in entry.heatmap_size)
    codec = CodecSpec(
        type=entry.codec,
        input_size=(w, h),
        heatmap_size=(hw, hh),
        sigma=float(entry.sigma),
        unbiased=bool(entry.dark),
        blur_kernel_size=DEFAULT_BLUR_KERNEL,
    )
    indices = entry.output_keypoint_indices
    return TopDownCard(
        name=name,
        task="topdown_pose",
        input_size=(w, h),
        inputs=[TensorSpec(name=input_name, dtype="FP32", dims=[3, h, w])],
        outputs=[TensorSpec(name=output_name, dtype="FP32", dims=[k, hh, hw])],
        max_batch_size=max_batch_size,
        normalization=IMAGENET_RGB,
        codec=codec,
        bbox_padding=entry.bbox_padding,
        use_udp=bool(entry.use_udp),
        flip_test=bool(entry.flip_test),
        shift_heatmap=bool(entry.shift_heatmap),
        keypoint_names=list(info.keypoint_names),
        skeleton=[(int(a), int(b)) for a, b in info.skeleton],
        flip_indices=[int(i) for i in info.flip_indices],
        sigmas=[float(s) for s in info.sigmas],
        dataset=entry.dataset,
        output_keypoint_indices=None if indices is None else [int(i) for i in indices],
        source=_source(entry, checkpoint, notes),
    )


def bottomup_spec(entry: Any) -> BottomUpSpec:
    """The :class:`service.cards.BottomUpSpec` of a ``bottomup_pose`` registry entry: its
    ``ae_test_cfg`` with ``input_size`` = the short side of ``entry.input_size`` (pixels).
    Raises ``pydantic.ValidationError`` for a field BottomUpSpec does not know."""
    return BottomUpSpec(input_size=int(min(entry.input_size)), **dict(entry.ae_test_cfg))


def bottomup_card(
    entry: Any,
    name: str,
    *,
    checkpoint: str | None = None,
    notes: str | None = None,
    max_batch_size: int = 4,
    input_name: str = BOTTOMUP_INPUT,
) -> BottomUpCard:
    """Card for a ``bottomup_pose`` registry entry (HigherHRNet).

    Input ``input_name`` FP32 ``[3, -1, -1]`` (the resized image; both sides multiples of 64);
    outputs named by :func:`bottomup_output_names`, in stage order (lowest resolution first):
    FP32 ``[K + K, -1, -1]`` (heatmaps then tags, 1/4 of the input) and ``[K, -1, -1]``
    (heatmaps, 1/2), their widths from ``bottomup.with_ae``/``tag_per_joint``. ``bottomup`` from
    :func:`bottomup_spec`; keypoint names, skeleton, flip indices and OKS sigmas from
    ``get_pose_dataset(entry.dataset)``; ``max_batch_size`` 4 (an image and its flip per call).

    Raises ``ValueError`` if the entry is not bottom-up or its joints differ from the dataset's
    keypoints; ``KeyError`` for an unknown dataset.
    """
    info, k = _dataset_and_width(entry, "bottomup_pose")
    spec = bottomup_spec(entry)
    tags = k if spec.tag_per_joint else 1
    outputs = [
        TensorSpec(name=n, dtype="FP32", dims=[k + (tags if ae else 0), -1, -1])
        for n, ae in zip(bottomup_output_names(spec), spec.with_ae)
    ]
    return BottomUpCard(
        name=name,
        task="bottomup_pose",
        input_size=(None, None),
        inputs=[TensorSpec(name=input_name, dtype="FP32", dims=[3, -1, -1])],
        outputs=outputs,
        max_batch_size=max_batch_size,
        normalization=IMAGENET_RGB,
        flip_test=bool(entry.flip_test),
        bottomup=spec,
        keypoint_names=list(info.keypoint_names),
        skeleton=[(int(a), int(b)) for a, b in info.skeleton],
        flip_indices=[int(i) for i in info.flip_indices],
        sigmas=[float(s) for s in info.sigmas],
        dataset=entry.dataset,
        source=_source(entry, checkpoint, notes),
    )


def seg_card(
    entry: Any,
    name: str,
    *,
    checkpoint: str | None = None,
    notes: str | None = None,
    max_batch_size: int = 8,
    input_name: str = SEG_INPUT,
    output_name: str = SEG_OUTPUT,
) -> SegmentationCard:
    """Card for a ``segmentation`` registry entry.

    Input ``input_name`` FP32 ``[3, -1, -1]`` (any ``H, W``); output ``output_name`` FP32
    ``[C, -1, -1]`` logits at 1/4 of the input (``ceil``), ``C = entry.num_outputs``. Test
    pipeline: ``scale = entry.test_scale`` ``(w, h)``, keep-ratio, ``mode = entry.test_mode``,
    slide ``crop_size``/``stride`` ``(h, w)`` from ``entry.test_crop``/``entry.test_stride``;
    ``align_corners`` from the entry. Classes and palette from ``get_seg_dataset(entry.dataset)``.

    Raises ``ValueError`` if the entry is not segmentation or ``num_outputs`` differs from the
    dataset's class count; ``KeyError`` for an unknown dataset.
    """
    info, c = _dataset_and_width(entry, "segmentation")

    def pair(v) -> tuple[int, int] | None:
        return None if v is None else (int(v[0]), int(v[1]))

    pipeline = SegTestPipeline(
        scale=pair(entry.test_scale),
        keep_ratio=True,
        mode=entry.test_mode,
        crop_size=pair(entry.test_crop),
        stride=pair(entry.test_stride),
    )
    return SegmentationCard(
        name=name,
        task="segmentation",
        input_size=(None, None),
        inputs=[TensorSpec(name=input_name, dtype="FP32", dims=[3, -1, -1])],
        outputs=[TensorSpec(name=output_name, dtype="FP32", dims=[c, -1, -1])],
        max_batch_size=max_batch_size,
        normalization=IMAGENET_RGB,
        classes=list(info.classes),
        palette=[(int(r), int(g), int(b)) for r, g, b in info.palette],
        test_pipeline=pipeline,
        align_corners=bool(entry.align_corners),
        dataset=entry.dataset,
        source=_source(entry, checkpoint, notes),
    )


def card_for_entry(
    entry: Any,
    name: str,
    *,
    checkpoint: str | None = None,
    notes: str | None = None,
    max_batch_size: int | None = None,
) -> ModelCard:
    """The card of registry ``entry`` served as model ``name`` (Triton model / folder name).

    Dispatches on ``entry.task`` to :func:`pose_card`, :func:`bottomup_card` or
    :func:`seg_card`. ``checkpoint`` (file or URL the weights were loaded from) and ``notes`` go
    to ``card.source``; ``max_batch_size`` defaults to 32 (top-down) / 4 (bottom-up) / 8
    (segmentation). Raises ``ValueError`` for an
    unsupported task, see the builders for the rest.
    """
    kw: dict[str, Any] = dict(checkpoint=checkpoint, notes=notes)
    if max_batch_size is not None:
        kw["max_batch_size"] = int(max_batch_size)
    if entry.task == "topdown_pose":
        return pose_card(entry, name, **kw)
    if entry.task == "bottomup_pose":
        return bottomup_card(entry, name, **kw)
    if entry.task == "segmentation":
        return seg_card(entry, name, **kw)
    raise ValueError(f"no card builder for task {entry.task!r} ({entry.name})")


__all__ = [
    "BBOX_PADDING",
    "DEFAULT_BLUR_KERNEL",
    "IMAGENET_RGB",
    "bottomup_card",
    "bottomup_output_names",
    "bottomup_spec",
    "card_for_entry",
    "pose_card",
    "seg_card",
]
