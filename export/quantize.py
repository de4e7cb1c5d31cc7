"""Reduced-precision (int8) top-down pose graphs: calibration on real person crops, ONNX Runtime
static quantisation, and the accuracy check that decides whether the entry may be written.

Pipeline (``hrnet-export ... --precision int8 --calibration DIR``):

1. :func:`calibration_crops`: person crops cut from the ground-truth boxes of a COCO-style folder
   (``DIR`` holds a keypoint/instances json, under ``annotations/`` or at its top, and the images
   named by its ``file_name``), with the gateway's own crop and normalisation
   (:func:`service.pipelines.topdown.prepare_inputs`, no flip), so the calibration sees exactly
   the tensors the served model will see.
2. :func:`quantize_int8`: ONNX Runtime's static quantisation
   (``onnxruntime.quantization.quantize_static``) in QDQ format: int8 weights per output channel,
   uint8 activations (U8S8, the fast x86 kernels) whose ranges come from the calibration crops
   (``minmax``, ``percentile`` (99.999th percentile of |x|) or ``entropy``), optionally leaving
   named nodes in fp32.
   ``minmax`` keeps only per-tensor minima and maxima; the histogram methods keep every
   activation of every crop in memory until the end (ONNX Runtime's calibrators), about 0.2 GB
   a crop for HRNet-W32 at 256x192 (48 crops were OOM-killed at 9.8 GB on a 23 GB host).
   ONNX Runtime (and Triton's ONNX Runtime backend) runs the QDQ graph natively with int8 kernels.
3. :func:`check_agreement`: both graphs on the calibration crops, both heatmap sets decoded by the
   card's codec; the reduced graph's keypoints are scored against the fp32 graph's with the COCO
   OKS formula (:func:`service.metrics.coco_keypoints.mean_oks`, the card's sigmas, every
   keypoint counted, area = the crop's box area in input pixels, ``w * h / padding**2``): 1.0 is
   identical keypoints. Also reported: the fraction of heatmaps whose argmax is the same pixel
   and the largest absolute heatmap difference.
4. :func:`reduce_precision`: steps 2-3 and the refusal: below ``threshold`` it raises
   :class:`PrecisionRefused` and nothing is written; otherwise it returns the graph and the card
   with ``precision="int8"`` and a :class:`service.cards.QuantizationSpec` recording the method,
   the calibration source and the check's figures.

Upstream semantics followed: ONNX Runtime's quantisation tool (``onnxruntime.quantization``,
QDQ format, per-channel weights) and the COCO OKS definition (``pycocotools`` ``computeOks``).
Needs onnx and onnxruntime, no torch.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from service.cards import ModelCard, QuantizationSpec, TopDownCard
from service.codecs import build_codec
from service.geometry import bbox_xywh2xyxy
from service.metrics.coco_keypoints import mean_oks
from service.pipelines.topdown import prepare_inputs

from .onnx_export import ExportError, cpu_session

log = logging.getLogger(__name__)

CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
#: default minimum keypoint agreement (mean OKS of int8 vs fp32 keypoints on the calibration crops)
DEFAULT_MIN_AGREEMENT = 0.95
#: default number of calibration crops
DEFAULT_CALIBRATION_CROPS = 128
#: percentile of |activation| used as the range by ``method="percentile"``
PERCENTILE = 99.999
#: boxes narrower or lower than this (image pixels) are not used for calibration
MIN_BOX_SIDE = 8.0


class PrecisionRefused(ExportError):
    """The reduced-precision graph's accuracy check fell below the threshold; nothing written."""


@dataclass
class Agreement:
    """Reduced-precision vs fp32 on the same crops.

    ``mean_oks``: mean OKS of the reduced graph's decoded keypoints against the fp32 graph's
    (input pixels; 1.0 = identical); ``argmax_agreement``: fraction of (crop, keypoint) heatmaps
    with the same argmax pixel; ``max_abs_diff``: largest |heatmap difference|; ``crops``: how
    many crops were compared.
    """

    mean_oks: float
    argmax_agreement: float
    max_abs_diff: float
    crops: int

    def as_dict(self) -> dict[str, float]:
        """The figures as the card records them."""
        return {
            "keypoint_mean_oks": round(self.mean_oks, 6),
            "argmax_agreement": round(self.argmax_agreement, 6),
            "max_abs_heatmap_diff": float(f"{self.max_abs_diff:.6g}"),
            "crops": float(self.crops),
        }


def _is_coco(data: object) -> bool:
    return isinstance(data, dict) and "images" in data and "annotations" in data


def _find_annotation(calib_dir: Path, ann_file: Path | None = None) -> tuple[Path, dict]:
    """``ann_file`` parsed, or else the first COCO-style json (in name order) under
    ``calib_dir/annotations`` or ``calib_dir``."""
    if ann_file is not None:
        try:
            data = json.loads(ann_file.read_text())
        except (OSError, ValueError) as exc:
            raise ExportError(f"calibration annotation {ann_file} unreadable: {exc}") from exc
        if not _is_coco(data):
            raise ExportError(
                f"calibration annotation {ann_file} is not COCO-style "
                "(needs 'images' and 'annotations')"
            )
        return ann_file, data
    for pattern in ("annotations/*.json", "*.json"):
        for path in sorted(calib_dir.glob(pattern)):
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if _is_coco(data):
                return path, data
    raise ExportError(
        f"no COCO-style annotation json (with 'images' and 'annotations') in "
        f"{calib_dir} or {calib_dir / 'annotations'}"
    )


def _find_image(calib_dir: Path, file_name: str) -> Path | None:
    direct = calib_dir / file_name
    if direct.is_file():
        return direct
    for sub in sorted(p for p in calib_dir.iterdir() if p.is_dir()):
        if (sub / file_name).is_file():
            return sub / file_name
    return None


def calibration_crops(
    calib_dir: Path | str,
    card: TopDownCard,
    limit: int = DEFAULT_CALIBRATION_CROPS,
    ann_file: Path | str | None = None,
) -> np.ndarray:
    """Network inputs ``(N, 3, h, w)`` float32 for the ground-truth boxes of a COCO-style folder.

    Annotation: ``ann_file`` when given (e.g. a train split, ``runs/dlc_data/annotations/
    train.json``, whose folder also holds ``test.json``), else the first json in name order
    under ``calib_dir/annotations`` or ``calib_dir`` that has ``images`` and ``annotations``.
    Images: ``file_name`` under ``calib_dir`` or one of its direct sub-folders. Boxes: every
    non-crowd annotation with a ``bbox`` whose sides are at least :data:`MIN_BOX_SIDE` image
    pixels (keypoints are not needed), xywh -> xyxy, images in id
    order, boxes in file order, the first ``limit`` kept. Crops and normalisation are the
    gateway's (:func:`service.pipelines.topdown.prepare_inputs` with the card, flip off).

    Raises :class:`ExportError` when the folder has no annotation json (or ``ann_file`` is
    unreadable or not COCO-style), an image cannot be read, or no box qualifies.
    """
    calib_dir = Path(calib_dir)
    if not calib_dir.is_dir():
        raise ExportError(f"calibration folder not found: {calib_dir}")
    if limit < 1:
        raise ExportError(f"the number of calibration crops must be >= 1, got {limit}")
    ann_path, coco = _find_annotation(calib_dir, Path(ann_file) if ann_file else None)
    boxes: dict = {}
    for ann in coco["annotations"]:
        bbox = ann.get("bbox")
        if ann.get("iscrowd", 0) or not bbox or min(bbox[2], bbox[3]) < MIN_BOX_SIDE:
            continue
        boxes.setdefault(ann["image_id"], []).append(bbox[:4])
    batches, total = [], 0
    for im in sorted(coco["images"], key=lambda im: im["id"]):
        if im["id"] not in boxes or total >= limit:
            continue
        path = _find_image(calib_dir, im["file_name"])
        image = cv2.imread(str(path)) if path is not None else None
        if image is None:
            raise ExportError(
                f"calibration image {im['file_name']} not found or unreadable under {calib_dir}"
            )
        # float32 first, then corners: the gateway's order for JSON boxes
        b = bbox_xywh2xyxy(np.asarray(boxes[im["id"]][: limit - total], np.float32))
        _, _, x = prepare_inputs(image, b, card, flip_test=False)
        batches.append(x)
        total += len(x)
    if not batches:
        raise ExportError(f"no person box of at least {MIN_BOX_SIDE:g} px in {ann_path}")
    return np.concatenate(batches)


def run_onnx(path: Path | str, x: np.ndarray, batch: int = 16) -> np.ndarray:
    """The first output of the ONNX graph at ``path`` on ``x`` (``(N, 3, h, w)`` float32 network
    inputs, run ``batch`` items at a time on ONNX Runtime's CPU provider), concatenated along
    axis 0 (e.g. ``(N, K, h/4, w/4)`` float32 heatmaps). ONNX Runtime's errors (unloadable graph,
    wrong input shape) propagate."""
    sess = cpu_session(path, log_severity_level=3, wrap_errors=False)
    name = sess.get_inputs()[0].name
    return np.concatenate(
        [sess.run(None, {name: x[i : i + batch]})[0] for i in range(0, len(x), batch)]
    )


class _Reader(CalibrationDataReader):
    """The calibration crops ``x`` as ONNX Runtime's calibration feeds, ``batch`` at a time."""

    def __init__(self, name: str, x: np.ndarray, batch: int = 8):
        self._feeds = iter([{name: x[i : i + batch]} for i in range(0, len(x), batch)])

    def get_next(self):
        return next(self._feeds, None)


def name_nodes(path: Path | str) -> list[str]:
    """Give every unnamed node of the ONNX file at ``path`` the name ``<op_type>_<index>`` (its
    position in the graph), rewrite the file, and return all node names in graph order.

    ``nodes_to_exclude`` matches node names, and converted graphs (PP-TinyPose: all 1035 nodes)
    often have none; after ONNX Runtime's pre-processing the names are stable for one source
    graph, so ``--fp32-nodes`` can name them."""
    import onnx

    model = onnx.load(str(path))
    taken = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            candidate = f"{node.op_type}_{i}"
            while candidate in taken:
                candidate += "_"
            node.name = candidate
            taken.add(candidate)
    onnx.save(model, str(path))
    return [n.name for n in model.graph.node]


def keep_fp32(qdq_path: Path | str, fp32_path: Path | str, nodes: Sequence[str]) -> list[str]:
    """Rewrite the QDQ graph at ``qdq_path`` so that ``nodes`` compute in fp32: each reads
    exactly the values it reads in the fp32 graph at ``fp32_path`` (the pre-processed graph that
    was quantised: same node names), i.e. float activations (the tensor before its
    QuantizeLinear) and the float weights and bias. QuantizeLinear / DequantizeLinear nodes
    and initializers left without a consumer are removed; a kept node's output keeps its
    QuantizeLinear when a quantised node reads it. Returns the names in ``nodes`` that the
    quantiser had removed (a Relu / Clip after a quantised node: ``quantize_static`` drops it
    and lets the uint8 QuantizeLinear's clamp do its work), which need nothing.

    Every data-movement node (:data:`DATA_MOVEMENT_OPS`) between a kept node and the computing
    node it reads from is kept too; a graph output written by a kept node is not quantised. A
    kept node that reads the output of such a removed Relu / Clip (in the QDQ graph that
    tensor holds the values *before* the activation, under the activation's output name) reads
    it through a copy of that Relu / Clip.

    Why not ``quantize_static(nodes_to_exclude=...)`` alone: that leaves an excluded
    Conv / ConvTranspose / Gemm with float weights between the DequantizeLinear of its input and
    the QuantizeLinear of its output, and ONNX Runtime's ``WeightBiasQuantization`` graph
    transformer (session optimisation level basic and up, ``onnxruntime/core/optimizer/
    qdq_transformer/weight_bias_quantization.cc``) then quantises those weights itself when the
    session loads, per tensor, with an int32 bias at input scale x weight scale: PP-TinyPose
    with its 96 depthwise convolutions "excluded" went from keypoint agreement 0.44 (all int8)
    to 0.05. A node whose input is float is not touched by that pass, nor fused by ONNX
    Runtime's QDQ node-unit fusions (which need every input from DequantizeLinear), so it
    really runs in fp32; its producer, whose output now also feeds a float reader, is not fused
    either (it computes in fp32 from its dequantised int8 weights).

    Raises :class:`ExportError` for a name that is not a node of the fp32 graph.
    """
    import onnx
    from onnx import helper, numpy_helper

    model, ref = onnx.load(str(qdq_path)), onnx.load(str(fp32_path))
    graph = model.graph
    ref_nodes = {n.name: n for n in ref.graph.node}
    ref_producer = {o: n for n in ref.graph.node for o in n.output}
    ref_inits = {i.name: i for i in ref.graph.initializer}
    missing = [n for n in nodes if n not in ref_nodes]
    if missing:
        raise ExportError(f"--fp32-nodes: no node named {', '.join(missing)} in the graph")
    own = {n.name: n for n in graph.node}
    inits = {i.name: i for i in graph.initializer}
    produced = {o for n in graph.node for o in n.output}

    def float_initializer(tensor: str) -> str:
        same = inits.get(tensor)
        if same is not None and same.data_type == ref_inits[tensor].data_type:
            return tensor  # not quantised (e.g. a Reshape's shape): shared as it is
        alias = tensor if tensor not in inits and tensor not in produced else f"{tensor}_fp32"
        if alias not in inits:
            array = numpy_helper.to_array(ref_inits[tensor])
            graph.initializer.append(numpy_helper.from_array(array, alias))
            inits[alias] = graph.initializer[-1]
        return alias

    def float_activation(tensor: str) -> str:
        act = ref_producer.get(tensor)
        if act is None or act.op_type not in ("Relu", "Clip") or act.name in own:
            return tensor  # the same values in both graphs
        alias = f"{tensor}_fp32"
        if alias not in produced:  # the quantiser dropped this activation: apply it again
            extra = [float_initializer(t) if t in ref_inits else t for t in act.input[1:]]
            copy = helper.make_node(act.op_type, [tensor, *extra], [alias], f"{act.name}_fp32")
            copy.attribute.extend(act.attribute)
            graph.node.append(copy)
            produced.add(alias)
        return alias

    kept = _with_data_movement(ref.graph, nodes)
    skipped = [n for n in kept if n not in own]
    for name in kept:
        if name in own:
            wanted = [
                float_initializer(t) if t in ref_inits else float_activation(t) if t else t
                for t in ref_nodes[name].input
            ]
            del own[name].input[:]
            own[name].input.extend(wanted)
    _float_graph_outputs(graph, {own[n].name for n in kept if n in own})
    _prune_qdq(graph)
    _topological_sort(graph)
    onnx.save(model, str(qdq_path))
    return skipped


#: ops that only move, pick or resample values: a node kept in fp32 that reads one of them reads
#: quantised values unless the op is kept too (ONNX Runtime's QDQ propagation also moves
#: DequantizeLinear forward across several of them, onto the kept node's input)
DATA_MOVEMENT_OPS = frozenset(
    {
        "Concat",
        "DepthToSpace",
        "Expand",
        "Flatten",
        "Gather",
        "Identity",
        "MaxPool",
        "Pad",
        "Reshape",
        "Resize",
        "Slice",
        "SpaceToDepth",
        "Split",
        "Squeeze",
        "Tile",
        "Transpose",
        "Unsqueeze",
    }
)


def _with_data_movement(graph, nodes: Sequence[str]) -> list[str]:
    """``nodes`` plus, transitively, every :data:`DATA_MOVEMENT_OPS` node of ``graph`` (the fp32
    graph) that produces an input of one of them, so that the kept nodes read float values of
    a computing node, not moved copies of dequantised ones. Order: as given, then graph order."""
    producer = {o: n for n in graph.node for o in n.output}
    kept = dict.fromkeys(nodes)
    todo = list(kept)
    by_name = {n.name: n for n in graph.node}
    while todo:
        for t in by_name[todo.pop()].input:
            p = producer.get(t)
            if p is not None and p.op_type in DATA_MOVEMENT_OPS and p.name not in kept:
                kept[p.name] = None
                todo.append(p.name)
    return list(kept)


def _float_graph_outputs(graph, kept: set[str]) -> None:
    """A graph output that is DequantizeLinear(QuantizeLinear(T)) with T made by a kept node is
    written by that node directly (the heatmaps are not rounded to the uint8 grid)."""
    producer = {o: n for n in graph.node for o in n.output}
    for out in graph.output:
        dq = producer.get(out.name)
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        q = producer.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear":
            continue
        src = producer.get(q.input[0])
        if src is None or src.name not in kept:
            continue
        tensor = q.input[0]
        graph.node.remove(dq)
        for n in graph.node:
            for j, t in enumerate(n.input):
                if t == tensor:
                    n.input[j] = out.name
        for j, t in enumerate(src.output):
            if t == tensor:
                src.output[j] = out.name


def _topological_sort(graph) -> None:
    """Order ``graph.node`` so that every node comes after the producers of its inputs (ONNX
    requires it; the activation copies of :func:`keep_fp32` are appended at the end)."""
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        rest = []
        for n in pending:
            if all(i in ready for i in n.input):
                ordered.append(n)
                ready.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise ExportError(f"graph has a cycle or a dangling input at {rest[0].name}")
        pending = rest
    copies = [type(n)() for n in ordered]
    for c, n in zip(copies, ordered):
        c.CopyFrom(n)
    del graph.node[:]
    graph.node.extend(copies)


def _prune_qdq(graph) -> None:
    """Remove QuantizeLinear / DequantizeLinear nodes whose outputs nobody reads (repeatedly),
    then initializers nobody reads."""
    outputs = {o.name for o in graph.output}
    while True:
        read = {i for n in graph.node for i in n.input} | outputs
        dead = [
            n
            for n in graph.node
            if n.op_type in ("QuantizeLinear", "DequantizeLinear")
            and not any(o in read for o in n.output)
        ]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    read = {i for n in graph.node for i in n.input}
    for init in [i for i in graph.initializer if i.name not in read]:
        graph.initializer.remove(init)


def quantize_int8(
    src: Path | str,
    dst: Path | str,
    crops: np.ndarray,
    *,
    method: str = "minmax",
    exclude_nodes: Sequence[str] = (),
    per_channel: bool = True,
    fp32_out: Path | str | None = None,
) -> None:
    """Write ``dst``: the static int8 QDQ graph of the fp32 ONNX graph ``src``.

    ONNX Runtime's pre-processing (ONNX shape inference and graph optimisation, so BatchNorm is
    folded before weights are quantised), then ``quantize_static`` with QDQ nodes, signed int8
    weights (per output channel with ``per_channel``) and unsigned 8-bit activations (ONNX
    Runtime's U8S8 kernels: on this AVX-512 VNNI host HRNet-W32 ran 3.07x fp32 with them and
    1.03x with signed int8 activations, S8S8, in the same run) whose ranges are
    calibrated on ``crops`` ``(N, 3, h, w)`` float32 with ``method`` (``minmax``, ``percentile``:
    the :data:`PERCENTILE` th percentile of |x|, or ``entropy``). ``exclude_nodes`` (names
    after :func:`name_nodes`) then compute in fp32 (:func:`keep_fp32`: float inputs and
    weights). ``fp32_out``: also write there the pre-processed fp32 graph that was quantised
    (node names as ``exclude_nodes`` uses them; :mod:`export.sensitivity` needs it). Raises
    :class:`ExportError` for an unknown method, an unknown node name or when ONNX Runtime
    fails.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }
    if method not in methods:
        raise ExportError(
            f"unknown calibration method {method!r}; choose from {', '.join(CALIBRATION_METHODS)}"
        )
    extra = {"CalibPercentile": PERCENTILE} if method == "percentile" else {}
    with tempfile.TemporaryDirectory(prefix="hrnet-quant-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        try:
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
            name_nodes(pre)
            name = cpu_session(pre, log_severity_level=3, wrap_errors=False).get_inputs()[0].name
            quantize_static(
                str(pre),
                str(dst),
                _Reader(name, crops),
                quant_format=QuantFormat.QDQ,
                per_channel=per_channel,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=methods[method],
                extra_options=extra,
            )
            if exclude_nodes:
                keep_fp32(dst, pre, exclude_nodes)
            if fp32_out is not None:
                shutil.copyfile(pre, fp32_out)
        except ExportError:
            raise
        except Exception as exc:
            raise ExportError(f"int8 quantisation of {src} failed: {exc}") from exc


def check_agreement(reference: np.ndarray, reduced: np.ndarray, card: TopDownCard) -> Agreement:
    """Score heatmaps ``reduced`` against ``reference`` (both ``(N, K, h, w)`` float32 outputs of
    one model card's graph on the same crops), as :class:`Agreement`.

    Both are decoded with the card's codec (input pixels); the OKS of each crop's reduced
    keypoints against its reference keypoints uses the card's sigmas, all ``K`` keypoints, and the
    area ``w * h / bbox_padding**2`` (the box inside the crop, input pixels). Raises ValueError for
    heatmaps of different shapes.
    """
    if reference.shape != reduced.shape:
        raise ValueError(f"heatmaps differ in shape: {reference.shape} vs {reduced.shape}")
    codec = build_codec(card.codec)
    ref_kpts, _ = codec.decode(np.asarray(reference, np.float32))
    red_kpts, _ = codec.decode(np.asarray(reduced, np.float32))
    n, k = ref_kpts.shape[:2]
    in_w, in_h = card.codec.input_size
    sigmas = card.sigmas or [0.05] * k  # COCO's mid sigma where a card has none
    area = np.full(n, in_w * in_h / card.bbox_padding**2, np.float64)
    oks = mean_oks(red_kpts, ref_kpts, np.full((n, k), 2.0), area, sigmas)
    flat = reference.reshape(n, k, -1).argmax(-1) == reduced.reshape(n, k, -1).argmax(-1)
    return Agreement(
        mean_oks=oks,
        argmax_agreement=float(flat.mean()),
        max_abs_diff=float(np.abs(reference - reduced).max()),
        crops=n,
    )


def reduce_precision(
    src: Path | str,
    dst: Path | str,
    card: ModelCard,
    crops: np.ndarray,
    *,
    precision: str = "int8",
    calibration_source: str = "",
    method: str = "minmax",
    exclude_nodes: Sequence[str] = (),
    auto_fp32_cap: int | None = None,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
) -> tuple[ModelCard, Agreement]:
    """Write the ``precision`` graph of fp32 ``src`` to ``dst`` and return its card and check.

    ``card`` must be a top-down pose card (:class:`service.cards.TopDownCard`); ``crops`` are its
    calibration inputs (:func:`calibration_crops`), also used for the accuracy check
    (:func:`check_agreement`, fp32 ``src`` as the reference). The returned card is ``card`` with
    ``precision`` and a :class:`service.cards.QuantizationSpec` (method, ``calibration_source``
    and crop count, excluded nodes, the check's figures, ``min_agreement``).

    ``auto_fp32_cap`` (``--fp32-nodes auto[:K]``): sensitivity-guided mixed precision
    (:func:`export.sensitivity.search_fp32_nodes`): after ``exclude_nodes``, the nodes reading
    the worst-quantised activations are kept in fp32, more and more (8, 16, 32, ... up to the
    cap), until the agreement reaches ``min_agreement``; the card lists every fp32 node and
    ``check`` adds ``fp32_nodes`` (how many the search kept).

    Raises :class:`PrecisionRefused` (``dst`` removed) when the keypoint agreement is below
    ``min_agreement``; :class:`ExportError` for a precision other than ``int8``, a card that is
    not top-down, or a failed quantisation.
    """
    if precision != "int8":
        raise ExportError(f"unsupported reduced precision {precision!r} (have: int8)")
    if not isinstance(card, TopDownCard):
        raise ExportError(
            f"--precision int8 needs a top-down pose model; {card.name!r} is a {card.task} model"
        )
    reference = run_onnx(src, crops)
    kept = list(exclude_nodes)
    with tempfile.TemporaryDirectory(prefix="hrnet-quant-") as tmp:
        pre = Path(tmp) / "fp32.onnx"
        quantize_int8(src, dst, crops, method=method, exclude_nodes=kept, fp32_out=pre)
        if auto_fp32_cap is None:
            agreement = check_agreement(reference, run_onnx(dst, crops), card)
        else:
            from .sensitivity import search_fp32_nodes

            steps = search_fp32_nodes(
                pre,
                dst,
                crops,
                card,
                threshold=min_agreement,
                cap=auto_fp32_cap,
                reference=reference,
            )
            for step in steps:
                log.info(
                    "%d more nodes in fp32: keypoint agreement %.4f",
                    step.k,
                    step.agreement.mean_oks,
                )
            if steps[-1].k:
                keep_fp32(dst, pre, steps[-1].nodes)
            kept += steps[-1].nodes
            agreement = steps[-1].agreement
    figures = (
        f"keypoint agreement (mean OKS vs fp32) {agreement.mean_oks:.4f}, heatmap argmax "
        f"agreement {agreement.argmax_agreement:.4f}, max |heatmap diff| "
        f"{agreement.max_abs_diff:.3g} on {agreement.crops} calibration crops"
    )
    if not agreement.mean_oks >= min_agreement:
        Path(dst).unlink(missing_ok=True)
        raise PrecisionRefused(
            f"{precision} graph of {card.name!r} refused: {figures}, below "
            f"the required {min_agreement:g} (--min-agreement); nothing "
            f"written"
        )
    log.info("%s graph of %s: %s", precision, card.name, figures)
    spec = QuantizationSpec(
        method=(
            f"onnxruntime {_ort_version()} static quantisation, QDQ, int8 weights "
            f"per output channel, uint8 activations calibrated by "
            f"{method}"
            + (f" ({PERCENTILE}th percentile)" if method == "percentile" else "")
            + (
                ""
                if auto_fp32_cap is None
                else f"; nodes reading the lowest-SQNR activations kept in fp32 (at most "
                f"{auto_fp32_cap}) until the agreement reached the threshold"
            )
        ),
        calibration=f"{len(crops)} ground-truth box crops from {calibration_source or 'given crops'}",
        excluded_nodes=kept,
        check=agreement.as_dict()
        | ({} if auto_fp32_cap is None else {"fp32_nodes": float(steps[-1].k)}),
        threshold=min_agreement,
    )
    return card.model_copy(update={"precision": precision, "quantization": spec}), agreement


def _ort_version() -> str:
    import onnxruntime as ort

    return ort.__version__


__all__ = [
    "Agreement",
    "CALIBRATION_METHODS",
    "DEFAULT_CALIBRATION_CROPS",
    "DEFAULT_MIN_AGREEMENT",
    "PrecisionRefused",
    "calibration_crops",
    "check_agreement",
    "keep_fp32",
    "name_nodes",
    "quantize_int8",
    "reduce_precision",
    "run_onnx",
]
