"""Keep a model's last convolutions in f32 under OpenVINO's bf16 inference precision.

The heatmap head is where bf16's 8-bit mantissa costs keypoint accuracy most (the sub-pixel
refinement of DARK / UDP reads small differences of neighbouring heatmap values). OpenVINO's CPU
plugin leaves a node in its original precision when the node carries the ``precise``
runtime attribute (``ov::DisablePrecisionConversion``, read back as
``DisablePrecisionConversion_0``; checked in OpenVINO 2026.4: the marked convolution's
``runtimePrecision`` is f32 under the bf16 hint). Python cannot construct that attribute, but the
IR reader can: the model is written as IR, the attribute added to the chosen layers' ``rt_info``,
and the IR read back from memory.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

#: the IR ``rt_info`` attribute that keeps a node's precision (OpenVINO's DisablePrecisionConversion)
PRECISE_ATTRIBUTE = '<attribute name="precise" version="0" />'


def last_convolutions(model: Any, count: int) -> list[str]:
    """Friendly names of the last ``count`` Convolution nodes of ``model`` (an ``openvino.Model``)
    in topological order (the head first from the end)."""
    convs = [
        op.get_friendly_name()
        for op in model.get_ordered_ops()
        if op.get_type_name() in ("Convolution", "GroupConvolution")
    ]
    return convs[-count:] if count > 0 else []


def _xml_attribute(text: str) -> str:
    """``text`` escaped as the IR writer writes an attribute value (``& < > "``)."""
    for ch, entity in (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"), ('"', "&quot;")):
        text = text.replace(ch, entity)
    return text


def mark_precise(ir_xml: str, layer_names: list[str]) -> str:
    """The IR XML text ``ir_xml`` with :data:`PRECISE_ATTRIBUTE` in the ``rt_info`` of each layer
    named in ``layer_names``. Raises ValueError naming a layer that is not in the IR."""
    for name in layer_names:
        quoted = re.escape(_xml_attribute(name))
        opening = re.compile(r'<layer id="\d+" name="' + quoted + r'" type="[^"]+"[^>]*>')
        m = opening.search(ir_xml)
        if m is None:
            raise ValueError(f"layer {name!r} is not in the model")
        end = ir_xml.index("</layer>", m.end())
        body = ir_xml[m.end() : end]
        ports = min(
            (i for i in (body.find("<input>"), body.find("<output>")) if i >= 0), default=-1
        )
        head = body if ports < 0 else body[:ports]
        if "<rt_info>" in head:  # the layer's own rt_info (ports have theirs after <input>)
            at = m.end() + head.index("<rt_info>") + len("<rt_info>")
            ir_xml = ir_xml[:at] + PRECISE_ATTRIBUTE + ir_xml[at:]
        else:
            ir_xml = (
                ir_xml[: m.end()] + f"<rt_info>{PRECISE_ATTRIBUTE}</rt_info>" + ir_xml[m.end() :]
            )
    return ir_xml


def keep_f32(ov: Any, core: Any, model: Any, layer_names: list[str]) -> Any:
    """``model`` (``openvino.Model``) with ``layer_names`` marked precise (they run f32 whatever
    the inference precision hint): written as IR to a temporary folder, marked
    (:func:`mark_precise`), read back from memory by ``core``. ``ov``: the ``openvino`` module."""
    import numpy as np

    with tempfile.TemporaryDirectory(prefix="hrnet-ov-") as tmp:
        xml = Path(tmp) / "model.xml"
        ov.save_model(model, str(xml), compress_to_fp16=False)
        text = mark_precise(xml.read_text(), layer_names)
        weights = np.frombuffer(bytearray(xml.with_suffix(".bin").read_bytes()), np.uint8)
    return core.read_model(text, ov.Tensor(weights))
