"""Training recipes: how each registry model is trained (timm's pretrained-config idea: the
registry entry says *what* the model is and how it is tested, its recipe says how it is made).

``RECIPES`` is keyed by the same names as :mod:`training.registry` (``hrnet-export --list``).
A user's own dataset gets a recipe file (TOML or YAML) naming a registry model and overriding
any field::

    model = "td-hm_hrnet-w18-small_dlc-openfield-160x160"   # a registry name
    max_epochs = 60
    batch_size = 16
    lr = 1e-3
    [augment]
    rotate_factor = 30.0
    [data]            # paths relative to --data-root
    train_ann = "annotations/train.json"
    train_images = "images"
    # or several training files combined, each mapped onto the model's keypoints:
    # [[data.sources]]
    # ann = "aic/annotations/aic_train.json"
    # images = "aic/images"
    # mapping = "aic_to_coco"      # training.keypoint_mapping.MAPPINGS name, or [[src, dst], ...]

Top-down COCO recipes follow MMPose 1.x ``td-hm_hrnet-*_coco-*.py``: Adam lr 5e-4 for a global
batch of 512 (``auto_scale_lr.base_batch_size``; the LR is scaled linearly to the actual global
batch), ``LinearLR`` warm-up over 500 iterations from factor 0.001, ``MultiStepLR`` x0.1 at epochs
170 and 200, 210 epochs, validation and checkpoints every 10 epochs, best checkpoint by
``coco/AP`` (greater). The seed-000 variants (``td-hm_hrnet-w32_{coarsedropout,gridmask,
photometric}-8xb64-210e_coco-256x192``) are the W32 256x192 recipe plus
``AugmentConfig.pixel_variants``. The COCO-AIC merge/combine rows (seed 003) train on COCO + AI
Challenger combined through keypoint mappings (:mod:`training.keypoint_mapping`); the Horse-10,
MacaquePose and ATRW rows (seed 001) follow the MMPose 0.x animal configs. Bottom-up HigherHRNet
rows (seed 004) follow MMPose 0.x's configs (:func:`_bottomup_recipe`,
:class:`BottomUpTrainConfig`; a recipe file overrides them in a ``[bottomup]`` table with
``[bottomup.augment]``). Segmentation rows get a :class:`~training.seg_recipes.SegTrainRecipe`
(MMSeg, iteration-based).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import tomllib

from .bottomup_transforms import BottomUpAugment
from .registry import get_entry, list_entries
from .seg_recipes import SegTrainRecipe, seg_recipes
from .seg_transforms import SegAugmentConfig
from .transforms import AugmentConfig

__all__ = [
    "DataLayout",
    "DataSource",
    "TrainRecipe",
    "RECIPES",
    "get_recipe",
    "load_recipe_file",
    "COCO_UPPER_BODY",
    "COCO_AIC_UPPER_BODY",
    "ATRW_UPPER_BODY",
    "BottomUpTrainConfig",
]

#: COCO upper-body keypoints (MMPose ``coco.py`` ``upper_body_ids``: nose .. right wrist).
#: MacaquePose uses the COCO keypoints and types unchanged (``macaque.py``).
COCO_UPPER_BODY = tuple(range(11))
#: COCO-AIC (``coco_aic.py``): COCO's upper body plus head_top (17) and neck (18).
COCO_AIC_UPPER_BODY = COCO_UPPER_BODY + (17, 18)
#: ATRW (``atrw.py``, ``type='upper'``): ears, nose, shoulders, front paws (0..6).
ATRW_UPPER_BODY = tuple(range(7))


@dataclass(frozen=True)
class DataSource:
    """One training annotation file of a combined training set (MMPose ``CombinedDataset``
    member), relative to ``--data-root``.

    Attributes:
        ann: COCO-style keypoint json.
        images: folder of its images' ``file_name``.
        dataset: whose reading rules apply (:func:`training.data.load_records`; the MMPose
            AIC reader is the COCO one: ``"aic"`` reads as ``"coco"``).
        mapping: ``None`` (the file already has the model's keypoints), a name of
            :data:`training.keypoint_mapping.MAPPINGS`, or ``(source, target)`` pairs
            (MMPose ``KeypointConverter(num_keypoints=<model's K>, mapping=...)``).
    """

    ann: str
    images: str
    dataset: str = "coco"
    mapping: Any | None = None


@dataclass(frozen=True)
class DataLayout:
    """Where a dataset's files are, relative to ``--data-root`` (MMPose layout by default).

    ``val_ann``/``val_images`` may be missing on disk: validation is then skipped with a warning.
    ``sources``: when given, the training set is these files combined in order (each with its
    keypoint mapping) and ``train_ann``/``train_images`` are not used (COCO-AIC recipes).
    """

    train_ann: str = "annotations/person_keypoints_train2017.json"
    train_images: str = "train2017"
    val_ann: str = "annotations/person_keypoints_val2017.json"
    val_images: str = "val2017"
    sources: tuple[DataSource, ...] = ()


@dataclass(frozen=True)
class BottomUpTrainConfig:
    """The bottom-up (HigherHRNet) part of a recipe: MMPose 0.x ``higherhrnet_w32_coco_512x512.py``
    ``data_cfg``, train pipeline and ``MultiLossFactory`` (``with_ae_loss`` comes from the model's
    stages, :class:`service.cards.BottomUpSpec` ``with_ae``).

    Attributes:
        input_size: square training input ``S`` (multiple of 32); None = the registry entry's
            (512 / 640). Stage heatmaps are ``S / 4``, ``S / 2``; validation resizes the short
            side to ``S`` too.
        sigma: target Gaussian sigma (heatmap pixels, every stage).
        max_num_people: people per image in the tag-joint array (``max_num_people``).
        augment: :class:`training.bottomup_transforms.BottomUpAugment`.
        heatmaps_loss_factor, push_loss_factor, pull_loss_factor: per stage.
        ae_loss_type: ``'exp'`` or ``'max'``.
        supervise_empty: heatmap loss on channels without any joint too.
    """

    input_size: int | None = None
    sigma: float = 2.0
    max_num_people: int = 30
    augment: BottomUpAugment = field(default_factory=BottomUpAugment)
    heatmaps_loss_factor: tuple[float, ...] = (1.0, 1.0)
    push_loss_factor: tuple[float, ...] = (0.001, 0.001)
    pull_loss_factor: tuple[float, ...] = (0.001, 0.001)
    ae_loss_type: str = "exp"
    supervise_empty: bool = True


@dataclass(frozen=True)
class TrainRecipe:
    """How to train one registry model (top-down heatmap, or bottom-up with ``bottomup``).

    Attributes:
        model: registry name (:func:`training.registry.get_entry`): architecture, dataset
            metainfo, input/heatmap size, codec, test-time settings.
        lr: Adam learning rate for ``base_batch_size`` samples per step; the trainer uses
            ``lr * global_batch / base_batch_size`` (MMEngine ``auto_scale_lr``).
        base_batch_size: the global batch ``lr`` is meant for (upstream: 8 GPUs x 64 = 512).
        batch_size: samples per process per step (upstream: 64 for W32, 32 for W48).
        weight_decay: Adam weight decay (0 upstream).
        warmup_iters, warmup_factor: ``LinearLR(start_factor, begin=0, end=warmup_iters,
            by_epoch=False)``.
        milestones, gamma: ``MultiStepLR`` (epochs, by_epoch=True).
        max_epochs: training length in epochs (``--max-epochs``/``--max-iters`` override).
        val_interval: validate every N epochs (and at the end).
        checkpoint_interval: save ``epoch_N.pth`` every N epochs (and at the end).
        best_metric, best_rule: ``save_best`` metric and ``'greater'``/``'less'``.
        bbox_padding: ``GetBBoxCenterScale`` padding.
        augment: the random steps (:class:`training.transforms.AugmentConfig`).
        data: file layout under ``--data-root``.
        num_workers: DataLoader workers per process.
        warmup_style: ``"mmengine"`` (MMPose 1.x ``LinearLR``) or ``"mmcv"`` (MMPose 0.x
            ``warmup='linear'``), see :class:`training.optim.WarmupMultiStep`.
        bottomup: bottom-up models only (:class:`BottomUpTrainConfig`; required for them).
    """

    model: str
    lr: float = 5e-4
    base_batch_size: int = 512
    batch_size: int = 64
    weight_decay: float = 0.0
    warmup_iters: int = 500
    warmup_factor: float = 0.001
    milestones: tuple[int, ...] = (170, 200)
    gamma: float = 0.1
    max_epochs: int = 210
    val_interval: int = 10
    checkpoint_interval: int = 10
    best_metric: str = "AP"
    best_rule: str = "greater"
    bbox_padding: float = 1.25
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    data: DataLayout = field(default_factory=DataLayout)
    num_workers: int = 2
    warmup_style: str = "mmengine"
    bottomup: BottomUpTrainConfig | None = None

    def __post_init__(self) -> None:
        entry = get_entry(self.model)  # KeyError for an unknown model
        if entry.task not in ("topdown_pose", "bottomup_pose"):
            raise ValueError(
                f"{self.model}: only pose recipes are supported so far (task {entry.task!r})"
            )
        if (entry.task == "bottomup_pose") != (self.bottomup is not None):
            raise ValueError(
                f"{self.model}: a 'bottomup' section is needed exactly for "
                f"bottom-up models (task {entry.task!r})"
            )
        if self.warmup_style not in ("mmengine", "mmcv"):
            raise ValueError(
                f"warmup_style must be 'mmengine' or 'mmcv', got {self.warmup_style!r}"
            )
        if self.best_rule not in ("greater", "less"):
            raise ValueError(f"best_rule must be 'greater' or 'less', got {self.best_rule!r}")
        if self.batch_size < 1 or self.base_batch_size < 1 or self.max_epochs < 1:
            raise ValueError("batch_size, base_batch_size and max_epochs must be positive")
        if not self.lr > 0 or not 0 < self.warmup_factor <= 1:
            raise ValueError("lr must be positive and warmup_factor in (0, 1]")

    @property
    def entry(self):
        """The registry :class:`~training.registry.ModelEntry` of :attr:`model`."""
        return get_entry(self.model)


def _coco_recipe(name: str) -> TrainRecipe:
    """MMPose 1.x top-down COCO HRNet recipe: W48 configs use 8 x 32 (same lr 5e-4 for 512)."""
    per_gpu = 32 if "_8xb32-" in name else 64
    return TrainRecipe(
        model=name, batch_size=per_gpu, augment=AugmentConfig(upper_body_ids=COCO_UPPER_BODY)
    )


def _dlc_recipe(name: str) -> TrainRecipe:
    """The DeepLabCut open-field mouse example (README): 4 keypoints, a small HRNet trained from
    scratch on a 2-core CPU. Faster warm-up and a larger LR than COCO's (a 16-image global batch
    from scratch), milder rotation (top view: any heading is plausible, but 80 degrees on tiny
    data slows convergence), no half-body (4 keypoints)."""
    return TrainRecipe(
        model=name,
        lr=2e-3,
        base_batch_size=16,
        batch_size=16,
        warmup_iters=50,
        milestones=(40, 55),
        max_epochs=60,
        val_interval=5,
        checkpoint_interval=5,
        best_metric="EPE",
        best_rule="less",
        augment=AugmentConfig(
            half_body_prob=0.0, rotate_factor=45.0, rotate_prob=0.6, scale_factor=(0.75, 1.25)
        ),
        data=DataLayout(
            train_ann="annotations/train.json",
            train_images="images",
            val_ann="annotations/test.json",
            val_images="images",
        ),
        num_workers=1,
    )


#: AI Challenger training split in MMPose's layout (``data/aic/`` of the COCO-AIC configs).
AIC_TRAIN = DataSource(
    ann="aic/annotations/aic_train.json",
    images="aic/ai_challenger_keypoint_train_20170902/keypoint_train_images_20170902",
    dataset="aic",
)


def _coco_aic_recipe(name: str) -> TrainRecipe:
    """MMPose 1.x ``td-hm_hrnet-w32_8xb64-210e_coco-aic-256x192-{merge,combine}.py``: the COCO
    recipe on COCO train2017 + AIC train combined (``CombinedDataset``, COCO first). Merge: AIC
    mapped onto COCO's 17 (``AIC_TO_COCO``), 17-channel head. Combine: both mapped onto the 19
    COCO-AIC keypoints (``COCO_TO_COCO_AIC``, ``AIC_TO_COCO_AIC``), 19-channel head, upper body
    including head_top and neck; validation on COCO val2017 (the combine card reports the 17
    COCO keypoints through ``output_keypoint_indices``). ``--data-root`` holds MMPose's
    ``data/coco`` and ``data/aic`` side by side as ``coco/`` and ``aic/``."""
    combine = name.endswith("-combine")
    coco = DataSource(
        ann="coco/annotations/person_keypoints_train2017.json",
        images="coco/train2017",
        mapping="coco_to_coco_aic" if combine else None,
    )
    aic = replace(AIC_TRAIN, mapping="aic_to_coco_aic" if combine else "aic_to_coco")
    return TrainRecipe(
        model=name,
        batch_size=64,
        augment=AugmentConfig(upper_body_ids=COCO_AIC_UPPER_BODY if combine else COCO_UPPER_BODY),
        data=DataLayout(
            train_ann="",
            train_images="",
            val_ann="coco/annotations/person_keypoints_val2017.json",
            val_images="coco/val2017",
            sources=(coco, aic),
        ),
    )


#: ``--data-root`` layouts of the animal datasets (MMPose 0.x configs' ``data/<name>/``).
_ANIMAL_LAYOUTS = {
    "macaque": DataLayout(
        "annotations/macaque_train.json", "images", "annotations/macaque_test.json", "images"
    ),
    "atrw": DataLayout(
        "annotations/keypoint_train.json",
        "images/train",
        "annotations/keypoint_val.json",
        "images/val",
    ),
}


def _animal_recipe(name: str) -> TrainRecipe:
    """MMPose 0.x ``configs/animal/2d_kpt_sview_rgb_img/topdown_heatmap/{horse10,macaque,atrw}``
    HRNet configs: Adam 5e-4, linear warm-up 500 iterations from 0.001, steps at epochs 170 and
    200, 210 epochs, 64 images per GPU (W48: 32), sigma 2, flip 0.5, box shift 0.16 with p0.3
    (ATRW: 0.2), scale 0.5-1.5, rotation with p0.6; half-body (p0.3, more than 8 visible
    keypoints) for MacaquePose and ATRW, none for Horse-10; box padding 1.25 (ATRW 1.0).
    Validation every 10 epochs: Horse-10 PCK@0.3 (best ``PCK``), the others COCO-style AP
    (best ``AP``). The 0.x random steps are expressed as MMPose 1.x's ``RandomFlip`` /
    ``RandomHalfBody`` / ``RandomBBoxTransform`` (the translation MMPose 1.x itself made of the
    same 0.x animal pipeline, e.g. ``ap10k/td-hm_hrnet-w32_8xb64-210e_ap10k-256x256.py``:
    rotation ``truncnorm x 80`` for 0.x's ``clip(N(0, 40), -80, 80)``), and the box jitter
    distributions are 1.x's. The 0.x configs set no ``auto_scale_lr`` and do not say how many
    GPUs trained them: the base batch assumes 8 (as every 1.x HRNet config), i.e. 8 x the
    config's per-GPU batch (512 for W32, 256 for W48) gets the configs' lr 5e-4."""
    e = get_entry(name)
    per_gpu = 32 if e.arch == "hrnet_w48" else 64
    if e.dataset == "horse10":
        m = re.search(r"split(\d)$", name)
        if m is None:
            raise ValueError(f"{name}: a Horse-10 recipe name ends with splitN")
        split = m.group(1)
        data = DataLayout(
            f"annotations/horse10-train-split{split}.json",
            ".",
            f"annotations/horse10-test-split{split}.json",
            ".",
        )
        augment = AugmentConfig(half_body_prob=0.0)
        best = "PCK"
    else:
        data = _ANIMAL_LAYOUTS[e.dataset]
        upper = ATRW_UPPER_BODY if e.dataset == "atrw" else COCO_UPPER_BODY
        augment = AugmentConfig(
            upper_body_ids=upper, shift_factor=0.2 if e.dataset == "atrw" else 0.16
        )
        best = "AP"
    return TrainRecipe(
        model=name,
        batch_size=per_gpu,
        base_batch_size=8 * per_gpu,
        best_metric=best,
        bbox_padding=e.bbox_padding,
        augment=augment,
        data=data,
    )


def _variant_recipe(name: str, variant: str) -> TrainRecipe:
    """MMPose 1.x ``td-hm_hrnet-w32_<variant>-8xb64-210e_coco-256x192`` (seed 000): the COCO
    recipe plus one pixel variant after ``TopdownAffine`` (:data:`training.augment.PIXEL_VARIANTS`:
    ``coarsedropout``, ``gridmask``, ``photometric``)."""
    base = _coco_recipe(name)
    return replace(base, augment=replace(base.augment, pixel_variants=(variant,)))


_VARIANT_NAME = re.compile(
    r"^td-hm_hrnet-w32_(coarsedropout|gridmask|photometric)"
    r"-8xb64-210e_coco-256x192$"
)


def _bottomup_recipe(name: str) -> TrainRecipe:
    """MMPose 0.x ``higherhrnet_w{32,48}_coco_{512,640}.py``: Adam 1.5e-3 for 8 GPUs x 24 images
    (W32 512; the W32 640 and W48 512 configs: 8 x 16, the same lr),
    MMCV linear warm-up over 500 iterations from 0.001, x0.1 at epochs 200 and 260, 300 epochs,
    validation and checkpoints every 50 epochs, best by AP; BottomUpRandomAffine (rotation 30,
    scale 0.75-1.5, 'short', translation 40), flip 0.5, sigma 2, 30 people, heatmap loss 1.0 per
    stage, push/pull 0.001 where the stage has tags."""
    per_gpu = 24 if name == "higher_hrnet32_coco_512x512" else 16
    return TrainRecipe(
        model=name,
        lr=1.5e-3,
        base_batch_size=8 * per_gpu,
        batch_size=per_gpu,
        warmup_iters=500,
        warmup_factor=0.001,
        milestones=(200, 260),
        max_epochs=300,
        val_interval=50,
        checkpoint_interval=50,
        best_metric="AP",
        best_rule="greater",
        warmup_style="mmcv",
        bottomup=BottomUpTrainConfig(),
    )


def _build_table() -> dict[str, TrainRecipe]:
    table: dict[str, TrainRecipe] = {}
    for e in list_entries(task="bottomup_pose"):
        table[e.name] = _bottomup_recipe(e.name)
    for e in list_entries(task="topdown_pose"):
        variant = _VARIANT_NAME.match(e.name)
        if variant:
            table[e.name] = _variant_recipe(e.name, variant.group(1))
        elif (
            e.dataset == "coco"
            and e.upstream == "mmpose-1.x"
            and re.search(r"_(8xb64|8xb32)-210e_coco-(256x192|384x288)$", e.name)
        ):
            table[e.name] = _coco_recipe(e.name)
        elif re.search(r"_8xb64-210e_coco-aic-256x192-(merge|combine)$", e.name):
            table[e.name] = _coco_aic_recipe(e.name)
        elif e.dataset in ("horse10", "macaque", "atrw"):
            table[e.name] = _animal_recipe(e.name)
        elif e.dataset == "dlc_openfield":
            table[e.name] = _dlc_recipe(e.name)
    return table


#: Registry name -> recipe: top-down COCO MMPose 1.x rows (with the seed-000 augmentation
#: variants), COCO-AIC rows, the MMPose 0.x animal rows, the DLC example, and the MMSeg
#: segmentation rows (:mod:`training.seg_recipes`).
RECIPES: Mapping[str, TrainRecipe | SegTrainRecipe] = {**_build_table(), **seg_recipes()}


def _read_mapping(path: Path) -> dict[str, Any]:
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".toml":
        return tomllib.loads(text)
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml  # optional: only recipe files need it

        data = yaml.safe_load(text)
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a recipe file must hold a mapping")
        return data
    raise ValueError(f"{path}: recipe files are .toml, .yaml or .yml")


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def _sub(cls, data: Any, where: str):
    if not isinstance(data, Mapping):
        raise ValueError(f"{where} must be a table/mapping")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {where} keys: {', '.join(unknown)}")
    return {k: _tuples(v) for k, v in data.items()}


def load_recipe_file(path: str | Path) -> TrainRecipe | SegTrainRecipe:
    """A :class:`TrainRecipe` (or, for a segmentation model, a
    :class:`~training.seg_recipes.SegTrainRecipe`) from a TOML/YAML file: ``model`` (registry
    name) is required; other top-level keys override the fields of the model's built-in recipe
    (or the defaults when it has none); ``[augment]`` and ``[data]`` override
    :class:`AugmentConfig` (:class:`~training.seg_transforms.SegAugmentConfig`) /
    :class:`DataLayout` fields (``[data]``: top-down only). Lists become tuples.

    Raises ``ValueError`` for a bad file or unknown keys, ``KeyError`` for an unknown model,
    ``FileNotFoundError`` for a missing file.
    """
    path = Path(path)
    raw = _read_mapping(path)
    if "model" not in raw:
        raise ValueError(f"{path}: recipe needs a 'model' (registry name)")
    base = RECIPES.get(raw["model"])
    if base is None:
        seg = get_entry(raw["model"]).task == "segmentation"
        base = (SegTrainRecipe if seg else TrainRecipe)(model=raw["model"])
    top = _sub(
        type(base),
        {k: v for k, v in raw.items() if k not in ("augment", "data", "bottomup")},
        "recipe",
    )
    if isinstance(base, SegTrainRecipe):  # [data] tables of SegSplit fields: not overridable
        if "data" in raw or "bottomup" in raw:
            raise ValueError(
                f"{path}: segmentation recipes take their layout from the dataset "
                "(MMSeg layout); [data] and [bottomup] are for pose recipes"
            )
        seg_augment = replace(
            base.augment, **_sub(SegAugmentConfig, raw.get("augment", {}), "[augment]")
        )
        return replace(base, **top, augment=seg_augment)
    augment = replace(base.augment, **_sub(AugmentConfig, raw.get("augment", {}), "[augment]"))
    data_kw = _sub(DataLayout, raw.get("data", {}), "[data]")
    if "sources" in data_kw:  # [[data.sources]] tables
        data_kw["sources"] = tuple(
            DataSource(**_sub(DataSource, src, "[[data.sources]]")) for src in data_kw["sources"]
        )
    data = replace(base.data, **data_kw)
    extra: dict[str, BottomUpTrainConfig] = {}
    if "bottomup" in raw:
        bu = _sub(BottomUpTrainConfig, raw["bottomup"], "[bottomup]")
        base_bu = base.bottomup or BottomUpTrainConfig()
        aug = replace(
            base_bu.augment, **_sub(BottomUpAugment, bu.pop("augment", {}), "[bottomup.augment]")
        )
        extra["bottomup"] = replace(base_bu, **bu, augment=aug)
    return replace(base, **top, augment=augment, data=data, **extra)  # type: ignore[arg-type]


def get_recipe(name_or_path: str | Path) -> TrainRecipe | SegTrainRecipe:
    """The recipe of registry model ``name_or_path``, or one loaded from a ``.toml``/``.yaml``
    file. Raises ``KeyError`` naming the models that have recipes when neither applies."""
    p = Path(str(name_or_path))
    if p.suffix.lower() in (".toml", ".yaml", ".yml"):
        return load_recipe_file(p)
    try:
        return RECIPES[str(name_or_path)]
    except KeyError:
        raise KeyError(
            f"no training recipe for {name_or_path!r}; recipes exist for: "
            f"{', '.join(sorted(RECIPES))}"
        ) from None
