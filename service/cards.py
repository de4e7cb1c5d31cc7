"""Model cards: the machine-readable description stored beside each model in the repository.

A card is ``model_repository/<name>/card.json``, next to Triton's ``config.pbtxt``. It tells the
gateway everything it needs to run the model the way it was trained: the task, the input tensor
(name, size, normalisation, channel order), the codec that turns heatmaps into keypoints, the
dataset metainfo (keypoint names, skeleton, flip pairs, OKS sigmas, classes, palette), and where
the weights came from with their published metrics.

``export/`` writes cards, ``service/`` reads them; both use this one schema. A card is typed by
its task: :class:`TopDownCard`, :class:`BottomUpCard`, :class:`DetectorCard`,
:class:`SegmentationCard` (:data:`ModelCard` is their discriminated union; :func:`parse_card` and
:func:`load_card` return the right one).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from .layout import CARD_FILENAME

Task = Literal["topdown_pose", "bottomup_pose", "detection", "segmentation"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class Normalization(_Strict):
    """Input normalisation: ``(pixel - mean) / std`` on 0..255 values, per channel.

    ``channel_order`` is the order the *model* expects (``rgb`` for MMPose/MMSeg HRNet models,
    ``bgr`` for the MMDeploy RTMDet export). ``mean``/``std`` are given in that same order.
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    channel_order: Literal["rgb", "bgr"] = "rgb"


class TensorSpec(_Strict):
    """One input or output tensor of the ONNX graph / Triton model (batch axis excluded from ``dims``).

    ``dims`` uses -1 for a dynamic axis, as Triton's ``config.pbtxt`` does.
    """

    name: str
    dtype: Literal["FP32", "FP16", "INT64", "INT32", "UINT8"] = "FP32"
    dims: list[int]


class CodecSpec(_Strict):
    """Heatmap codec parameters (MMPose 1.x ``MSRAHeatmap`` / ``UDPHeatmap``).

    Sizes are ``(width, height)`` in pixels: ``input_size`` of the model input crop,
    ``heatmap_size`` of the output heatmaps.
    """

    type: Literal["MSRAHeatmap", "UDPHeatmap"] = "MSRAHeatmap"
    input_size: tuple[int, int]
    heatmap_size: tuple[int, int]
    sigma: float = 2.0
    unbiased: bool = False  # DARK refinement (MSRAHeatmap only)
    blur_kernel_size: int = 11


class DetectorSpec(_Strict):
    """Person-detector parameters (RTMDet as exported by MMDeploy, class-aware NMS inside the graph).

    ``score_threshold`` is MMPose's ``bbox_thr`` (boxes kept when ``score >`` it) and
    ``nms_threshold`` its ``nms_thr``: the person-box NMS that MMPose's top-down demo
    (``demo/topdown_demo_with_mmdet.py``) and ``Pose2DInferencer`` apply after the detector, both
    defaulting to 0.3 (``mmpose.evaluation.functional.nms``; see ``service.pipelines.detector``).
    """

    score_threshold: float = 0.3
    nms_threshold: float = Field(0.3, ge=0.0, le=1.0)
    pad_value: float = 114.0
    person_label: int = 0
    max_detections: int = 100


#: Upstream's grouping order for the 17 COCO keypoints, 0-based: nose, eyes, ears, shoulders, hips,
#: elbows, wrists, knees, ankles (the HigherHRNet repo's / MMPose 0.x ``HeatmapParser``).
COCO_JOINT_ORDER = (0, 1, 2, 3, 4, 5, 6, 11, 12, 7, 8, 9, 10, 13, 14, 15, 16)


class BottomUpSpec(_Strict):
    """Bottom-up (associative-embedding) test-time parameters, as MMPose 0.x ``AEHigherResolutionHead``
    configs' ``test_cfg`` / ``data_cfg`` and the original HigherHRNet repo's ``TEST`` section.

    ``input_size`` is the short side (pixels) the image is resized to at scale 1 (512 or 640); both
    resized sides are multiples of ``size_divisor``. The network outputs, in ``ModelCard.outputs``
    order, one tensor per resolution stage, lowest resolution first (HigherHRNet: 1/4 with
    ``num_joints`` heatmaps + tag maps, then 1/2 with heatmaps only); ``with_heatmaps`` /
    ``with_ae`` say which stages carry heatmaps / tags. ``joint_order`` is the order in which
    joints are grouped (empty: :meth:`grouping_order`'s upstream default). Invalid grouping
    parameters (even NMS kernel, negative detection threshold, a joint order that is not a
    permutation) are refused when the card is loaded, so requests never meet them.
    ``scale_factor`` lists the test scales (``[1.0]`` single scale; ``[2, 1, 0.5]`` for the
    published multi-scale numbers).
    """

    type: Literal["AssociativeEmbedding"] = "AssociativeEmbedding"
    input_size: int = 512
    size_divisor: int = 64
    num_joints: int = 17
    max_num_people: int = 30
    detection_threshold: float = 0.1
    tag_threshold: float = 1.0
    use_detection_val: bool = True
    ignore_too_much: bool = False
    nms_kernel: int = 5
    nms_padding: int = 2
    tag_per_joint: bool = True
    adjust: bool = True
    refine: bool = True
    with_heatmaps: list[bool] = Field(default_factory=lambda: [True, True])
    with_ae: list[bool] = Field(default_factory=lambda: [True, False])
    project2image: bool = True
    align_corners: bool = False
    use_udp: bool = False
    scale_factor: list[float] = Field(default_factory=lambda: [1.0])
    joint_order: list[int] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check_grouping(self) -> BottomUpSpec:
        if (
            self.nms_kernel < 1
            or self.nms_kernel % 2 == 0
            or self.nms_padding != self.nms_kernel // 2
        ):
            raise ValueError(
                f"nms_kernel must be odd with nms_padding = nms_kernel // 2 (the peak "
                f"map keeps the heatmap size), got {self.nms_kernel}, {self.nms_padding}"
            )
        if not self.detection_threshold >= 0:  # below 0 upstream would keep zeroed non-peaks too
            raise ValueError(f"detection_threshold must be >= 0, got {self.detection_threshold}")
        if self.max_num_people < 1:
            raise ValueError(f"max_num_people must be >= 1, got {self.max_num_people}")
        if self.joint_order and sorted(self.joint_order) != list(range(self.num_joints)):
            raise ValueError(
                f"joint_order must be a permutation of range({self.num_joints}), "
                f"got {self.joint_order}"
            )
        return self

    def grouping_order(self) -> tuple[int, ...]:
        """The joint order of the grouping: ``joint_order``, or upstream's default when empty
        (MMPose 0.x ``_Params``: :data:`COCO_JOINT_ORDER` for 17 joints, else index order)."""
        if self.joint_order:
            return tuple(self.joint_order)
        return COCO_JOINT_ORDER if self.num_joints == 17 else tuple(range(self.num_joints))


class SegTestPipeline(_Strict):
    """MMSeg 1.x test pipeline: keep-ratio resize to ``scale`` (w, h), then whole or slide inference.

    ``crop_size`` and ``stride`` are ``(height, width)`` as in MMSeg's ``test_cfg``.
    """

    scale: tuple[int, int] | None = None
    keep_ratio: bool = True
    mode: Literal["whole", "slide"] = "whole"
    crop_size: tuple[int, int] | None = None
    stride: tuple[int, int] | None = None


class SourceSpec(_Strict):
    """Provenance: registry config name, checkpoint file/URL and the published metrics."""

    arch: str | None = None
    config: str | None = None
    checkpoint: str | None = None
    url: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    notes: str | None = None


class QuantizationSpec(_Strict):
    """How a reduced-precision graph was made from its fp32 model and how its accuracy was checked
    (written by ``hrnet-export --precision``, :mod:`export.quantize`).

    ``method``: the quantiser and its settings (e.g. ONNX Runtime static QDQ, per-channel int8
    weights, uint8 activations calibrated by min-max); ``calibration``: where the calibration
    crops came from and how many; ``excluded_nodes``: nodes left in fp32 (mixed precision);
    ``check``: the accuracy check against the fp32 model on the calibration crops (keypoint
    agreement as mean OKS, heatmap argmax agreement, largest heatmap difference), ``threshold``:
    the agreement the export required (the entry is only written when the check reaches it).
    """

    method: str
    calibration: str
    excluded_nodes: list[str] = Field(default_factory=list)
    check: dict[str, float] = Field(default_factory=dict)
    threshold: float | None = None


class _CardBase(_Strict):
    """Fields every card has, whatever its task.

    Sizes: ``input_size`` is ``(width, height)`` of the network input in pixels (``None`` entries
    mean dynamic, as for segmentation and bottom-up pose). ``inputs``/``outputs`` name the graph's
    tensors (Triton ``config.pbtxt`` dims, batch axis excluded).
    """

    name: str
    input_size: tuple[int | None, int | None]
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    max_batch_size: int = 32
    normalization: Normalization
    dataset: str | None = None  # metainfo key (service.datasets), e.g. "coco", "cityscapes"
    source: SourceSpec = Field(default_factory=SourceSpec)
    # arithmetic of the served graph: "int8" = a QDQ graph (ONNX Runtime runs it natively)
    precision: Literal["fp32", "int8"] = "fp32"
    quantization: QuantizationSpec | None = None

    @model_validator(mode="before")
    @classmethod
    def _drop_other_tasks_defaults(cls, data: Any) -> Any:
        """Cards written before cards were typed per task carry every task's fields at their
        defaults (``"classes": []`` in a pose card, ``"bbox_padding": 1.25`` in a segmentation
        card ...). Such a field is dropped when it holds its default; any other value of a field
        this task does not have stays and is refused (``extra="forbid"``) naming it."""
        if not isinstance(data, dict):
            return data
        own = cls.model_fields
        return {
            k: v
            for k, v in data.items()
            if k in own
            or k not in _FOREIGN_DEFAULTS
            or (v not in (None, []) and _FOREIGN_DEFAULTS[k] != v)
        }

    def save(self, directory: Path | str) -> Path:
        """Write ``<directory>/card.json`` and return its path."""
        path = Path(directory) / CARD_FILENAME
        path.write_text(json.dumps(self.model_dump(mode="json"), indent=2) + "\n")
        return path


class _PoseCard(_CardBase):
    """Keypoint metainfo shared by top-down and bottom-up pose cards: the head's keypoints in
    channel order, skeleton links, flip pairs as a permutation (``flip_indices``), OKS sigmas
    and the flip-test default."""

    flip_test: bool = True
    keypoint_names: list[str]
    skeleton: list[tuple[int, int]] = Field(default_factory=list)
    flip_indices: list[int] = Field(default_factory=list)
    sigmas: list[float] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check_keypoints(self) -> _PoseCard:
        k = len(self.keypoint_names)
        if k == 0:
            raise ValueError(f"{self.task} card needs 'keypoint_names'")  # type: ignore[attr-defined]
        for field in ("flip_indices", "sigmas"):
            v = getattr(self, field)
            if v and len(v) != k:
                raise ValueError(f"'{field}' has {len(v)} entries, expected {k} (one per keypoint)")
        if self.flip_indices and sorted(self.flip_indices) != list(range(k)):
            raise ValueError("'flip_indices' must be a permutation of range(num_keypoints)")
        for a, b in self.skeleton:
            if not (0 <= a < k and 0 <= b < k):
                raise ValueError(f"skeleton link ({a}, {b}) out of range for {k} keypoints")
        return self

    @property
    def num_keypoints(self) -> int:
        """Keypoints the head predicts (heatmap channels of a pose model)."""
        return len(self.keypoint_names)

    @property
    def output_keypoints(self) -> list[int]:
        """Indices of the served keypoints among the head's (all of them unless a top-down card
        selects some with ``output_keypoint_indices``)."""
        return list(range(self.num_keypoints))

    @property
    def output_keypoint_names(self) -> list[str]:
        """Names of the served keypoints, in response order."""
        return [self.keypoint_names[i] for i in self.output_keypoints]

    @property
    def output_skeleton(self) -> list[tuple[int, int]]:
        """The skeleton links whose two ends are both served, renumbered to response indices."""
        pos = {k: j for j, k in enumerate(self.output_keypoints)}
        return [(pos[a], pos[b]) for a, b in self.skeleton if a in pos and b in pos]


class TopDownCard(_PoseCard):
    """A top-down pose model (MMPose 1.x ``TopdownPoseEstimator``): one person crop in, heatmaps
    out, decoded by ``codec``. ``bbox_padding`` is ``GetBBoxCenterScale``'s padding, ``use_udp``
    ``TopdownAffine(use_udp=True)``, ``shift_heatmap`` the flip test's one-pixel shift."""

    task: Literal["topdown_pose"]
    codec: CodecSpec
    bbox_padding: float = 1.25
    use_udp: bool = False
    shift_heatmap: bool = True
    # MMPose ``test_cfg.output_keypoint_indices``: the head's keypoints that are served, in this
    # order (None: all). The keypoint fields describe the head's keypoints (flip test needs them).
    output_keypoint_indices: list[int] | None = None

    @model_validator(mode="after")
    def _check_selection(self) -> TopDownCard:
        sel, k = self.output_keypoint_indices, self.num_keypoints
        if sel is not None and (
            not sel or len(set(sel)) != len(sel) or not all(0 <= i < k for i in sel)
        ):
            raise ValueError(
                f"'output_keypoint_indices' must be distinct indices in "
                f"range({k}), at least one; got {sel}"
            )
        return self

    @property
    def output_keypoints(self) -> list[int]:
        """``output_keypoint_indices``, else all of ``range(num_keypoints)``."""
        if self.output_keypoint_indices is None:
            return list(range(self.num_keypoints))
        return list(self.output_keypoint_indices)


class BottomUpCard(_PoseCard):
    """A bottom-up pose model (HigherHRNet, associative embedding): the whole image in, one
    output per resolution stage, grouped with the test parameters of ``bottomup``."""

    task: Literal["bottomup_pose"]
    bottomup: BottomUpSpec

    @model_validator(mode="after")
    def _check_joints(self) -> BottomUpCard:
        if self.num_keypoints != self.bottomup.num_joints:
            raise ValueError(
                f"'keypoint_names' has {self.num_keypoints} entries, "
                f"'bottomup.num_joints' is {self.bottomup.num_joints}"
            )
        return self


class DetectorCard(_CardBase):
    """A person detector (RTMDet as exported by MMDeploy, NMS inside the graph)."""

    task: Literal["detection"]
    detector: DetectorSpec


class SegmentationCard(_CardBase):
    """A semantic segmentation model (MMSeg 1.x ``EncoderDecoder``): class names, RGB palette,
    test pipeline, and the ``align_corners`` of its resizes."""

    task: Literal["segmentation"]
    classes: list[str]
    palette: list[tuple[int, int, int]] = Field(default_factory=list)
    test_pipeline: SegTestPipeline | None = None
    align_corners: bool = False

    @model_validator(mode="after")
    def _check_classes(self) -> SegmentationCard:
        if not self.classes:
            raise ValueError("segmentation card needs 'classes'")
        if len(self.classes) > 255:  # label maps are uint8 and 255 is the ignore id
            raise ValueError(f"{len(self.classes)} classes do not fit a uint8 label map")
        if self.palette and len(self.palette) != len(self.classes):
            raise ValueError(
                f"'palette' has {len(self.palette)} colours for {len(self.classes)} classes"
            )
        return self


#: Any card, told apart by its ``task`` (a pydantic discriminated union): each pipeline takes the
#: one type whose fields its task has.
ModelCard = Annotated[
    TopDownCard | BottomUpCard | DetectorCard | SegmentationCard, Field(discriminator="task")
]
PoseCard = TopDownCard | BottomUpCard
CARD_TYPES: dict[str, type[_CardBase]] = {
    "topdown_pose": TopDownCard,
    "bottomup_pose": BottomUpCard,
    "detection": DetectorCard,
    "segmentation": SegmentationCard,
}
_ADAPTER: TypeAdapter = TypeAdapter(ModelCard)

# field name -> default, for the fields some task's card has and others do not (see
# _CardBase._drop_other_tasks_defaults; required fields were None or [] in untyped cards)
_FOREIGN_DEFAULTS: dict[str, Any] = {
    name: (
        None
        if f.is_required()
        else f.default_factory()  # type: ignore[call-arg]
        if f.default_factory is not None
        else f.default
    )
    for t in CARD_TYPES.values()
    for name, f in t.model_fields.items()
    if name not in _CardBase.model_fields and name != "task"
}


def parse_card(data: Any) -> ModelCard:
    """The card of the right type for ``data["task"]`` (a dict, or a card to copy).

    Raises ``pydantic.ValidationError`` naming the bad field, an unknown task, or a field the
    task's card does not have.
    """
    if isinstance(data, _CardBase):
        data = data.model_dump()
    return _ADAPTER.validate_python(data)


def load_card(path: Path | str) -> ModelCard:
    """Read a card from ``card.json`` (or a directory holding one); raises
    ``pydantic.ValidationError`` for a malformed card, OSError when it cannot be read."""
    p = Path(path)
    if p.is_dir():
        p = p / CARD_FILENAME
    return _ADAPTER.validate_json(p.read_text())


def make_card(**fields: Any) -> ModelCard:
    """:func:`parse_card` of keyword fields: ``make_card(name=..., task="segmentation", ...)``."""
    return parse_card(fields)
