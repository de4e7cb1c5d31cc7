"""Flip-test helpers (MMPose 1.x ``mmpose/models/utils/tta.py``, ``flip_mode='heatmap'``), numpy only.

Shift convention (derived from upstream ``flip_heatmaps``): the heatmap is mirrored along W
(``flipped[..., i] = hm[..., W - 1 - i]``), channels are re-ordered
(``flipped[:, k] = mirrored[:, flip_indices[k]]``), and with ``shift_heatmap`` every column moves
one pixel to the right, column 0 keeping its own value (``out[..., j] = flipped[..., j - 1]`` for
``j >= 1``, ``out[..., 0] = flipped[..., 0]``). Hence a peak at column ``c`` of the flipped-input
heatmap ends at column ``W - c`` (for ``c >= 1``; ``c = 0`` falls off the right edge), and the
original column ``W - 1`` shows up at both columns 0 and 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["flip_heatmaps"]


def flip_heatmaps(
    heatmaps: np.ndarray, flip_indices: Sequence[int] | None = None, shift_heatmap: bool = True
) -> np.ndarray:
    """Bring heatmaps of horizontally flipped crops back to the un-flipped frame.

    Follows MMPose ``flip_heatmaps(flip_mode='heatmap')``; the caller averages the result with the
    plain heatmaps (``(plain + flipped) * 0.5`` in ``HeatmapHead.predict``).

    Args:
        heatmaps: ``(B, K, H, W)`` heatmaps predicted on flipped inputs.
        flip_indices: ``(K,)`` permutation, ``flip_indices[k]`` = the mirror keypoint of ``k``;
            None or empty = keep channel order.
        shift_heatmap: shift one pixel to the right after flipping (see module docstring).

    Returns:
        New ``(B, K, H, W)`` array, same dtype.

    Raises:
        ValueError: not 4-D, or ``flip_indices`` not a permutation of ``range(K)``.
    """
    hm = np.asarray(heatmaps)
    if hm.ndim != 4:
        raise ValueError(f"heatmaps must have shape (B, K, H, W), got {hm.shape}")
    out = hm[..., ::-1]
    if flip_indices is not None and len(flip_indices) > 0:
        idx = np.asarray(flip_indices, dtype=np.int64)
        if idx.shape != (hm.shape[1],) or not np.array_equal(np.sort(idx), np.arange(hm.shape[1])):
            raise ValueError(
                f"flip_indices must be a permutation of range({hm.shape[1]}), got {list(flip_indices)}"
            )
        out = out[:, idx]
    out = np.ascontiguousarray(out)
    if shift_heatmap and out.shape[-1] > 1:
        out[..., 1:] = out[..., :-1].copy()
    return out
