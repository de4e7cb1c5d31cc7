"""Map one dataset's keypoints onto another keypoint set (MMPose 1.x ``KeypointConverter``).

Semantics of ``mmpose/datasets/transforms/converting.py`` (``KeypointConverter``), which the
COCO-AIC configs run on each source dataset before the combined training pipeline:

* target ``t`` of a pair ``(s, t)`` takes source keypoint ``s`` (position and visibility);
  a pair ``((s1, s2), t)`` takes the midpoint of ``s1`` and ``s2`` and the product of their
  visibilities;
* targets named by no pair get position ``(0, 0)`` and visibility 0, so the heatmap codec gives
  them an empty heatmap and target weight 0 (they teach the head nothing);
* a second array, MMPose's ``keypoints_visible[..., 1]`` ("visibility weights"), is 1 for every
  mapped target and 0 for the others (only visibility-predicting heads read it; the heatmap
  loss uses the codec's target weights, which come from the visibility).

The mappings of the seed-003 configs are :data:`AIC_TO_COCO` (``...coco-aic-256x192-merge.py``),
:data:`AIC_TO_COCO_AIC` and :data:`COCO_TO_COCO_AIC` (``...coco-aic-256x192-combine.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "Pair",
    "KeypointMapping",
    "AIC_TO_COCO",
    "AIC_TO_COCO_AIC",
    "COCO_TO_COCO_AIC",
    "MAPPINGS",
    "get_mapping",
]

#: ``(source, target)`` or ``((source1, source2), target)`` (midpoint of two sources)
Pair = tuple[int | tuple[int, int], int]

#: AIC (14: right shoulder .. left ankle, head top, neck) -> COCO 17: the 12 limb joints; AIC's
#: head top and neck have no COCO counterpart (merge config's ``KeypointConverter``).
AIC_TO_COCO: tuple[Pair, ...] = (
    (0, 6),
    (1, 8),
    (2, 10),
    (3, 5),
    (4, 7),
    (5, 9),
    (6, 12),
    (7, 14),
    (8, 16),
    (9, 11),
    (10, 13),
    (11, 15),
)

#: AIC 14 -> COCO-AIC 19 (combine config): the 12 limb joints as above, head top -> 17,
#: neck -> 18.
AIC_TO_COCO_AIC: tuple[Pair, ...] = AIC_TO_COCO + ((12, 17), (13, 18))

#: COCO 17 -> COCO-AIC 19 (combine config): identity on 0..16; head top and neck unlabelled.
COCO_TO_COCO_AIC: tuple[Pair, ...] = tuple((i, i) for i in range(17))


@dataclass(frozen=True)
class KeypointMapping:
    """A ``KeypointConverter``: ``num_keypoints`` target keypoints filled from ``pairs``.

    Attributes:
        num_keypoints: ``T``, keypoints of the target set (e.g. 17 for COCO, 19 for COCO-AIC).
        pairs: ``(source, target)`` or ``((s1, s2), target)`` pairs (see module docstring).

    Raises ``ValueError`` at construction for a target out of ``range(T)``, a repeated target,
    a negative source index or an empty mapping.
    """

    num_keypoints: int
    pairs: tuple[Pair, ...]

    def __post_init__(self) -> None:
        pairs = tuple(
            (tuple(int(v) for v in s) if isinstance(s, (tuple, list)) else int(s), int(t))
            for s, t in self.pairs
        )
        object.__setattr__(self, "pairs", pairs)
        if not pairs:
            raise ValueError("a keypoint mapping needs at least one (source, target) pair")
        targets = [t for _, t in pairs]
        if len(set(targets)) != len(targets):
            raise ValueError(f"keypoint mapping repeats a target index: {targets}")
        if not all(0 <= t < self.num_keypoints for t in targets):
            raise ValueError(
                f"keypoint mapping targets must be in range({self.num_keypoints}), got {targets}"
            )
        for s, _ in pairs:
            if isinstance(s, tuple) and len(s) != 2:
                raise ValueError(f"a paired source must be (s1, s2), got {s}")
            if min(s if isinstance(s, tuple) else (s,)) < 0:
                raise ValueError(f"keypoint mapping source indices must be >= 0, got {s}")

    @property
    def targets(self) -> list[int]:
        """Target indices, in pair order."""
        return [t for _, t in self.pairs]

    def _sources(self) -> tuple[list[int], list[int]]:
        first = [s[0] if isinstance(s, tuple) else s for s, _ in self.pairs]
        second = [s[1] if isinstance(s, tuple) else s for s, _ in self.pairs]
        return first, second

    def __call__(
        self, keypoints: np.ndarray, visible: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Map ``keypoints`` ``(N, K, 2)`` (pixels) and ``visible`` ``(N, K)`` (0..1) of ``K``
        source keypoints onto the ``T`` targets.

        Returns ``(keypoints (N, T, 2), visible (N, T), visible_weights (N, T))``, float32, with
        MMPose's semantics (module docstring). Raises ``ValueError`` when the arrays' shapes
        disagree or a source index is ``>= K``.
        """
        kp = np.asarray(keypoints, dtype=np.float32)
        vis = np.asarray(visible, dtype=np.float32)
        if kp.ndim != 3 or kp.shape[2] != 2 or vis.shape != kp.shape[:2]:
            raise ValueError(
                f"keypoints must be (N, K, 2) and visible (N, K); got {kp.shape} and {vis.shape}"
            )
        s1, s2 = self._sources()
        k = kp.shape[1]
        if max(s1 + s2) >= k:
            raise ValueError(
                f"keypoint mapping reads source index {max(s1 + s2)} but the "
                f"annotations have {k} keypoints"
            )
        n, t = kp.shape[0], self.num_keypoints
        out_kp = np.zeros((n, t, 2), np.float32)
        out_vis = np.zeros((n, t), np.float32)
        weights = np.zeros((n, t), np.float32)
        tgt = self.targets
        out_kp[:, tgt] = 0.5 * (kp[:, s1] + kp[:, s2])  # == kp[:, s1] for single sources
        out_vis[:, tgt] = vis[:, s1] * vis[:, s2] if s1 != s2 else vis[:, s1]
        weights[:, tgt] = 1.0
        return out_kp, out_vis, weights


#: The named mappings recipe files may refer to (``mapping = "aic_to_coco"``).
MAPPINGS: dict[str, KeypointMapping] = {
    "aic_to_coco": KeypointMapping(17, AIC_TO_COCO),
    "aic_to_coco_aic": KeypointMapping(19, AIC_TO_COCO_AIC),
    "coco_to_coco_aic": KeypointMapping(19, COCO_TO_COCO_AIC),
}


def get_mapping(name: str) -> KeypointMapping:
    """The named :data:`MAPPINGS` entry (pairs from MMPose 1.x's COCO-AIC merge/combine configs,
    ``td-hm_hrnet-w32_8xb64-210e_coco-aic-256x192-{merge,combine}.py``); ``KeyError`` listing
    the names for an unknown one."""
    try:
        return MAPPINGS[name]
    except KeyError:
        raise KeyError(
            f"unknown keypoint mapping {name!r}; known: {', '.join(sorted(MAPPINGS))}"
        ) from None
