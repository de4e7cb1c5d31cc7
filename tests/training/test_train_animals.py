"""Seed 001 (Horse-10, MacaquePose, ATRW) recipes: values of the MMPose 0.x configs, and a few
training iterations on each real mmpose_tests sample set with validation by the dataset's
metric (Horse-10 PCK/NME, the others COCO-style AP), strict reload and export."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.train_fixtures import quick_options, small_entry, small_rows
from training.recipes import RECIPES, DataLayout, get_recipe
from training.trainer import Trainer

pytestmark = pytest.mark.usefixtures("small_rows")

#: registry row -> (test-size row, sample folder, best metric, input size (w, h))
ANIMALS = {
    "hrnet_w32_horse10_256x256-split1": (
        "test-hrnet_w18-small_horse10_64x64",
        "horse10",
        "PCK",
        (256, 256),
    ),
    "hrnet_w32_macaque_256x192": (
        "test-hrnet_w18-small_macaque_96x64",
        "macaque",
        "AP",
        (192, 256),
    ),
    "hrnet_w32_atrw_256x256": ("test-hrnet_w18-small_atrw_64x64", "atrw", "AP", (256, 256)),
}


def test_animal_recipes_follow_the_mmpose_0x_configs():
    names = [n for n in RECIPES if any(d in n for d in ("horse10", "macaque", "atrw"))]
    assert len(names) == 10  # Horse-10 W32/W48 x 3 splits, MacaquePose and ATRW W32/W48
    for name in names:
        r = get_recipe(name)
        e = r.entry
        assert (r.lr, r.warmup_iters, r.warmup_factor, r.milestones, r.gamma, r.max_epochs) == (
            5e-4,
            500,
            0.001,
            (170, 200),
            0.1,
            210,
        )
        assert r.batch_size == (32 if "w48" in name else 64) and e.sigma == 2.0
        assert r.val_interval == 10 and r.augment.flip_prob == 0.5
        assert (r.augment.shift_prob, r.augment.scale_factor, r.augment.rotate_prob) == (
            0.3,
            (0.5, 1.5),
            0.6,
        )
    h = get_recipe("hrnet_w48_horse10_256x256-split3")
    assert h.augment.half_body_prob == 0.0 and h.best_metric == "PCK"
    assert (h.data.train_ann, h.data.val_ann) == (
        "annotations/horse10-train-split3.json",
        "annotations/horse10-test-split3.json",
    )
    assert h.entry.input_size == (256, 256) and h.entry.num_outputs == 22
    m = get_recipe("hrnet_w32_macaque_256x192")
    assert m.entry.input_size == (192, 256) and m.best_metric == "AP"
    assert m.augment.half_body_prob == 0.3 and m.augment.upper_body_ids == tuple(range(11))
    assert (m.data.train_ann, m.data.train_images) == ("annotations/macaque_train.json", "images")
    a = get_recipe("hrnet_w32_atrw_256x256")
    assert (a.bbox_padding, a.augment.shift_factor) == (1.0, 0.2)
    assert a.augment.upper_body_ids == tuple(range(7)) and a.entry.num_outputs == 15
    assert (a.data.train_images, a.data.val_images) == ("images/train", "images/val")


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ANIMALS))
def test_train_on_the_real_samples_validate_reload_export(shared, tmp_path, name):
    torch.set_num_threads(2)
    small, folder, metric, _ = ANIMALS[name]
    entry = small_entry(small)
    root = shared / "data" / "mmpose_tests" / folder
    ann = f"test_{folder}.json"
    recipe = replace(
        RECIPES[name],
        model=small,
        data=DataLayout(train_ann=ann, train_images=".", val_ann=ann, val_images="."),
    )
    work = tmp_path / "work"
    tr = Trainer(recipe, quick_options(root, work, max_iters=2, batch_size=2))
    n = len(json.loads((root / ann).read_text())["annotations"])
    assert len(tr.dataset) == n and tr.dataset.padding == entry.bbox_padding
    hist = tr.fit()
    assert len(hist) == 2 and all(np.isfinite(r["loss"]) and r["loss"] > 0 for r in hist)
    header, row = (work / "val.csv").read_text().splitlines()[:2]
    val = dict(zip(header.split(","), map(float, row.split(",")[0:])))
    assert 0 <= val[metric] <= 1
    if folder == "horse10":
        assert val["NME"] > 0
    assert tr.best["metric"] == metric and (work / tr.best["file"]).is_file()
    ck = work / (work / "last_checkpoint").read_text().strip()
    from training.models import create_model

    create_model(small, checkpoint=ck)  # strict
    from export.cli import main as export_main

    repo = tmp_path / "repo"
    assert (
        export_main(
            [
                "--arch",
                small,
                "--checkpoint",
                str(ck),
                "--name",
                f"{folder}_small",
                "--model-repository",
                str(repo),
            ]
        )
        == 0
    )
    card = json.loads(next(Path(repo).rglob("card.json")).read_text())
    assert card["dataset"] == folder and card["bbox_padding"] == entry.bbox_padding
