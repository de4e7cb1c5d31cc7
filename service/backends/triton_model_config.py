"""The check of a Triton model configuration against the model's card (at gateway start-up).

Triton reports each model's configuration (``get_model_config``); :class:`TritonModelConfig` keeps
the parts the gateway relies on and :func:`check_model_config` lists every disagreement with the
card, so the gateway refuses to start (:class:`TritonModelMismatch`) rather than serve wrong
numbers. Semantics of the fields: Triton's ``model_config.proto`` (dims exclude the batch axis
when ``max_batch_size > 0``; -1 is a dynamic axis).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..cards import ModelCard, TensorSpec
from ..dtypes import card_dtype
from .base import BackendError


class TritonModelMismatch(BackendError):
    """A model card disagrees with the model Triton serves; the gateway must not start."""


@dataclass(frozen=True)
class TensorConfig:
    """One input or output of a Triton model configuration."""

    name: str
    dtype: str  # card dtype: "FP32", ...
    dims: tuple[int, ...]  # batch axis excluded, -1 dynamic


@dataclass(frozen=True)
class TritonModelConfig:
    """The parts of a Triton model configuration the gateway relies on (normalised from JSON)."""

    name: str
    max_batch_size: int
    inputs: dict[str, TensorConfig]
    outputs: dict[str, TensorConfig]
    platform: str = ""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TritonModelConfig:
        """From ``get_model_config(as_json=True)`` (gRPC: ``{"config": {...}}``, int64 as strings)
        or the HTTP client's dict. Unset protobuf fields are absent in JSON and mean 0/empty."""
        cfg = data.get("config", data)

        def tensors(key: str) -> dict[str, TensorConfig]:
            out = {}
            for t in cfg.get(key, []):
                dtype = card_dtype(t.get("data_type", "TYPE_INVALID"))
                out[t["name"]] = TensorConfig(
                    t["name"], dtype, tuple(int(d) for d in t.get("dims", []))
                )
            return out

        return cls(
            name=cfg.get("name", ""),
            max_batch_size=int(cfg.get("max_batch_size", 0)),
            inputs=tensors("input"),
            outputs=tensors("output"),
            platform=cfg.get("platform") or cfg.get("backend", ""),
        )


def check_model_config(card: ModelCard, config: TritonModelConfig) -> list[str]:
    """Every disagreement between ``card`` and Triton's ``config`` of the same model, as sentences.

    Rules (dims exclude the batch axis, -1 = dynamic):

    * ``max_batch_size`` must be >= 1 (the gateway always sends a batch axis) and equal the card's;
    * every card input exists in Triton with the same dtype and rank; per axis Triton's dim is -1 or
      equal to the card's (a card -1 against a fixed Triton dim is a mismatch: the gateway would send
      sizes Triton refuses); Triton must not require inputs the card does not list;
    * every card output exists in Triton with the same dtype and rank; axes fixed on both sides agree.

    Returns an empty list when they agree.
    """
    problems: list[str] = []
    where = f"model '{card.name}'"
    if config.max_batch_size < 1:
        problems.append(
            f"{where}: Triton max_batch_size is {config.max_batch_size} (no batching); "
            f"the card expects {card.max_batch_size}"
        )
    elif config.max_batch_size != card.max_batch_size:
        problems.append(
            f"{where}: max_batch_size is {config.max_batch_size} in Triton but "
            f"{card.max_batch_size} in the card"
        )

    def compare(kind: str, spec: TensorSpec, tc: TensorConfig | None, strict_card_dynamic: bool):
        if tc is None:
            have = config.inputs if kind == "input" else config.outputs
            problems.append(
                f"{where}: {kind} '{spec.name}' of the card is not served by Triton "
                f"(Triton {kind}s: {sorted(have)})"
            )
            return
        if tc.dtype != spec.dtype:
            problems.append(
                f"{where}: {kind} '{spec.name}' is {tc.dtype} in Triton but {spec.dtype} "
                f"in the card"
            )
        if len(tc.dims) != len(spec.dims):
            problems.append(
                f"{where}: {kind} '{spec.name}' has dims {list(tc.dims)} in Triton but "
                f"{spec.dims} in the card"
            )
            return
        for axis, (t, c) in enumerate(zip(tc.dims, spec.dims)):
            ok = t == c or t == -1 or (c == -1 and not strict_card_dynamic)
            if not ok:
                problems.append(
                    f"{where}: {kind} '{spec.name}' has dims {list(tc.dims)} in Triton "
                    f"but {spec.dims} in the card (axis {axis + 1} after the batch)"
                )
                break

    for spec in card.inputs:
        compare("input", spec, config.inputs.get(spec.name), strict_card_dynamic=True)
    extra = sorted(set(config.inputs) - {s.name for s in card.inputs})
    if extra:
        problems.append(f"{where}: Triton requires inputs {extra} that the card does not list")
    for spec in card.outputs:
        compare("output", spec, config.outputs.get(spec.name), strict_card_dynamic=False)
    return problems
