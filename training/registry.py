"""Model zoo registry: every published HRNet checkpoint this project can serve, by upstream name.

A timm-style registry of named, immutable :class:`ModelEntry` records (torch-free: importable by
``export/``, ``benchmarks/`` and the gateway tooling without torch). Each entry is one row of an
upstream model-zoo table, named by its upstream config file (without ``.py``), with the checkpoint
URL and the metrics exactly as published there, and the test-time settings of that config.

Sources (read from the upstream repositories, not copied):

* MMPose 1.x ``configs/body_2d_keypoint/topdown_heatmap/coco/``: ``hrnet_coco.md``,
  ``hrnet_fp16_coco.md``, ``hrnet_augmentation_coco.md``, ``hrnet_coco_aic.md``,
  ``hrnet_dark_coco.md``, ``hrnet_udp_coco.md``. Where a README table and its ``.yml`` metafile
  disagree (plain ``hrnet_coco`` metrics; COCO-AIC URLs and metrics) the README is used: it is the
  later-updated one (MMPose PR #2630 re-linked the COCO-AIC checkpoints; the metafile still
  points at the superseded 2022 files).
* MMPose 0.x ``configs/animal/2d_kpt_sview_rgb_img/topdown_heatmap/{horse10,macaque,atrw}/``
  (``hrnet_*.md``): MMPose 1.x has no HRNet configs or checkpoints for Horse-10, MacaquePose or
  ATRW, so these entries are the 0.x ones (checkpoint keys under ``keypoint_head.``; the 0.x test
  pipeline — padding 1.25, ``TopDownAffine``, flip with shifted heatmaps,
  ``post_process='default'`` — is the same computation as MMPose 1.x ``MSRAHeatmap`` decoding).
* The three ``hrnet_augmentation_coco.md`` rows are MMPose 1.x configs whose checkpoints are the
  MMPose 0.x ones (``mmpose/top_down/augmentation/``, 2021): ``upstream="mmpose-0.x"``, keys
  under ``keypoint_head.``.
* MMPose 0.x ``configs/bottom_up/higherhrnet/coco/`` (``higherhrnet_coco.md``, later moved to
  ``configs/body/2d_kpt_sview_rgb_img/associative_embedding/coco/``): HigherHRNet bottom-up
  rows, single- and multi-scale COCO metrics; the later config names are :data:`ALIASES`.
* MMSeg 1.x ``configs/hrnet/README.md`` and ``metafile.yaml`` (the checkpoints still carry their
  0.x file names under ``mmsegmentation/v0.5/hrnet/``).

Use::

    from training.registry import get_entry, list_entries
    e = get_entry("td-hm_hrnet-w32_8xb64-210e_coco-256x192")
    e.url, e.input_size, e.metrics["AP"]
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

TASKS = ("topdown_pose", "bottomup_pose", "segmentation")
ARCHS = ("hrnet_w18_small", "hrnet_w18", "hrnet_w32", "hrnet_w48")
CODECS = ("MSRAHeatmap", "UDPHeatmap")
UPSTREAMS = ("mmpose-1.x", "mmpose-0.x", "mmseg-1.x")

# Metric keys used in ``ModelEntry.metrics`` per kind of table.
COCO_METRIC_KEYS = ("AP", "AP50", "AP75", "AR", "AR50")
HORSE10_METRIC_KEYS = ("PCK@0.3", "NME")
SEG_METRIC_KEYS = ("mIoU", "mIoU(ms+flip)")
#: bottom-up COCO tables: single-scale, then multi-scale (test scales [2, 1, 0.5]) ``(ms)``
BOTTOMUP_METRIC_KEYS = COCO_METRIC_KEYS + tuple(f"{k}(ms)" for k in COCO_METRIC_KEYS)


@dataclass(frozen=True)
class ModelEntry:
    """One published model: what it is, where its weights are, how it was tested, how it scored.

    Attributes (sizes in pixels):
        name: upstream config name without ``.py`` (unique registry key; :func:`get_entry`
            also takes the :data:`ALIASES`).
        task: ``"topdown_pose"``, ``"bottomup_pose"`` or ``"segmentation"``.
        arch: ``"hrnet_w18_small" | "hrnet_w18" | "hrnet_w32" | "hrnet_w48"``.
        dataset: metainfo key for :func:`service.datasets.get_pose_dataset` /
            :func:`service.datasets.get_seg_dataset`.
        num_outputs: output channels of the head: ``K`` heatmaps (pose; bottom-up: ``K``
            joints, the head adds ``K`` tag maps at 1/4) or ``C`` logits (seg).
        config: upstream config path, relative to the upstream repository root; empty for a
            project model with no upstream config (its recipe is in :mod:`training.recipes`).
        url: checkpoint URL exactly as published (``https://download.openmmlab.com/...pth``);
            empty when nothing is published (project models, trained with ``hrnet-train``).
        metrics: published numbers. Pose on COCO/MacaquePose/ATRW: ``AP, AP50, AP75, AR, AR50``
            (fractions in 0..1); bottom-up: those and the multi-scale ``AP(ms)``... (see
            :data:`BOTTOMUP_METRIC_KEYS`); Horse-10: ``PCK@0.3`` (fraction), ``NME``; segmentation:
            ``mIoU``, ``mIoU(ms+flip)`` (percent). Read-only mapping.
        upstream: ``"mmpose-1.x" | "mmpose-0.x" | "mmseg-1.x"``: the code base that wrote the
            checkpoint, which decides its key layout (see :attr:`head_prefix`). The config may
            still be a 1.x one: the 1.x augmentation rows link 0.x checkpoints.
        eval_set: what the metrics were measured on, in the upstream table's words.

        input_size: pose only, network input ``(w, h)``; bottom-up: ``(s, s)`` with ``s`` the
            short side the image is resized to at scale 1 (``data_cfg.image_size``, 512/640).
        heatmap_size: pose only, heatmap ``(w, h)`` (input / 4).
        sigma: pose only, Gaussian sigma of the training target in heatmap pixels (the codec's
            ``sigma``: 2 at 256x192 / 256x256, 3 at 384x288).
        codec: pose only, ``"MSRAHeatmap"`` or ``"UDPHeatmap"``.
        dark: pose only, DARK decoding (``MSRAHeatmap(unbiased=True)``).
        use_udp: pose only, UDP affine (``TopdownAffine(use_udp=True)``); True iff UDPHeatmap.
        flip_test: pose only, the config's ``test_cfg.flip_test``.
        shift_heatmap: pose only, ``test_cfg.shift_heatmap`` (False for UDP).
        bbox_padding: pose only, the box padding of the test pipeline (``GetBBoxCenterScale``;
            1.25 everywhere except MMPose 0.x ATRW, whose dataset uses ``padding=1.0``).
        output_keypoint_indices: pose only, ``test_cfg.output_keypoint_indices`` when the head
            predicts more keypoints than are reported (COCO-AIC combine: 0..16 of 19), else None.

        ae_test_cfg: bottom-up only, the config's associative-embedding ``test_cfg`` under the
            field names of :class:`service.cards.BottomUpSpec` (``max_num_people``,
            ``detection_threshold``, ``tag_threshold``, ``nms_kernel``, ``adjust``, ``refine``,
            ``joint_order``, ...). Read-only mapping.

        crop_size: seg only, training crop ``(h, w)``.
        test_scale: seg only, test ``Resize(scale=(w, h), keep_ratio=True)``.
        test_mode: seg only, ``"whole"`` or ``"slide"`` (``test_cfg.mode``).
        test_crop: seg only, slide window ``(h, w)``; None for whole.
        test_stride: seg only, slide stride ``(h, w)``; None for whole.
        align_corners: seg only, decode-head ``align_corners`` (False for all HRNet rows).
        notes: anything a user should know (e.g. README vs metafile disagreements).

    Raises:
        ValueError: on construction, if a field is outside its allowed set or the pose/seg
            fields are inconsistent with ``task``.
    """

    name: str
    task: str
    arch: str
    dataset: str
    num_outputs: int
    config: str
    url: str
    metrics: Mapping[str, float] = field(default_factory=dict, hash=False, compare=False)
    upstream: str = "mmpose-1.x"
    eval_set: str = ""
    # top-down pose
    input_size: tuple[int, int] | None = None
    heatmap_size: tuple[int, int] | None = None
    sigma: float | None = None
    codec: str | None = None
    dark: bool = False
    use_udp: bool = False
    flip_test: bool = True
    shift_heatmap: bool = True
    bbox_padding: float = 1.25
    output_keypoint_indices: tuple[int, ...] | None = None
    # bottom-up pose
    ae_test_cfg: Mapping[str, Any] | None = field(default=None, hash=False, compare=False)
    # segmentation
    crop_size: tuple[int, int] | None = None
    test_scale: tuple[int, int] | None = None
    test_mode: str | None = None
    test_crop: tuple[int, int] | None = None
    test_stride: tuple[int, int] | None = None
    align_corners: bool = False
    notes: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "metrics", MappingProxyType(dict(self.metrics)))
        if self.ae_test_cfg is not None:
            object.__setattr__(self, "ae_test_cfg", MappingProxyType(dict(self.ae_test_cfg)))
        bad = []
        if self.task not in TASKS:
            bad.append(f"task {self.task!r} not in {TASKS}")
        if self.arch not in ARCHS:
            bad.append(f"arch {self.arch!r} not in {ARCHS}")
        if self.upstream not in UPSTREAMS:
            bad.append(f"upstream {self.upstream!r} not in {UPSTREAMS}")
        if self.num_outputs <= 0:
            bad.append("num_outputs must be positive")
        if self.config and not self.config.endswith(f"/{self.name}.py"):
            bad.append(f"config {self.config!r} is not <dir>/{self.name}.py")
        if self.task == "topdown_pose":
            if self.codec not in CODECS:
                bad.append(f"codec {self.codec!r} not in {CODECS}")
            if self.input_size is None or self.heatmap_size is None or self.sigma is None:
                bad.append("pose entry needs input_size, heatmap_size and sigma")
            if self.use_udp != (self.codec == "UDPHeatmap"):
                bad.append("use_udp must be True exactly for UDPHeatmap")
            if self.dark and self.codec != "MSRAHeatmap":
                bad.append("dark applies to MSRAHeatmap only")
            if self.test_mode is not None or self.crop_size is not None:
                bad.append("pose entry must not set segmentation fields")
            if self.output_keypoint_indices is not None and (
                max(self.output_keypoint_indices) >= self.num_outputs
            ):
                bad.append("output_keypoint_indices out of range")
        elif self.task == "bottomup_pose":
            if self.input_size is None or self.ae_test_cfg is None:
                bad.append("bottom-up entry needs input_size and ae_test_cfg")
            if self.codec is not None or self.test_mode is not None:
                bad.append("bottom-up entry must not set top-down codec or segmentation fields")
        elif self.task == "segmentation":
            if self.test_mode not in ("whole", "slide"):
                bad.append(f"test_mode {self.test_mode!r} not 'whole'/'slide'")
            if (self.test_mode == "slide") != (
                self.test_crop is not None and self.test_stride is not None
            ):
                bad.append("slide mode needs test_crop and test_stride (and whole mode neither)")
            if self.crop_size is None or self.test_scale is None:
                bad.append("segmentation entry needs crop_size and test_scale")
            if self.codec is not None or self.input_size is not None:
                bad.append("segmentation entry must not set pose fields")
        if self.ae_test_cfg is not None and self.task != "bottomup_pose":
            bad.append("ae_test_cfg is for bottom-up entries only")
        if bad:
            raise ValueError(f"ModelEntry {self.name!r}: " + "; ".join(bad))

    @property
    def checkpoint_filename(self) -> str:
        """The checkpoint's file name (last component of :attr:`url`)."""
        return self.url.rsplit("/", 1)[-1]

    @property
    def head_prefix(self) -> str:
        """State-dict prefix of the head in the published checkpoint: ``"head."`` (MMPose 1.x),
        ``"keypoint_head."`` (MMPose 0.x) or ``"decode_head."`` (MMSeg); the backbone is always
        under ``"backbone."``."""
        return {"mmpose-1.x": "head.", "mmpose-0.x": "keypoint_head.", "mmseg-1.x": "decode_head."}[
            self.upstream
        ]

    @property
    def num_reported_keypoints(self) -> int:
        """Pose: keypoints in the served output (``len(output_keypoint_indices)`` or
        ``num_outputs``). Raises ``ValueError`` for a segmentation entry."""
        if self.task == "segmentation":
            raise ValueError(f"{self.name} is not a pose model")
        if self.output_keypoint_indices is not None:
            return len(self.output_keypoint_indices)
        return self.num_outputs


_REGISTRY: dict[str, ModelEntry] = {}
#: other names of registered entries (e.g. the config names a later upstream release uses)
ALIASES: dict[str, str] = {}


def register(entry: ModelEntry, *, overwrite: bool = False) -> ModelEntry:
    """Add ``entry`` under ``entry.name`` and return it.

    Raises ``ValueError`` if the name is taken (unless ``overwrite``) and ``TypeError`` if
    ``entry`` is not a :class:`ModelEntry`.
    """
    if not isinstance(entry, ModelEntry):
        raise TypeError(f"expected ModelEntry, got {type(entry).__name__}")
    if entry.name in _REGISTRY and not overwrite:
        raise ValueError(f"model {entry.name!r} is already registered")
    _REGISTRY[entry.name] = entry
    return entry


def get_entry(name: str) -> ModelEntry:
    """The entry registered as ``name`` (an upstream config name without ``.py``).

    A trailing ``.py`` is accepted, and so are the later spellings in :data:`ALIASES`. Raises
    ``KeyError`` whose message lists the closest registered names (``difflib.get_close_matches``).
    """
    key = name[:-3] if name.endswith(".py") else name
    key = ALIASES.get(key, key)
    if key in _REGISTRY:
        return _REGISTRY[key]
    close = difflib.get_close_matches(key, list(_REGISTRY), n=5, cutoff=0.5)
    hint = f"; did you mean: {', '.join(close)}" if close else ""
    raise KeyError(f"unknown model {name!r} ({len(_REGISTRY)} registered){hint}")


def list_entries(task: str | None = None, dataset: str | None = None) -> list[ModelEntry]:
    """All entries, in registration order, optionally filtered by ``task`` and/or ``dataset``.

    Raises ``ValueError`` for a ``task`` not in :data:`TASKS`.
    """
    if task is not None and task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
    return [
        e
        for e in _REGISTRY.values()
        if (task is None or e.task == task) and (dataset is None or e.dataset == dataset)
    ]


# --------------------------------------------------------------------------------------------
# Top-down pose tables
# --------------------------------------------------------------------------------------------

# Upstream writes input sizes as HxW; the codec wants (w, h). Heatmaps are input / 4.
# sigma: 2 for 256x192 and 256x256 configs, 3 for 384x288 configs (checked in every config).
_POSE_GEOMETRY = {
    "128x128": ((128, 128), (32, 32), 2.0),
    "256x192": ((192, 256), (48, 64), 2.0),
    "384x288": ((288, 384), (72, 96), 3.0),
    "256x256": ((256, 256), (64, 64), 2.0),
}

_COCO_DIR = "configs/body_2d_keypoint/topdown_heatmap/coco"
_ANIMAL0_DIR = "configs/animal/2d_kpt_sview_rgb_img/topdown_heatmap"
_COCO_EVAL = "COCO val2017, person detector with human AP 56.4"


def _pose(
    name: str,
    arch: str,
    dataset: str,
    k: int,
    size: str,
    url: str,
    metrics: dict[str, float],
    *,
    directory: str = _COCO_DIR,
    upstream: str = "mmpose-1.x",
    codec: str = "MSRAHeatmap",
    dark: bool = False,
    eval_set: str = _COCO_EVAL,
    output_keypoint_indices: tuple[int, ...] | None = None,
    notes: str = "",
    bbox_padding: float = 1.25,
) -> None:
    inp, hm, sigma = _POSE_GEOMETRY[size]
    udp = codec == "UDPHeatmap"
    register(
        ModelEntry(
            name=name,
            task="topdown_pose",
            arch=arch,
            dataset=dataset,
            num_outputs=k,
            config=f"{directory}/{name}.py" if directory else "",
            url=url,
            metrics=metrics,
            upstream=upstream,
            eval_set=eval_set,
            input_size=inp,
            heatmap_size=hm,
            sigma=sigma,
            codec=codec,
            dark=dark,
            use_udp=udp,
            flip_test=True,
            shift_heatmap=not udp,
            bbox_padding=bbox_padding,
            output_keypoint_indices=output_keypoint_indices,
            notes=notes,
        )
    )


def _coco(ap: float, ap50: float, ap75: float, ar: float, ar50: float) -> dict[str, float]:
    return dict(zip(COCO_METRIC_KEYS, (ap, ap50, ap75, ar, ar50)))


_MMPOSE_V1 = "https://download.openmmlab.com/mmpose/v1/body_2d_keypoint/topdown_heatmap/coco"


def _v1(
    name: str,
    tail: str,
    metrics: dict[str, float],
    *,
    dataset: str = "coco",
    k: int = 17,
    **kw: Any,
) -> None:
    """Register an MMPose 1.x COCO row: the arch (``hrnet-w32`` -> ``hrnet_w32``) and the input
    size (first ``HxW``) are read from ``name``; the URL is ``<_MMPOSE_V1>/<name>-<tail>.pth``
    (``tail`` = ``<sha256[:8]>_<date>``). ``kw`` go to :func:`_pose`."""
    arch_m, size_m = re.search(r"hrnet-(w\d+)", name), re.search(r"\d+x\d+", name)
    if arch_m is None or size_m is None:
        raise ValueError(f"{name}: no hrnet-wNN arch or HxW size in the name")
    arch, size = "hrnet_" + arch_m.group(1), size_m.group(0)
    _pose(name, arch, dataset, k, size, f"{_MMPOSE_V1}/{name}-{tail}.pth", metrics, **kw)


_README_NOT_YML = (
    "metrics from hrnet_coco.md (README, updated 2022-10); hrnet_coco.yml lists older numbers"
)

# hrnet_coco.md
_v1(
    "td-hm_hrnet-w32_8xb64-210e_coco-256x192",
    "81c58e40_20220909",
    _coco(0.749, 0.906, 0.821, 0.804, 0.945),
    notes=_README_NOT_YML,
)
_v1(
    "td-hm_hrnet-w32_8xb64-210e_coco-384x288",
    "ca5956af_20220909",
    _coco(0.761, 0.908, 0.826, 0.811, 0.944),
    notes=_README_NOT_YML,
)
_v1(
    "td-hm_hrnet-w48_8xb32-210e_coco-256x192",
    "0e67c616_20220913",
    _coco(0.756, 0.908, 0.826, 0.809, 0.945),
    notes=_README_NOT_YML,
)
_v1(
    "td-hm_hrnet-w48_8xb32-210e_coco-384x288",
    "c161b7de_20220915",
    _coco(0.767, 0.911, 0.832, 0.817, 0.947),
    notes=_README_NOT_YML,
)

# hrnet_fp16_coco.md (trained with mixed precision; same network and test pipeline)
_v1(
    "td-hm_hrnet-w32_fp16-8xb64-210e_coco-256x192",
    "f1e84e3b_20220914",
    _coco(0.749, 0.907, 0.822, 0.802, 0.946),
)

# hrnet_augmentation_coco.md (Albumentations training variants). The 1.x table links the
# MMPose 0.x checkpoints unchanged: mmpose/top_down/augmentation/*_20210320.pth, published with
# 0.x's configs/top_down/augmentation/hrnet_w32_coco_256x192_*.py (1.x files live under
# mmpose/v1/), so their keys are 0.x's keypoint_head.* (MMPose 1.x renames them on load,
# BasePoseEstimator's old-version state-dict hook). Config and metrics: the 1.x table's.
_AUG = "https://download.openmmlab.com/mmpose/top_down/augmentation"
_AUG_NOTE = (
    "MMPose 0.x checkpoint (keypoint_head.* keys) linked from the 1.x table; 1.x config and metrics"
)
for _aug, _tail, _metrics in (
    ("coarsedropout", "0f16a0ce_20210320", _coco(0.753, 0.908, 0.822, 0.805, 0.944)),
    ("gridmask", "868180df_20210320", _coco(0.752, 0.906, 0.825, 0.804, 0.943)),
    ("photometric", "308cf591_20210320", _coco(0.754, 0.908, 0.825, 0.805, 0.943)),
):
    _pose(
        f"td-hm_hrnet-w32_{_aug}-8xb64-210e_coco-256x192",
        "hrnet_w32",
        "coco",
        17,
        "256x192",
        f"{_AUG}/hrnet_w32_coco_256x192_{_aug}-{_tail}.pth",
        _metrics,
        upstream="mmpose-0.x",
        notes=_AUG_NOTE,
    )

# hrnet_coco_aic.md (README; the .yml still lists the superseded 2022-10 checkpoints)
_AIC_NOTE = (
    "URL and metrics from hrnet_coco_aic.md; hrnet_coco.yml lists an older checkpoint "
    "(merge-b05435b9_20221025 / combine-4ce66880_20221026) with different numbers"
)
_v1(
    "td-hm_hrnet-w32_8xb64-210e_coco-aic-256x192-merge",
    "a9ea6d77_20230818",
    _coco(0.756, 0.907, 0.828, 0.809, 0.944),
    notes="trained on COCO + AIC mapped onto the 17 COCO keypoints; " + _AIC_NOTE,
)
_v1(
    "td-hm_hrnet-w32_8xb64-210e_coco-aic-256x192-combine",
    "458125cc_20230818",
    _coco(0.755, 0.904, 0.825, 0.807, 0.942),
    dataset="coco_aic",
    k=19,
    output_keypoint_indices=tuple(range(17)),
    notes="head predicts 19 keypoints (COCO 17 + head_top, neck); test_cfg keeps 0..16, "
    "which the COCO metrics are on; " + _AIC_NOTE,
)

# hrnet_dark_coco.md
_v1(
    "td-hm_hrnet-w32_dark-8xb64-210e_coco-256x192",
    "0e00bf12_20220914",
    _coco(0.757, 0.907, 0.825, 0.807, 0.943),
    dark=True,
)
_v1(
    "td-hm_hrnet-w32_dark-8xb64-210e_coco-384x288",
    "9bab4c9b_20220917",
    _coco(0.766, 0.907, 0.829, 0.815, 0.943),
    dark=True,
    notes="hrnet_dark_coco.yml gives AR50 0.942; README 0.943",
)
_v1(
    "td-hm_hrnet-w48_dark-8xb32-210e_coco-256x192",
    "e1ebdd6f_20220913",
    _coco(0.764, 0.907, 0.831, 0.814, 0.942),
    dark=True,
)
_v1(
    "td-hm_hrnet-w48_dark-8xb32-210e_coco-384x288",
    "39c3c381_20220916",
    _coco(0.772, 0.911, 0.833, 0.821, 0.948),
    dark=True,
)

# hrnet_udp_coco.md (the udp-regress row is left out: its head outputs 3*17 "combined"
# offset maps, a different codec)
_v1(
    "td-hm_hrnet-w32_udp-8xb64-210e_coco-256x192",
    "73ede547_20220914",
    _coco(0.762, 0.907, 0.829, 0.810, 0.942),
    codec="UDPHeatmap",
)
_v1(
    "td-hm_hrnet-w32_udp-8xb64-210e_coco-384x288",
    "9a3f7c85_20220914",
    _coco(0.768, 0.909, 0.832, 0.815, 0.945),
    codec="UDPHeatmap",
)
_v1(
    "td-hm_hrnet-w48_udp-8xb32-210e_coco-256x192",
    "3feaef8f_20220913",
    _coco(0.768, 0.908, 0.833, 0.817, 0.945),
    codec="UDPHeatmap",
)
_v1(
    "td-hm_hrnet-w48_udp-8xb32-210e_coco-384x288",
    "70d7ab01_20220913",
    _coco(0.773, 0.911, 0.836, 0.821, 0.946),
    codec="UDPHeatmap",
)

# MMPose 0.x animal tables: hrnet_horse10.md, hrnet_macaque.md, hrnet_atrw.md
_ANIMAL = "https://download.openmmlab.com/mmpose/animal/hrnet"


def _animal(
    name: str,
    arch: str,
    dataset: str,
    k: int,
    size: str,
    url: str,
    metrics: dict[str, float],
    eval_set: str,
) -> None:
    # MMPose 0.x AnimalATRWDataset computes center/scale with padding=1.0; Horse-10 and
    # MacaquePose use the usual 1.25
    _pose(
        name,
        arch,
        dataset,
        k,
        size,
        url,
        metrics,
        directory=f"{_ANIMAL0_DIR}/{dataset}",
        upstream="mmpose-0.x",
        eval_set=eval_set,
        bbox_padding=1.0 if dataset == "atrw" else 1.25,
    )


_HORSE_EVAL = "Horse-10 test set of the split"
for _arch, _split, _pck, _nme, _tail in (
    ("w32", 1, 0.951, 0.122, "split1-401d901a_20210405"),
    ("w32", 2, 0.949, 0.116, "split2-04840523_20210405"),
    ("w32", 3, 0.939, 0.153, "split3-4db47400_20210405"),
    ("w48", 1, 0.973, 0.095, "split1-3c950d3b_20210405"),
    ("w48", 2, 0.969, 0.101, "split2-8ef72b5d_20210405"),
    ("w48", 3, 0.961, 0.128, "split3-0232ec47_20210405"),
):
    _animal(
        f"hrnet_{_arch}_horse10_256x256-split{_split}",
        f"hrnet_{_arch}",
        "horse10",
        22,
        "256x256",
        f"{_ANIMAL}/hrnet_{_arch}_horse10_256x256_{_tail}.pth",
        {"PCK@0.3": _pck, "NME": _nme},
        _HORSE_EVAL,
    )

# MacaquePose (ground-truth boxes, 17 keypoints) and ATRW (15 keypoints): COCO-style AP tables
_ANIMAL_EVAL = {
    "macaque": "MacaquePose, ground-truth bounding boxes",
    "atrw": "ATRW validation set",
}
for _arch, _ds, _k, _size, _tail, _metrics in (
    (
        "w32",
        "macaque",
        17,
        "256x192",
        "f7e9e04f_20210407",
        _coco(0.814, 0.953, 0.918, 0.851, 0.969),
    ),
    (
        "w48",
        "macaque",
        17,
        "256x192",
        "9b34b02a_20210407",
        _coco(0.818, 0.963, 0.917, 0.855, 0.971),
    ),
    ("w32", "atrw", 15, "256x256", "f027f09a_20210414", _coco(0.912, 0.973, 0.959, 0.938, 0.985)),
    ("w48", "atrw", 15, "256x256", "ac088892_20210414", _coco(0.911, 0.972, 0.946, 0.937, 0.985)),
):
    _name = f"hrnet_{_arch}_{_ds}_{_size}"
    _animal(
        _name,
        f"hrnet_{_arch}",
        _ds,
        _k,
        _size,
        f"{_ANIMAL}/{_name}-{_tail}.pth",
        _metrics,
        _ANIMAL_EVAL[_ds],
    )

# Project model (no upstream checkpoint): the README's DeepLabCut worked example, trained here
# with hrnet-train (training.recipes). Boxes are the keypoints' extent plus a margin
# (training.dlc), so padding 1.25 as the COCO configs.
_pose(
    "td-hm_hrnet-w18-small_dlc-openfield-128x128",
    "hrnet_w18_small",
    "dlc_openfield",
    4,
    "128x128",
    "",
    {},
    directory="",
    eval_set="DeepLabCut openfield example, held-out frames",
    notes="project recipe (hrnet-train); no published checkpoint",
)

# --------------------------------------------------------------------------------------------
# Bottom-up pose: MMPose 0.x HigherHRNet (associative embedding) on COCO
# --------------------------------------------------------------------------------------------

# higherhrnet_coco.md (0.x): checkpoints under mmpose/bottom_up/, published with the configs
# configs/bottom_up/higherhrnet/coco/higher_hrnet{32,48}_coco_*.py; MMPose 0.x later moved them
# to configs/body/2d_kpt_sview_rgb_img/associative_embedding/coco/higherhrnet_w{32,48}_coco_*.py
# (same network, test_cfg and checkpoints), accepted here as aliases.
# The test_cfg of all three configs (identical), in BottomUpSpec's field names, plus what the
# test pipeline fixes outside test_cfg: both resized sides are multiples of 64
# (BottomUpGetImgSize / BottomUpResizeAlign) and no UDP (non-_udp configs). joint_order is not
# in the config either: MMPose 0.x's HeatmapParser (_Params) groups 17-joint models in the
# 1-based order [1..7, 12, 13, 8..11, 14..17], as the original HigherHRNet's group.py does.
_AE_TEST_CFG: dict[str, Any] = dict(
    num_joints=17,
    max_num_people=30,
    scale_factor=[1.0],
    with_heatmaps=[True, True],
    with_ae=[True, False],
    project2image=True,
    align_corners=False,
    nms_kernel=5,
    nms_padding=2,
    tag_per_joint=True,
    detection_threshold=0.1,
    tag_threshold=1.0,
    use_detection_val=True,
    ignore_too_much=False,
    adjust=True,
    refine=True,
    use_udp=False,
    size_divisor=64,
    joint_order=[0, 1, 2, 3, 4, 5, 6, 11, 12, 7, 8, 9, 10, 13, 14, 15, 16],
)
_BOTTOM_UP = "https://download.openmmlab.com/mmpose/bottom_up"
_BOTTOM_UP_DIR = "configs/bottom_up/higherhrnet/coco"
_BOTTOM_UP_EVAL = (
    "COCO val2017, flip test; single scale, and multi-scale (scales [2, 1, 0.5]) "
    "for the (ms) metrics"
)

for _width, _size, _tail, _single, _multi in (
    (
        32,
        512,
        "8ae85183_20200713",
        (0.677, 0.870, 0.738, 0.723, 0.890),
        (0.706, 0.881, 0.771, 0.747, 0.901),
    ),
    (
        32,
        640,
        "a22fe938_20200712",
        (0.686, 0.871, 0.747, 0.733, 0.898),
        (0.706, 0.880, 0.770, 0.749, 0.902),
    ),
    (
        48,
        512,
        "60fedcbc_20200712",
        (0.686, 0.873, 0.741, 0.731, 0.892),
        (0.716, 0.884, 0.775, 0.755, 0.901),
    ),
):
    _name = f"higher_hrnet{_width}_coco_{_size}x{_size}"
    register(
        ModelEntry(
            name=_name,
            task="bottomup_pose",
            arch=f"hrnet_w{_width}",
            dataset="coco",
            num_outputs=17,
            config=f"{_BOTTOM_UP_DIR}/{_name}.py",
            url=f"{_BOTTOM_UP}/{_name}-{_tail}.pth",
            metrics=dict(zip(BOTTOMUP_METRIC_KEYS, _single + _multi)),
            upstream="mmpose-0.x",
            eval_set=_BOTTOM_UP_EVAL,
            input_size=(_size, _size),
            flip_test=True,
            ae_test_cfg=_AE_TEST_CFG,
        )
    )
    ALIASES[f"higherhrnet_w{_width}_coco_{_size}x{_size}"] = _name

# --------------------------------------------------------------------------------------------
# Segmentation table (MMSeg 1.x configs/hrnet: FCN head on HRNetV2p)
# --------------------------------------------------------------------------------------------

# dataset -> (num_classes, train crop (h, w), test scale (w, h), mode, slide crop, slide stride,
#             eval set). From configs/_base_/datasets/*.py and the hrnet configs' test_cfg.
_SEG_SETUP = {
    "cityscapes": (19, (512, 1024), (2048, 1024), "whole", None, None, "Cityscapes val"),
    "ade20k": (150, (512, 512), (2048, 512), "whole", None, None, "ADE20K val"),
    "voc": (21, (512, 512), (2048, 512), "whole", None, None, "Pascal VOC 2012 val"),
    "pascal_context": (
        60,
        (480, 480),
        (520, 520),
        "slide",
        (480, 480),
        (320, 320),
        "Pascal Context val",
    ),
    "pascal_context_59": (
        59,
        (480, 480),
        (520, 520),
        "slide",
        (480, 480),
        (320, 320),
        "Pascal Context val (59 classes)",
    ),
}
_SEG_ARCH = {"hr18s": "hrnet_w18_small", "hr18": "hrnet_w18", "hr48": "hrnet_w48"}
_SEG_DATASET = {
    "cityscapes": "cityscapes",
    "ade20k": "ade20k",
    "voc12aug": "voc",
    "pascal-context": "pascal_context",
    "pascal-context-59": "pascal_context_59",
}
_MMSEG = "https://download.openmmlab.com/mmsegmentation/v0.5/hrnet"


def _seg(name: str, ckpt: str, miou: float, miou_msf: float) -> None:
    """Register ``fcn_<arch>_<gpus>xb<batch>-<iters>_<dataset>-<crop>``; ``ckpt`` is the file
    stem ``<dir>_<date>_<time>-<hash>`` whose directory is the stem up to the date."""
    arch_key = name.split("_")[1]
    ds_key = name.split("_", 3)[3].rsplit("-", 1)[0]
    dataset = _SEG_DATASET[ds_key]
    k, crop, scale, mode, tcrop, tstride, eval_set = _SEG_SETUP[dataset]
    directory = ckpt.rsplit("_", 2)[0]
    register(
        ModelEntry(
            name=name,
            task="segmentation",
            arch=_SEG_ARCH[arch_key],
            dataset=dataset,
            num_outputs=k,
            config=f"configs/hrnet/{name}.py",
            url=f"{_MMSEG}/{directory}/{ckpt}.pth",
            metrics={"mIoU": miou, "mIoU(ms+flip)": miou_msf},
            upstream="mmseg-1.x",
            eval_set=eval_set,
            crop_size=crop,
            test_scale=scale,
            test_mode=mode,
            test_crop=tcrop,
            test_stride=tstride,
            align_corners=False,
        )
    )


for _row in (
    # Cityscapes, 512x1024 crop, batch 2 x 4 GPUs
    (
        "fcn_hr18s_4xb2-40k_cityscapes-512x1024",
        "fcn_hr18s_512x1024_40k_cityscapes_20200601_014216-93db27d0",
        73.86,
        75.91,
    ),
    (
        "fcn_hr18_4xb2-40k_cityscapes-512x1024",
        "fcn_hr18_512x1024_40k_cityscapes_20200601_014216-f196fb4e",
        77.19,
        78.92,
    ),
    (
        "fcn_hr48_4xb2-40k_cityscapes-512x1024",
        "fcn_hr48_512x1024_40k_cityscapes_20200601_014240-a989b146",
        78.48,
        79.69,
    ),
    (
        "fcn_hr18s_4xb2-80k_cityscapes-512x1024",
        "fcn_hr18s_512x1024_80k_cityscapes_20200601_202700-1462b75d",
        75.31,
        77.48,
    ),
    (
        "fcn_hr18_4xb2-80k_cityscapes-512x1024",
        "fcn_hr18_512x1024_80k_cityscapes_20200601_223255-4e7b345e",
        78.65,
        80.35,
    ),
    (
        "fcn_hr48_4xb2-80k_cityscapes-512x1024",
        "fcn_hr48_512x1024_80k_cityscapes_20200601_202606-58ea95d6",
        79.93,
        80.72,
    ),
    (
        "fcn_hr18s_4xb2-160k_cityscapes-512x1024",
        "fcn_hr18s_512x1024_160k_cityscapes_20200602_190901-4a0797ea",
        76.31,
        78.31,
    ),
    (
        "fcn_hr18_4xb2-160k_cityscapes-512x1024",
        "fcn_hr18_512x1024_160k_cityscapes_20200602_190822-221e4a4f",
        78.80,
        80.74,
    ),
    (
        "fcn_hr48_4xb2-160k_cityscapes-512x1024",
        "fcn_hr48_512x1024_160k_cityscapes_20200602_190946-59b7973e",
        80.65,
        81.92,
    ),
    # ADE20K, 512x512 crop
    (
        "fcn_hr18s_4xb4-80k_ade20k-512x512",
        "fcn_hr18s_512x512_80k_ade20k_20200614_144345-77fc814a",
        31.38,
        32.45,
    ),
    (
        "fcn_hr18_4xb4-80k_ade20k-512x512",
        "fcn_hr18_512x512_80k_ade20k_20210827_114910-6c9382c0",
        36.27,
        37.28,
    ),
    (
        "fcn_hr48_4xb4-80k_ade20k-512x512",
        "fcn_hr48_512x512_80k_ade20k_20200614_193946-7ba5258d",
        41.90,
        43.27,
    ),
    (
        "fcn_hr18s_4xb4-160k_ade20k-512x512",
        "fcn_hr18s_512x512_160k_ade20k_20210829_174739-f1e7c2e7",
        33.07,
        34.56,
    ),
    (
        "fcn_hr18_4xb4-160k_ade20k-512x512",
        "fcn_hr18_512x512_160k_ade20k_20200614_214426-ca961836",
        36.79,
        38.58,
    ),
    (
        "fcn_hr48_4xb4-160k_ade20k-512x512",
        "fcn_hr48_512x512_160k_ade20k_20200614_214407-a52fc02c",
        42.02,
        43.86,
    ),
    # Pascal VOC 2012 + Aug, 512x512 crop
    (
        "fcn_hr18s_4xb4-20k_voc12aug-512x512",
        "fcn_hr18s_512x512_20k_voc12aug_20210829_174910-0aceadb4",
        65.50,
        68.89,
    ),
    (
        "fcn_hr18_4xb4-20k_voc12aug-512x512",
        "fcn_hr18_512x512_20k_voc12aug_20200617_224503-488d45f7",
        72.30,
        74.71,
    ),
    (
        "fcn_hr48_4xb4-20k_voc12aug-512x512",
        "fcn_hr48_512x512_20k_voc12aug_20200617_224419-89de05cd",
        75.87,
        78.58,
    ),
    (
        "fcn_hr18s_4xb4-40k_voc12aug-512x512",
        "fcn_hr18s_512x512_40k_voc12aug_20200614_000648-4f8d6e7f",
        66.61,
        70.00,
    ),
    (
        "fcn_hr18_4xb4-40k_voc12aug-512x512",
        "fcn_hr18_512x512_40k_voc12aug_20200613_224401-1b4b76cd",
        72.90,
        75.59,
    ),
    (
        "fcn_hr48_4xb4-40k_voc12aug-512x512",
        "fcn_hr48_512x512_40k_voc12aug_20200613_222111-1b0f18bc",
        76.24,
        78.49,
    ),
    # Pascal Context (60 = background + 59), 480x480 crop, slide test
    (
        "fcn_hr48_4xb4-40k_pascal-context-480x480",
        "fcn_hr48_480x480_40k_pascal_context_20200911_164852-667d00b0",
        45.14,
        47.42,
    ),
    (
        "fcn_hr48_4xb4-80k_pascal-context-480x480",
        "fcn_hr48_480x480_80k_pascal_context_20200911_155322-847a6711",
        45.84,
        47.84,
    ),
    # Pascal Context 59 (no background), 480x480 crop, slide test
    (
        "fcn_hr48_4xb4-40k_pascal-context-59-480x480",
        "fcn_hr48_480x480_40k_pascal_context_59_20210410_122738-b808b8b2",
        50.33,
        52.83,
    ),
    (
        "fcn_hr48_4xb4-80k_pascal-context-59-480x480",
        "fcn_hr48_480x480_80k_pascal_context_59_20210411_003240-3ae7081e",
        51.12,
        53.56,
    ),
):
    _seg(*_row)

del (
    _row,
    _arch,
    _split,
    _pck,
    _nme,
    _tail,
    _aug,
    _metrics,
    _ds,
    _k,
    _size,
    _name,
    _width,
    _single,
    _multi,
)

__all__ = [
    "ModelEntry",
    "register",
    "get_entry",
    "list_entries",
    "ALIASES",
    "TASKS",
    "ARCHS",
    "CODECS",
    "UPSTREAMS",
    "COCO_METRIC_KEYS",
    "HORSE10_METRIC_KEYS",
    "SEG_METRIC_KEYS",
    "BOTTOMUP_METRIC_KEYS",
]
