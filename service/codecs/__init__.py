"""Heatmap codecs (MMPose 1.x ``MSRAHeatmap`` / ``UDPHeatmap``) and flip-test helpers, numpy only.

Shared by the gateway (decode), training (encode targets), export checks and evaluation jobs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .flip import flip_heatmaps
from .msra_heatmap import MSRAHeatmap
from .udp_heatmap import UDPHeatmap

__all__ = ["MSRAHeatmap", "UDPHeatmap", "build_codec", "flip_heatmaps"]

Codec = MSRAHeatmap | UDPHeatmap


def build_codec(spec: Any) -> Codec:
    """Build a codec from a :class:`service.cards.CodecSpec` or an equivalent dict.

    A dict is validated as a ``CodecSpec`` (keys ``type``, ``input_size``, ``heatmap_size``,
    ``sigma``, ``unbiased``, ``blur_kernel_size``); an MMPose-style ``heatmap_type='gaussian'`` key
    is accepted for ``UDPHeatmap``. ``unbiased`` only applies to ``MSRAHeatmap`` (UDP always
    decodes with DARK-UDP); ``unbiased=True`` on a UDP spec is rejected as contradictory.

    Returns:
        :class:`MSRAHeatmap` or :class:`UDPHeatmap`.

    Raises:
        ValueError: unknown type, invalid fields (a ``pydantic.ValidationError``, which is a
            ``ValueError``) or unsupported ``heatmap_type``.
    """
    from ..cards import CodecSpec  # local import: keep the codecs importable on their own

    heatmap_type = "gaussian"
    if isinstance(spec, Mapping):
        data = dict(spec)
        heatmap_type = data.pop("heatmap_type", "gaussian")
        spec = CodecSpec.model_validate(data)
    elif not isinstance(spec, CodecSpec):
        raise ValueError(f"build_codec needs a CodecSpec or a dict, got {type(spec).__name__}")

    if spec.type == "MSRAHeatmap":
        if heatmap_type != "gaussian":
            raise ValueError(
                f"'heatmap_type' is a UDPHeatmap option, got {heatmap_type!r} for MSRAHeatmap"
            )
        return MSRAHeatmap(
            spec.input_size,
            spec.heatmap_size,
            spec.sigma,
            unbiased=spec.unbiased,
            blur_kernel_size=spec.blur_kernel_size,
        )
    if spec.type == "UDPHeatmap":
        if spec.unbiased:
            raise ValueError(
                "'unbiased' is an MSRAHeatmap option; UDPHeatmap always decodes with DARK-UDP"
            )
        return UDPHeatmap(
            spec.input_size,
            spec.heatmap_size,
            spec.sigma,
            heatmap_type=heatmap_type,
            blur_kernel_size=spec.blur_kernel_size,
        )
    raise ValueError(f"unknown codec type {spec.type!r}")  # pragma: no cover - CodecSpec's Literal
