"""Sensitivity-guided mixed precision for int8 graphs (``hrnet-export --fp32-nodes auto[:K]``).

1. :func:`activation_sqnr`: for every activation tensor that the all-int8 QDQ graph quantises,
   its signal-to-quantisation-noise ratio on the calibration crops: the fp32 graph's values
   ``x`` against ``s * (clip(round(x / s) + z, qmin, qmax) - z)`` with that tensor's own
   QuantizeLinear scale ``s`` and zero point ``z`` (the rounding and clipping error that tensor
   alone adds; ONNX Runtime's ``qdq_loss_debug`` instead compares the two graphs' activations,
   where the error of every earlier layer is mixed in).
2. :func:`rank_nodes`: the nodes that read a quantised activation, worst (lowest) SQNR first.
3. :func:`search_fp32_nodes`: keep the worst ``K`` of them in fp32
   (:func:`export.quantize.keep_fp32` on the one all-int8 graph, no new calibration) for ``K``
   on a doubling schedule, checking each graph with :func:`export.quantize.check_agreement`
   against the fp32 graph, until the keypoint agreement reaches the threshold or ``K`` reaches
   the cap; returns every step (the accuracy side of the trade-off curve).

numpy, onnx and onnxruntime only.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.cards import TopDownCard

from .onnx_export import ExportError, cpu_session
from .quantize import Agreement, check_agreement, keep_fp32, run_onnx

#: the first K tried by :func:`search_fp32_nodes`; then doubled
FIRST_K = 8


@dataclass
class Step:
    """One mixed-precision graph of the search: the ``k`` worst nodes kept in fp32 (``nodes``;
    :func:`export.quantize.keep_fp32` also keeps the data-movement nodes between them and their
    producers, not listed here) and its :class:`export.quantize.Agreement` with the fp32
    graph."""

    k: int
    nodes: list[str]
    agreement: Agreement


def _qdq_params(qdq) -> dict[str, tuple[float, int, int, int]]:
    """Activation tensor -> (scale, zero point, qmin, qmax) of its QuantizeLinear in the QDQ
    graph ``qdq`` (onnx ModelProto); initializers (weights) are left out."""
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in qdq.graph.initializer}
    out: dict[str, tuple[float, int, int, int]] = {}
    for n in qdq.graph.node:
        if n.op_type != "QuantizeLinear" or n.input[0] in inits:
            continue
        scale, zp = inits.get(n.input[1]), inits.get(n.input[2]) if len(n.input) > 2 else None
        if scale is None or scale.size != 1:
            continue  # per-channel activations are not made by quantize_int8
        zp = zp if zp is not None else np.zeros((), np.uint8)
        info = np.iinfo(zp.dtype)
        out[n.input[0]] = (float(scale), int(zp), int(info.min), int(info.max))
    return out


def activation_sqnr(
    fp32_path: Path | str, qdq_path: Path | str, crops: np.ndarray, batch: int = 4
) -> dict[str, float]:
    """SQNR in dB of every quantised activation tensor of the QDQ graph at ``qdq_path``,
    ``10 log10(sum x^2 / sum (x - fq(x))^2)`` over all crops ``(N, 3, h, w)`` float32, where
    ``x`` is the tensor in the fp32 graph at ``fp32_path`` (the pre-processed graph that was
    quantised: same tensor names) and ``fq`` its quantise-dequantise with the QDQ graph's scale
    and zero point (ONNX ``QuantizeLinear`` semantics: round half to even, saturate).
    ``inf`` for a tensor that quantises exactly. Raises :class:`ExportError` when the fp32 graph
    lacks a tensor the QDQ graph quantises."""
    import onnx

    qdq = onnx.load(str(qdq_path))
    params = _qdq_params(qdq)
    model = onnx.load(str(fp32_path))
    have = {o for n in model.graph.node for o in n.output} | {i.name for i in model.graph.input}
    # a tensor the quantiser renamed (a graph output's producer writes <name>_QuantizeLinear_Input)
    # is the same output of the same node in the fp32 graph
    ref_nodes = {n.name: n for n in model.graph.node}
    source = {}
    for n in qdq.graph.node:
        for j, t in enumerate(n.output):
            if t in params and t not in have and n.name in ref_nodes:
                source[t] = ref_nodes[n.name].output[j]
    source.update({t: t for t in params if t in have})
    missing = sorted(set(params) - set(source))
    if missing:
        raise ExportError(f"tensors {missing[:3]} of the int8 graph are not in the fp32 graph")
    outputs = {o.name for o in model.graph.output}
    names = sorted(params)
    model.graph.output.extend(
        onnx.ValueInfoProto(name=t) for t in sorted(set(source.values())) if t not in outputs
    )
    sess = cpu_session(model.SerializeToString(), log_severity_level=3, wrap_errors=False)
    feed = sess.get_inputs()[0].name
    signal = dict.fromkeys(names, 0.0)
    noise = dict.fromkeys(names, 0.0)
    for i in range(0, len(crops), batch):
        got = sess.run(None, {feed: crops[i : i + batch]})
        values = dict(zip([o.name for o in sess.get_outputs()], got))
        for t in names:
            x = values[source[t]].astype(np.float64)
            s, z, lo, hi = params[t]
            fq = (np.clip(np.rint(x / s) + z, lo, hi) - z) * s
            signal[t] += float((x * x).sum())
            noise[t] += float(((x - fq) ** 2).sum())
    return {
        t: (math.inf if noise[t] == 0 else 10 * math.log10(max(signal[t], 1e-30) / noise[t]))
        for t in names
    }


def rank_nodes(qdq_path: Path | str, sqnr: dict[str, float]) -> list[tuple[str, float]]:
    """``(node name, dB)`` for every node of the QDQ graph at ``qdq_path`` that reads a
    dequantised activation (DequantizeLinear of the QuantizeLinear of a tensor in ``sqnr``),
    with the lowest SQNR among those inputs, sorted worst first (ties in graph order)."""
    import onnx

    graph = onnx.load(str(qdq_path)).graph
    producer = {o: n for n in graph.node for o in n.output}
    scored = []
    for n in graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        worst = math.inf
        for t in n.input:
            dq = producer.get(t)
            q = (
                producer.get(dq.input[0])
                if dq is not None and dq.op_type == "DequantizeLinear"
                else None
            )
            if q is not None and q.op_type == "QuantizeLinear" and q.input[0] in sqnr:
                worst = min(worst, sqnr[q.input[0]])
        if worst < math.inf:
            scored.append((n.name, worst))
    return sorted(scored, key=lambda item: item[1])


def search_fp32_nodes(
    fp32_path: Path | str,
    qdq_path: Path | str,
    crops: np.ndarray,
    card: TopDownCard,
    *,
    threshold: float,
    cap: int,
    reference: np.ndarray | None = None,
) -> list[Step]:
    """Keep the worst ``K`` nodes of :func:`rank_nodes` (SQNR from :func:`activation_sqnr` on
    ``crops``) in fp32, ``K = 0`` (the all-int8 graph at ``qdq_path``), then :data:`FIRST_K`,
    doubling, and finally ``cap`` (at most ``cap``), stopping at the first graph whose keypoint
    agreement with the fp32 graph (:func:`export.quantize.check_agreement` on ``crops``;
    ``reference``: the fp32 heatmaps if already computed) reaches ``threshold``. Returns every
    step tried, in order; the last one is the graph to use when it passes. ``qdq_path`` is not
    modified. Raises :class:`ExportError` for ``cap < 0``."""
    if cap < 0:
        raise ExportError(f"the fp32 node cap must be >= 0, got {cap}")
    ref = reference if reference is not None else run_onnx(fp32_path, crops)
    ranked = [name for name, _ in rank_nodes(qdq_path, activation_sqnr(fp32_path, qdq_path, crops))]
    cap = min(cap, len(ranked))
    schedule = [0]
    k = FIRST_K
    while k < cap:
        schedule.append(k)
        k *= 2
    if cap > 0:
        schedule.append(cap)
    steps: list[Step] = []
    with tempfile.TemporaryDirectory(prefix="hrnet-mixed-") as tmp:
        trial = Path(tmp) / "mixed.onnx"
        for k in schedule:
            shutil.copyfile(qdq_path, trial)
            if k:
                keep_fp32(trial, fp32_path, ranked[:k])
            steps.append(Step(k, ranked[:k], check_agreement(ref, run_onnx(trial, crops), card)))
            if steps[-1].agreement.mean_oks >= threshold:
                break
    return steps


__all__ = ["FIRST_K", "Step", "activation_sqnr", "rank_nodes", "search_fp32_nodes"]
