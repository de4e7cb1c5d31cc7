"""Associative-embedding (bottom-up) training targets: the encode side of the HigherHRNet codec.

The decode side (grouping people from heatmaps and tags) is
:mod:`service.codecs.associative_embedding`; this module makes what the network is trained to
output, numpy only, following MMPose 0.x ``mmpose/datasets/pipelines/bottom_up_transform.py``
(``HeatmapGenerator``, ``JointsEncoder``, ``BottomUpGenerateTarget``; the same classes as the
original HigherHRNet repo's ``lib/dataset/target_generators``), non-UDP:

* **heatmaps** (:func:`generate_bottomup_heatmaps`): per stage, one ``(K, H, W)`` map with an
  unnormalised Gaussian (peak 1, ``sigma`` heatmap pixels) for every labelled joint of every
  person, merged with a pixel-wise max. The Gaussian sits on the integer pixel
  ``(int(x), int(y))`` (``int`` truncates toward zero, so ``-0.7`` counts as pixel 0) and is drawn
  only inside its window ``[round(p - 3 sigma - 1), round(p + 3 sigma + 2))`` clipped to the map;
  a joint whose truncated pixel lies outside the map draws nothing.
* **joints for tags** (:func:`encode_tag_joints`): per person (at most ``max_num_people``), the
  labelled joints inside the map packed to the front as ``(index into the flattened (K, H, W)
  tag map, 1)``; the rest ``(0, 0)``. The AE loss gathers the predicted tags at these indices.

Coordinates are ``(x, y)`` pixels of each stage's heatmap ("heatmap space").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["generate_bottomup_heatmaps", "encode_tag_joints", "AssociativeEmbeddingTargets"]


def _size(heatmap_size: Sequence[int]) -> tuple[int, int]:
    if len(heatmap_size) != 2 or min(int(v) for v in heatmap_size) < 1:
        raise ValueError(f"heatmap_size must be two positive integers (W, H), got {heatmap_size!r}")
    return int(heatmap_size[0]), int(heatmap_size[1])


def _joints(joints: np.ndarray) -> np.ndarray:
    j = np.asarray(joints, dtype=np.float32)
    if j.ndim != 3 or j.shape[2] < 3:
        raise ValueError(f"joints must have shape (N, K, 3) (x, y, visibility), got {j.shape}")
    return j


def generate_bottomup_heatmaps(
    joints: np.ndarray, heatmap_size: Sequence[int], sigma: float = 2.0
) -> np.ndarray:
    """Target heatmaps of all people of one image at one stage (MMPose 0.x ``HeatmapGenerator``).

    Args:
        joints: ``(N, K, 3)`` float, per person and joint ``x, y`` (heatmap pixels) and the
            visibility (drawn when ``> 0``).
        heatmap_size: ``(W, H)`` of the stage.
        sigma: Gaussian sigma in heatmap pixels (> 0; the configs use 2).

    Returns:
        ``(K, H, W)`` float32; the Gaussian window is float32 ``exp(-((i - c)^2 + (j - c)^2) /
        (2 sigma^2))`` over ``arange(6 sigma + 3)`` with ``c = 3 sigma + 1``, as upstream.

    Raises:
        ValueError: bad shapes, sizes or sigma.
    """
    j = _joints(joints)
    w, h = _size(heatmap_size)
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma!r}")
    ar = np.arange(0, 6 * sigma + 3, 1, dtype=np.float32)
    c = 3 * sigma + 1
    g = np.exp(-((ar[None, :] - c) ** 2 + (ar[:, None] - c) ** 2) / (2 * sigma**2))
    hms = np.zeros((j.shape[1], h, w), dtype=np.float32)
    for person in j:
        for k, (px, py, v) in enumerate(person[:, :3]):
            if not v > 0:
                continue
            x, y = int(px), int(py)
            if x < 0 or y < 0 or x >= w or y >= h:
                continue
            ul = int(np.round(x - 3 * sigma - 1)), int(np.round(y - 3 * sigma - 1))
            br = int(np.round(x + 3 * sigma + 2)), int(np.round(y + 3 * sigma + 2))
            c0, c1 = max(0, -ul[0]), min(br[0], w) - ul[0]
            r0, r1 = max(0, -ul[1]), min(br[1], h) - ul[1]
            x0, x1 = max(0, ul[0]), min(br[0], w)
            y0, y1 = max(0, ul[1]), min(br[1], h)
            np.maximum(hms[k, y0:y1, x0:x1], g[r0:r1, c0:c1], out=hms[k, y0:y1, x0:x1])
    return hms


def encode_tag_joints(
    joints: np.ndarray,
    heatmap_size: Sequence[int],
    max_num_people: int = 30,
    tag_per_joint: bool = True,
) -> np.ndarray:
    """Where the AE loss reads each person's tags (MMPose 0.x ``JointsEncoder``).

    Args:
        joints: ``(N, K, 3)`` heatmap pixels + visibility, as :func:`generate_bottomup_heatmaps`.
        heatmap_size: ``(W, H)`` of the stage.
        max_num_people: ``M``; people beyond the first ``M`` are left out (upstream raises an
            ``IndexError`` there).
        tag_per_joint: index into ``K`` tag maps (``k * H * W + y * W + x``) or into one shared
            map (``y * W + x``).

    Returns:
        ``(M, K, 2)`` int64: row ``m`` lists person ``m``'s joints with visibility ``> 0`` and
        ``0 <= int(x) < W``, ``0 <= int(y) < H`` (``int`` truncates toward zero) as
        ``(flat index, 1)`` in joint order from slot 0; unused slots are ``(0, 0)``.

    Raises:
        ValueError: bad shapes, sizes or ``max_num_people < 1``.
    """
    j = _joints(joints)
    w, h = _size(heatmap_size)
    if max_num_people < 1:
        raise ValueError(f"max_num_people must be >= 1, got {max_num_people!r}")
    out = np.zeros((max_num_people, j.shape[1], 2), dtype=np.int64)
    for i, person in enumerate(j[:max_num_people]):
        tot = 0
        for k, (px, py, v) in enumerate(person[:, :3]):
            x, y = int(px), int(py)
            if v > 0 and 0 <= y < h and 0 <= x < w:
                out[i, tot] = ((k * h * w if tag_per_joint else 0) + y * w + x, 1)
                tot += 1
    return out


@dataclass(frozen=True)
class AssociativeEmbeddingTargets:
    """``BottomUpGenerateTarget`` of one configuration: all stages' targets of one image.

    Attributes:
        heatmap_sizes: ``(W, H)`` per stage, lowest resolution first (512 input: 128, 256).
        sigma: Gaussian sigma (heatmap pixels of every stage).
        max_num_people: ``M`` of :func:`encode_tag_joints` (30).
        tag_per_joint: see :func:`encode_tag_joints`.
    """

    heatmap_sizes: tuple[tuple[int, int], ...]
    sigma: float = 2.0
    max_num_people: int = 30
    tag_per_joint: bool = True

    def encode(self, joints_per_stage: Sequence[np.ndarray]) -> dict[str, list[np.ndarray]]:
        """``joints_per_stage``: ``(N, K, 3)`` per stage, in that stage's heatmap pixels.

        Returns ``{"heatmaps": [(K, H_s, W_s) float32], "joints": [(M, K, 2) int64]}``, one
        entry per stage. Raises ``ValueError`` when the number of stages does not match.
        """
        if len(joints_per_stage) != len(self.heatmap_sizes):
            raise ValueError(
                f"{len(self.heatmap_sizes)} stages expected, got "
                f"{len(joints_per_stage)} joint arrays"
            )
        return {
            "heatmaps": [
                generate_bottomup_heatmaps(j, s, self.sigma)
                for j, s in zip(joints_per_stage, self.heatmap_sizes)
            ],
            "joints": [
                encode_tag_joints(j, s, self.max_num_people, self.tag_per_joint)
                for j, s in zip(joints_per_stage, self.heatmap_sizes)
            ],
        }
