"""Dataset metainfo records: what a model's outputs mean (keypoints or classes).

Two frozen records, built once at import from the tables in :mod:`service.datasets.coco`,
:mod:`service.datasets.animals` and :mod:`service.datasets.segmentation`:

* :class:`PoseDatasetInfo` — keypoint names in output-channel order, skeleton links, the flip
  permutation used by flip testing, and the OKS sigmas used by COCO-style AP. Follows what
  MMPose 1.x ``mmpose.datasets.datasets.utils.parse_pose_metainfo`` derives from a
  ``configs/_base_/datasets/<name>.py`` file.
* :class:`SegDatasetInfo` — class names in output-channel order and their RGB palette, as in
  MMSeg 1.x ``BaseSegDataset.METAINFO``.

Torch-free: only the standard library (and numpy for the array helpers).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np

RGB = tuple[int, int, int]

# One keypoint row of a pose table: (name, mirror name or None on the midline,
# OKS sigma or None when the dataset defines none, RGB colour).
KeypointRow = tuple[str, str | None, float | None, RGB]
# One skeleton link row: (start keypoint name, end keypoint name, RGB colour).
LinkRow = tuple[str, str, RGB]
# One class row of a segmentation table: (class name, RGB colour).
ClassRow = tuple[str, RGB]


def _check_names(names: Sequence[str], dataset: str, what: str, plural: str) -> None:
    """Raise ``ValueError`` if ``names`` (keypoints or classes) is empty or repeats a name."""
    if not names:
        raise ValueError(f"{dataset}: no {plural}")
    if len(set(names)) != len(names):
        raise ValueError(f"{dataset}: duplicate {what} names")


def _check_rgb(colour: Sequence[int], what: str) -> None:
    if len(colour) != 3 or not all(isinstance(c, int) and 0 <= c <= 255 for c in colour):
        raise ValueError(f"{what}: colour {colour!r} is not an (r, g, b) triple of 0..255 ints")


@dataclass(frozen=True)
class PoseDatasetInfo:
    """Keypoint metainfo of one pose dataset (MMPose 1.x ``parse_pose_metainfo`` semantics).

    Attributes:
        name: registry key, e.g. ``"coco"``.
        keypoint_names: ``K`` names in the order of the model's ``K`` heatmap channels.
        skeleton: links as ``(i, j)`` keypoint-index pairs, in the dataset file's
            ``skeleton_info`` order (used for drawing only).
        flip_indices: length-``K`` permutation; after a horizontal flip, output channel ``k``
            holds keypoint ``flip_indices[k]`` (MMPose ``flip_indices``, from each keypoint's
            ``swap``; a keypoint with no ``swap`` maps to itself). It is an involution.
        sigmas: ``K`` per-keypoint OKS sigmas (dimensionless, relative to the object scale
            ``sqrt(area)``), or empty when the dataset defines none (Horse-10).
        keypoint_colors: ``K`` RGB uint8 triples for drawing (may be empty).
        link_colors: one RGB triple per skeleton link (may be empty).
        source: the upstream file the facts come from.

    Raises:
        ValueError: on construction, if the lengths disagree, ``flip_indices`` is not an
            involutive permutation of ``range(K)``, a link is out of range, or a colour is bad.
    """

    name: str
    keypoint_names: tuple[str, ...]
    skeleton: tuple[tuple[int, int], ...]
    flip_indices: tuple[int, ...]
    sigmas: tuple[float, ...]
    keypoint_colors: tuple[RGB, ...] = ()
    link_colors: tuple[RGB, ...] = ()
    source: str = ""

    def __post_init__(self) -> None:
        _check_names(self.keypoint_names, self.name, "keypoint", "keypoints")
        k = len(self.keypoint_names)
        if sorted(self.flip_indices) != list(range(k)):
            raise ValueError(f"{self.name}: flip_indices is not a permutation of range({k})")
        if any(self.flip_indices[j] != i for i, j in enumerate(self.flip_indices)):
            raise ValueError(f"{self.name}: flip_indices is not an involution")
        if self.sigmas and len(self.sigmas) != k:
            raise ValueError(f"{self.name}: {len(self.sigmas)} sigmas for {k} keypoints")
        if any(not (s > 0) for s in self.sigmas):
            raise ValueError(f"{self.name}: sigmas must be positive")
        for a, b in self.skeleton:
            if not (0 <= a < k and 0 <= b < k) or a == b:
                raise ValueError(f"{self.name}: skeleton link ({a}, {b}) invalid for {k} keypoints")
        if self.keypoint_colors and len(self.keypoint_colors) != k:
            raise ValueError(f"{self.name}: {len(self.keypoint_colors)} keypoint colours for {k}")
        if self.link_colors and len(self.link_colors) != len(self.skeleton):
            raise ValueError(
                f"{self.name}: {len(self.link_colors)} link colours for {len(self.skeleton)} links"
            )
        for c in (*self.keypoint_colors, *self.link_colors):
            _check_rgb(c, self.name)

    @property
    def num_keypoints(self) -> int:
        """``K``, the number of keypoints (= heatmap channels of a model trained on it)."""
        return len(self.keypoint_names)

    @property
    def flip_pairs(self) -> tuple[tuple[int, int], ...]:
        """Left/right pairs ``(i, j)`` with ``i < j`` and ``flip_indices[i] == j``, ascending."""
        return tuple((i, j) for i, j in enumerate(self.flip_indices) if i < j)

    def index(self, keypoint_name: str) -> int:
        """Channel index of ``keypoint_name``. Raises ``KeyError`` naming the known keypoints."""
        try:
            return self.keypoint_names.index(keypoint_name)
        except ValueError:
            raise KeyError(
                f"{self.name} has no keypoint {keypoint_name!r}; known: "
                f"{', '.join(self.keypoint_names)}"
            ) from None

    def sigmas_array(self) -> np.ndarray:
        """OKS sigmas as a float32 array of shape ``(K,)``.

        Raises ``ValueError`` when the dataset defines no sigmas (OKS is undefined for it).
        """
        if not self.sigmas:
            raise ValueError(f"{self.name} defines no OKS sigmas")
        return np.asarray(self.sigmas, dtype=np.float32)

    def flip_indices_array(self) -> np.ndarray:
        """``flip_indices`` as an int64 array of shape ``(K,)`` for fancy indexing."""
        return np.asarray(self.flip_indices, dtype=np.int64)

    @classmethod
    def from_rows(
        cls, name: str, keypoints: Sequence[KeypointRow], links: Sequence[LinkRow], source: str = ""
    ) -> PoseDatasetInfo:
        """Build from name-based tables (the form the dataset modules are written in).

        ``keypoints`` rows are ``(name, mirror or None, sigma or None, rgb)`` in channel order;
        ``links`` rows are ``(start name, end name, rgb)``. Sigmas must be all given or all
        ``None``. Raises ``ValueError`` on an unknown name or an inconsistent table.
        """
        names = tuple(r[0] for r in keypoints)
        pos = {n: i for i, n in enumerate(names)}

        def idx(n: str) -> int:
            if n not in pos:
                raise ValueError(f"{name}: unknown keypoint name {n!r}")
            return pos[n]

        flip = tuple(i if r[1] is None else idx(r[1]) for i, r in enumerate(keypoints))
        sig = [r[2] for r in keypoints]
        if any(s is None for s in sig) and not all(s is None for s in sig):
            raise ValueError(f"{name}: sigmas given for only some keypoints")
        sigmas = tuple(float(s) for s in sig if s is not None)
        return cls(
            name=name,
            keypoint_names=names,
            skeleton=tuple((idx(a), idx(b)) for a, b, _ in links),
            flip_indices=flip,
            sigmas=sigmas,
            keypoint_colors=tuple(cast(RGB, tuple(r[3])) for r in keypoints),
            link_colors=tuple(cast(RGB, tuple(c)) for _, _, c in links),
            source=source,
        )


@dataclass(frozen=True)
class SegDatasetInfo:
    """Class metainfo of one semantic-segmentation dataset (MMSeg 1.x ``METAINFO``).

    Attributes:
        name: registry key, e.g. ``"cityscapes"``.
        classes: ``C`` class names in the order of the model's ``C`` logit channels
            (label id ``c`` in a predicted label map means ``classes[c]``).
        palette: ``C`` RGB uint8 triples, ``palette[c]`` draws class ``c``.
        reduce_zero_label: the MMSeg dataset's default — when True, ground-truth label 0 is
            "other/unlabelled" and is mapped to 255 (ignored), and label ``l`` to ``l - 1``
            (ADE20K, Pascal Context 59). Only evaluation against raw annotations needs it.
        ignore_index: the label value ignored in evaluation (255 in MMSeg).
        source: the upstream dataset class the facts come from.

    Raises:
        ValueError: on construction, if ``palette`` and ``classes`` differ in length, a class
            name repeats, or a colour is not an RGB triple.
    """

    name: str
    classes: tuple[str, ...]
    palette: tuple[RGB, ...]
    reduce_zero_label: bool = False
    ignore_index: int = 255
    source: str = ""

    def __post_init__(self) -> None:
        _check_names(self.classes, self.name, "class", "classes")
        if len(self.palette) != len(self.classes):
            raise ValueError(
                f"{self.name}: {len(self.palette)} colours for {len(self.classes)} classes"
            )
        for c in self.palette:
            _check_rgb(c, self.name)

    @property
    def num_classes(self) -> int:
        """``C``, the number of classes (= logit channels of a model trained on it)."""
        return len(self.classes)

    def palette_array(self) -> np.ndarray:
        """Palette as a uint8 array of shape ``(C, 3)``, RGB; ``palette_array()[label_map]``
        colours an ``(H, W)`` label map (labels must be < C; map 255 separately)."""
        return np.asarray(self.palette, dtype=np.uint8).reshape(-1, 3)

    @classmethod
    def from_rows(cls, name: str, rows: Sequence[ClassRow], **kwargs) -> SegDatasetInfo:
        """Build from ``(class name, rgb)`` rows in channel order; ``kwargs`` go to the record."""
        return cls(
            name=name,
            classes=tuple(r[0] for r in rows),
            palette=tuple(cast(RGB, tuple(r[1])) for r in rows),
            **kwargs,
        )


__all__ = ["PoseDatasetInfo", "SegDatasetInfo", "KeypointRow", "LinkRow", "ClassRow", "RGB"]
