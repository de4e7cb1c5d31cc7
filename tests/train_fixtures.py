"""Helpers for the hrnet-train tests: small registry rows, data subsets, quick options."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import pytest

from training import registry
from training.registry import ModelEntry, get_entry, register

#: ``(name, dataset, K, (w, h))`` of the small test models (hrnet_w18_small, MSRA, sigma 2)
SMALL = {
    "test-td-hm_hrnet-w18-small_coco-96x64": ("coco", 17, (64, 96)),
    "test-td-hm_hrnet-w18-small_coco-128x96": ("coco", 17, (96, 128)),
    "test-td-hm_hrnet-w18-small_dlc-64x64": ("dlc_openfield", 4, (64, 64)),
    # COCO-AIC merge (17) and combine (19 predicted, COCO's 17 served) at test size
    "test-td-hm_hrnet-w18-small_coco-aic-merge-96x64": ("coco", 17, (64, 96)),
    "test-td-hm_hrnet-w18-small_coco-aic-combine-96x64": (
        "coco_aic",
        19,
        (64, 96),
        {"output_keypoint_indices": tuple(range(17))},
    ),
    # animal rows at test size (Horse-10 22, MacaquePose 17, ATRW 15 with box padding 1.0)
    "test-hrnet_w18-small_horse10_64x64": ("horse10", 22, (64, 64)),
    "test-hrnet_w18-small_macaque_96x64": ("macaque", 17, (64, 96)),
    "test-hrnet_w18-small_atrw_64x64": ("atrw", 15, (64, 64), {"bbox_padding": 1.0}),
}


def small_entry(name: str) -> ModelEntry:
    """Register (once) and return a small top-down row for tests: same structure as the real
    rows, input a multiple of 32, heatmaps input / 4."""
    try:
        return get_entry(name)
    except KeyError:
        pass
    dataset, k, (w, h), *extra = SMALL[name]
    return register(
        ModelEntry(
            name=name,
            task="topdown_pose",
            arch="hrnet_w18_small",
            dataset=dataset,
            num_outputs=k,
            config="",
            url="",
            input_size=(w, h),
            heatmap_size=(w // 4, h // 4),
            sigma=2.0,
            codec="MSRAHeatmap",
            **(extra[0] if extra else {}),
        )
    )


@pytest.fixture(scope="module")
def small_rows():
    """Module fixture: the small test rows are removed from the registry afterwards, so the
    registry's own tests see only the real rows."""
    yield
    for name in SMALL:
        registry._REGISTRY.pop(name, None)


def coco_subset(
    ann_file: Path,
    out_root: Path,
    images_dir: Path,
    n_people: int,
    min_keypoints: int = 12,
    split: str = "train2017",
) -> Path:
    """Write ``out_root/annotations/person_keypoints_{split}.json`` with the ``n_people``
    non-crowd annotations with the most labelled keypoints (ties: larger area first) and only
    their images; ``out_root/{split}`` links to ``images_dir``. Returns ``out_root``."""
    coco = json.loads(Path(ann_file).read_text())
    anns = [
        a
        for a in coco["annotations"]
        if not a.get("iscrowd") and a.get("num_keypoints", 0) >= min_keypoints
    ]
    anns.sort(key=lambda a: (-a["num_keypoints"], -a["area"], a["id"]))
    keep = anns[:n_people]
    ids = {a["image_id"] for a in keep}
    sub = {
        "images": [im for im in coco["images"] if im["id"] in ids],
        "annotations": keep,
        "categories": coco["categories"],
    }
    (out_root / "annotations").mkdir(parents=True, exist_ok=True)
    (out_root / "annotations" / f"person_keypoints_{split}.json").write_text(json.dumps(sub))
    link = out_root / split
    if not link.exists():
        link.symlink_to(Path(images_dir).resolve(), target_is_directory=True)
    return out_root


def quick_options(
    data_root: Path,
    work_dir: Path,
    *,
    max_iters: int,
    batch_size: int,
    seed: int = 0,
    augment: bool = True,
    shuffle: bool = True,
    val_interval: int | None = None,
):
    """``TrainOptions`` for in-process test runs: no workers, no progress bar."""
    from training.trainer import TrainOptions

    return TrainOptions(
        data_root=data_root,
        work_dir=work_dir,
        max_iters=max_iters,
        batch_size=batch_size,
        seed=seed,
        num_workers=0,
        progress=False,
        augment=augment,
        shuffle=shuffle,
        val_interval=val_interval,
    )


#: The tiny DeepLabCut registry row the training tests share (:func:`small_entry` registers it).
DLC_SMALL = "test-td-hm_hrnet-w18-small_dlc-64x64"


def tiny_dlc_recipe(**kw):
    """A 3-epoch recipe of :data:`DLC_SMALL` on a ``training.dlc.convert`` folder (train and
    test json under ``annotations/``, images under ``images``), half-body off; ``kw`` override
    any :class:`training.recipes.TrainRecipe` field."""
    from training.recipes import DataLayout, TrainRecipe
    from training.transforms import AugmentConfig

    small_entry(DLC_SMALL)
    base = dict(
        model=DLC_SMALL,
        lr=1e-3,
        base_batch_size=2,
        batch_size=2,
        warmup_iters=3,
        milestones=(1,),
        max_epochs=3,
        val_interval=100,
        checkpoint_interval=100,
        best_metric="EPE",
        best_rule="less",
        augment=AugmentConfig(half_body_prob=0.0),
        data=DataLayout(
            train_ann="annotations/train.json",
            train_images="images",
            val_ann="annotations/test.json",
            val_images="images",
        ),
    )
    base.update(kw)
    return TrainRecipe(**base)
