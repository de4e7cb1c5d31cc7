"""Pieces every pipeline shares: input normalisation and stage timing.

Importable without pydantic/FastAPI (the card type is only an annotation here), so torch-side
tools such as :mod:`benchmarks.gpu_bench` reuse the same normalisation.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ..cards import Normalization

#: ImageNet mean/std on 0..255 RGB values (MMPose ``PoseDataPreprocessor`` / MMSeg
#: ``SegDataPreProcessor`` in every HRNet config, with ``bgr_to_rgb=True``).
IMAGENET_MEAN_RGB = (123.675, 116.28, 103.53)
IMAGENET_STD_RGB = (58.395, 57.12, 57.375)


def to_input_tensor(
    images_bgr: np.ndarray, norm: Normalization, with_flipped: bool = False
) -> np.ndarray:
    """Turn ``(N, H, W, 3) uint8`` BGR images into the model's ``(N, 3, H, W) float32`` input.

    Channels are reordered to ``norm.channel_order`` (as MMEngine's data preprocessor does with
    ``bgr_to_rgb``), then ``(x - mean) / std`` per channel on 0..255 values, in float32.
    ``with_flipped``: the output is ``(2N, 3, H, W)``, the horizontally flipped inputs after the
    plain ones (the flip test's batch, MMPose's ``inputs.flip(-1)``; flipping after normalising
    gives the same values as normalising flipped crops). ``norm`` is a card's
    :class:`~service.cards.Normalization` or any object with the same three attributes. Raises
    ValueError for another input shape.
    """
    if images_bgr.ndim != 4 or images_bgr.shape[-1] != 3:
        raise ValueError(f"expected (N, H, W, 3) images, got shape {images_bgr.shape}")
    n, h, w, _ = images_bgr.shape
    order = (2, 1, 0) if norm.channel_order == "rgb" else (0, 1, 2)
    mean = np.asarray(norm.mean, dtype=np.float32)
    std = np.asarray(norm.std, dtype=np.float32)
    out = np.empty((2 * n if with_flipped else n, 3, h, w), np.float32)
    for c, src in enumerate(order):  # one pass per channel, straight into NCHW
        plane = out[:n, c]
        # float32 subtraction then a division (not a multiplication by 1/std): values
        # bit-identical to MMEngine's ImgDataPreprocessor ((x - mean) / std)
        np.subtract(images_bgr[..., src], mean[c], out=plane, dtype=np.float32)
        np.divide(plane, std[c], out=plane)
    if with_flipped:
        out[n:] = out[:n, :, :, ::-1]
    return out


class StageTimer:
    """Collects wall-clock milliseconds per named stage: ``with timer("inference"): ...``."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = {}
        self._t0 = time.perf_counter()

    @contextmanager
    def __call__(self, stage: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.ms[stage] = self.ms.get(stage, 0.0) + (time.perf_counter() - t) * 1e3

    def total(self) -> dict[str, float]:
        out = {k: round(v, 3) for k, v in self.ms.items()}
        out["total"] = round((time.perf_counter() - self._t0) * 1e3, 3)
        return out
