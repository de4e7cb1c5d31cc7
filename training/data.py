"""Top-down training data: COCO-style keypoint files -> per-instance samples -> batches.

The instance list is the one ``hrnet-eval`` scores with ground-truth boxes
(:func:`benchmarks.eval_data.build_pose_items`, MMPose 1.x ``BaseCocoStyleDataset``'s valid
instances: not crowd, at least one labelled keypoint, box clipped to the image), so training,
validation and the eval job agree on which people exist. Each sample goes through
:mod:`training.transforms` and the codec's ``encode`` (:mod:`service.codecs`, the same object
that decodes at serving time), then the gateway's input normalisation
(:func:`service.pipelines.common.to_input_tensor`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from benchmarks.eval_data import build_pose_items, load_json
from service.cards import Normalization
from service.codecs import MSRAHeatmap, UDPHeatmap
from service.pipelines.common import to_input_tensor

from .keypoint_mapping import KeypointMapping, get_mapping
from .transforms import AugmentConfig, Instance, apply_train_pipeline, get_bbox_center_scale

__all__ = ["Record", "load_records", "load_sources", "TopdownDataset", "sample_rng"]


@dataclass(frozen=True)
class Record:
    """One annotated instance: ``bbox`` ``(4,)`` xyxy clipped to the image, ``keypoints``
    ``(K, 2)`` float32 image pixels, ``visible`` ``(K,)`` float32 ``min(1, v)``; ``ann_id`` and
    ``image_id`` from the file."""

    path: Path
    image_id: Any
    ann_id: Any
    bbox: np.ndarray
    keypoints: np.ndarray
    visible: np.ndarray


def load_records(
    ann_file: str | Path, images_dir: str | Path, dataset: str = "coco", limit: int | None = None
) -> list[Record]:
    """Instances of a COCO keypoint file, in image-id then file order (see module docstring).

    ``dataset``: the metainfo name (only ``"horse10"`` changes the rules: boxes unclipped).
    ``limit``: keep the first ``limit`` instances. Raises
    :class:`benchmarks.eval_data.DataError` for missing/malformed files.
    """
    coco = load_json(ann_file)
    items, _, _ = build_pose_items(coco, images_dir, dataset, box_source="gt")
    anns = {a["id"]: a for a in coco.get("annotations", [])}
    out: list[Record] = []
    for it in items:
        for box, aid in zip(it.boxes or [], it.box_ids):
            kp = np.asarray(anns[aid]["keypoints"], dtype=np.float32).reshape(-1, 3)
            out.append(
                Record(
                    it.path,
                    it.image_id,
                    aid,
                    np.asarray(box[:4], np.float32),
                    kp[:, :2].copy(),
                    np.minimum(1.0, kp[:, 2]).astype(np.float32),
                )
            )
    return out[:limit] if limit is not None else out


def _mapping(spec: Any, num_keypoints: int) -> KeypointMapping | None:
    if spec is None or isinstance(spec, KeypointMapping):
        return spec
    if isinstance(spec, str):
        m = get_mapping(spec)
        if m.num_keypoints != num_keypoints:
            raise ValueError(
                f"keypoint mapping {spec!r} gives {m.num_keypoints} keypoints, "
                f"the model predicts {num_keypoints}"
            )
        return m
    return KeypointMapping(num_keypoints, tuple(spec))


def load_sources(root: str | Path, sources: Sequence[Any], num_keypoints: int) -> list[Record]:
    """Training instances of several COCO-style files combined in order (MMPose
    ``CombinedDataset``: index ``i`` runs through the first file's instances, then the next),
    each mapped onto the model's keypoints by its ``KeypointConverter``.

    Args:
        root: ``--data-root``; each source's ``ann``/``images`` are relative to it.
        sources: :class:`training.recipes.DataSource` rows (``ann``, ``images``, ``dataset``:
            reading rules as :func:`load_records`, ``mapping``: ``None``, a
            :data:`training.keypoint_mapping.MAPPINGS` name or ``(source, target)`` pairs).
        num_keypoints: ``K`` of the model (target of every mapping).

    Returns records whose ``keypoints``/``visible`` have ``K`` rows (unmapped targets: position
    0, visibility 0). Raises ``FileNotFoundError`` for a missing annotation file, ``ValueError``
    when a source without mapping does not have ``K`` keypoints or a mapping does not fit,
    ``KeyError`` for an unknown mapping name.
    """
    out: list[Record] = []
    for src in sources:
        ann = Path(root) / src.ann
        if not ann.is_file():
            raise FileNotFoundError(f"training annotations not found: {ann}")
        mapping = _mapping(src.mapping, num_keypoints)
        records = load_records(ann, Path(root) / src.images, src.dataset)
        for rec in records:
            if mapping is not None:
                kp, vis, _ = mapping(rec.keypoints[None], rec.visible[None])
                rec = Record(rec.path, rec.image_id, rec.ann_id, rec.bbox, kp[0], vis[0])
            if len(rec.keypoints) != num_keypoints:
                raise ValueError(
                    f"{ann}: annotations have {len(rec.keypoints)} keypoints, the "
                    f"model predicts {num_keypoints} (give the source a mapping)"
                )
            out.append(rec)
    return out


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of sample ``index`` in ``epoch``: a pure function of the three numbers, so a
    sample is identical whichever worker/process/resumed run draws it."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch), int(index)]))


class EpochDataset(Dataset, ABC):
    """A training set whose random draws depend on the epoch (:func:`sample_rng` with the
    sample's ``(seed, epoch, index)``): ``len(dataset)`` samples; :meth:`set_epoch` picks the
    epoch (0 until called)."""

    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random draws :meth:`__getitem__` makes."""
        self.epoch = int(epoch)

    @abstractmethod
    def __len__(self) -> int:
        """Number of samples."""


class TopdownDataset(EpochDataset):
    """Training (or fixed-crop) samples for a top-down heatmap model.

    ``dataset[i]`` -> ``dict(inputs=(3, h, w) float32 normalised RGB, heatmaps=(K, H, W)
    float32, weights=(K,) float32)``.

    Args:
        records: from :func:`load_records`.
        codec: the model's :class:`MSRAHeatmap`/:class:`UDPHeatmap` (``encode`` makes targets).
        normalization: the card's input normalisation.
        flip_indices: the dataset's flip permutation.
        augment: random steps; ``None`` = no augmentation (GetBBoxCenterScale + affine only).
        padding: ``GetBBoxCenterScale`` padding.
        use_udp: UDP affine.
        seed: base seed of :func:`sample_rng`; :meth:`set_epoch` picks the epoch.
    """

    def __init__(
        self,
        records: Sequence[Record],
        codec: MSRAHeatmap | UDPHeatmap,
        normalization: Normalization,
        flip_indices: Sequence[int],
        augment: AugmentConfig | None = None,
        padding: float = 1.25,
        use_udp: bool = False,
        seed: int = 0,
    ) -> None:
        self.records = list(records)
        self.codec = codec
        self.normalization = normalization
        self.flip_indices = tuple(int(i) for i in flip_indices)
        self.augment = augment
        self.padding = padding
        self.use_udp = use_udp
        self.seed = seed
        self._cache: dict[Path, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.records)

    def _image(self, path: Path) -> np.ndarray:
        img = self._cache.get(path)
        if img is None:
            img = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if img is None:
                raise FileNotFoundError(f"cannot read image {path}")
            if len(self._cache) < 256:  # small datasets stay in memory per worker
                self._cache[path] = img
        return img

    def instance(self, index: int) -> Instance:
        """The pipeline's output for sample ``index`` of the current epoch (crop + keypoints in
        input pixels), before target encoding."""
        rec = self.records[index]
        center, scale = get_bbox_center_scale(rec.bbox, self.padding)
        inst = Instance(
            image=self._image(rec.path),
            keypoints=rec.keypoints.copy(),
            visible=rec.visible.copy(),
            center=center,
            scale=scale,
        )
        rng = sample_rng(self.seed, self.epoch, index) if self.augment is not None else None
        cfg = self.augment or AugmentConfig()
        return apply_train_pipeline(
            inst, cfg, self.flip_indices, self.codec.input_size, self.use_udp, rng
        )

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        inst = self.instance(index)
        target = self.codec.encode(inst.keypoints[None], inst.visible[None])
        x = to_input_tensor(inst.image[None], self.normalization)[0]
        return {
            "inputs": torch.from_numpy(x),
            "heatmaps": torch.from_numpy(target["heatmaps"]),
            "weights": torch.from_numpy(np.ascontiguousarray(target["keypoint_weights"][0])),
        }
