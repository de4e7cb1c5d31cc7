"""Model cards of small fake models, shared by the gateway tests that run the real app on a
temporary model repository with a fake backend (``tests.support.gateway``, ``test_segment_api``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from service.cards import (
    CodecSpec,
    ModelCard,
    Normalization,
    SegTestPipeline,
    TensorSpec,
    make_card,
)

#: ImageNet mean / std on 0..255 RGB values (MMPose / MMSeg HRNet ``data_preprocessor``).
MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)


def pose_card(name: str = "fake_pose", **fields: Any) -> ModelCard:
    """A 2-keypoint (``a``, ``b``) top-down pose card: input 192x256 (w x h) pixels, heatmaps
    ``(2, 64, 48)``; ``fields`` override or add :class:`ModelCard` fields."""
    base: dict[str, Any] = dict(
        name=name,
        task="topdown_pose",
        input_size=(192, 256),
        inputs=[TensorSpec(name="image", dims=[3, 256, 192])],
        outputs=[TensorSpec(name="heatmaps", dims=[2, 64, 48])],
        normalization=Normalization(mean=MEAN, std=STD),
        codec=CodecSpec(input_size=(192, 256), heatmap_size=(48, 64)),
        keypoint_names=["a", "b"],
    )
    base.update(fields)
    return make_card(**base)


def seg_card(
    name: str,
    classes: Sequence[str],
    palette: Sequence[tuple[int, int, int]] | None = None,
    **pipeline: Any,
) -> ModelCard:
    """A segmentation card with dynamic input ``(3, -1, -1)`` and logits ``(C, -1, -1)``,
    ``C = len(classes)``; ``pipeline`` are :class:`SegTestPipeline` fields."""
    return make_card(
        name=name,
        task="segmentation",
        input_size=(None, None),
        inputs=[TensorSpec(name="input", dims=[3, -1, -1])],
        outputs=[TensorSpec(name="logits", dims=[len(classes), -1, -1])],
        normalization=Normalization(mean=MEAN, std=STD),
        classes=list(classes),
        palette=list(palette or []),
        test_pipeline=SegTestPipeline(**pipeline),
    )


def write_repository(root: Path, cards: Sequence[ModelCard]) -> Path:
    """Save each card as ``root/<name>/`` (a model repository the gateway can load); returns
    ``root``."""
    for card in cards:
        (root / card.name).mkdir()
        card.save(root / card.name)
    return root
