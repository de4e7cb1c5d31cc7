"""Seed 003 (COCO-AIC merge / combine) on real data at test size: the recipes' documented
``--data-root`` layout (``coco/`` + ``aic/``), AIC people's targets on the right COCO channels,
a few training iterations on COCO + AIC combined, COCO validation of the 19-keypoint head on
its 17 COCO keypoints, strict reload and export."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from export.cards import pose_card
from service.codecs import build_codec
from tests.train_fixtures import coco_subset, quick_options, small_entry, small_rows
from training.data import TopdownDataset, load_sources
from training.recipes import RECIPES, get_recipe
from training.trainer import Trainer

pytestmark = pytest.mark.usefixtures("small_rows")

MERGE = "td-hm_hrnet-w32_8xb64-210e_coco-aic-256x192-merge"
COMBINE = "td-hm_hrnet-w32_8xb64-210e_coco-aic-256x192-combine"
SMALL = {
    MERGE: "test-td-hm_hrnet-w18-small_coco-aic-merge-96x64",
    COMBINE: "test-td-hm_hrnet-w18-small_coco-aic-combine-96x64",
}
AIC_IMAGES = "aic/ai_challenger_keypoint_train_20170902/keypoint_train_images_20170902"


@pytest.fixture(scope="module")
def data_root(shared, tmp_path_factory) -> Path:
    """MMPose's ``data/`` folder in miniature: ``coco/`` with 3 coco_mini people for training and
    the mmpose_tests COCO file as val2017; ``aic/`` with the 9 real AIC sample people."""
    root = tmp_path_factory.mktemp("coco_aic")
    mini = shared / "data" / "coco_mini"
    coco_subset(
        mini / "annotations/person_keypoints_train2017.json",
        root / "coco",
        mini / "train2017",
        n_people=3,
    )
    tests = shared / "data" / "mmpose_tests"
    shutil.copy(
        tests / "coco/test_coco.json", root / "coco/annotations/person_keypoints_val2017.json"
    )
    (root / "coco/val2017").symlink_to(tests / "coco", target_is_directory=True)
    (root / "aic/annotations").mkdir(parents=True)
    shutil.copy(tests / "aic/test_aic.json", root / "aic/annotations/aic_train.json")
    (root / AIC_IMAGES).parent.mkdir(parents=True)
    (root / AIC_IMAGES).symlink_to(tests / "aic", target_is_directory=True)
    return root


def test_recipes_follow_the_coco_aic_configs():
    for name, k in ((MERGE, 17), (COMBINE, 19)):
        r = get_recipe(name)
        assert (r.lr, r.base_batch_size, r.batch_size, r.max_epochs, r.milestones) == (
            5e-4,
            512,
            64,
            210,
            (170, 200),
        )
        assert r.entry.num_outputs == k and r.entry.sigma == 2.0
        coco, aic = r.data.sources  # CombinedDataset(datasets=[dataset_coco, dataset_aic])
        assert coco.ann == "coco/annotations/person_keypoints_train2017.json"
        assert aic.ann == "aic/annotations/aic_train.json" and aic.images == AIC_IMAGES
        assert r.data.val_ann == "coco/annotations/person_keypoints_val2017.json"
    assert get_recipe(MERGE).data.sources[0].mapping is None
    assert get_recipe(MERGE).data.sources[1].mapping == "aic_to_coco"
    assert [s.mapping for s in get_recipe(COMBINE).data.sources] == [
        "coco_to_coco_aic",
        "aic_to_coco_aic",
    ]
    assert get_recipe(COMBINE).augment.upper_body_ids == tuple(range(11)) + (17, 18)


def _hand_heatmap_peak(x: float, y: float, bbox_xywh, input_wh, stride: int = 4):
    """Peak cell (col, row) of MSRA target for image point (x, y): box clipped as MMPose does
    (image 900x596 here, box inside), padding 1.25, aspect fixed by enlarging, no rotation."""
    bx, by, bw, bh = bbox_xywh
    cx, cy = bx + bw / 2, by + bh / 2
    sw, sh = bw * 1.25, bh * 1.25
    w, h = input_wh
    if sw > sh * w / h:
        sh = sw * h / w
    else:
        sw = sh * w / h
    px, py = (x - cx) * w / sw + w / 2, (y - cy) * h / sh + h / 2
    return int(px / stride + 0.5), int(py / stride + 0.5)


@pytest.mark.parametrize("name", [MERGE, COMBINE])
def test_aic_people_land_on_the_coco_channels(data_root, name):
    entry = small_entry(SMALL[name])
    recipe = RECIPES[name]
    k = entry.num_outputs
    records = load_sources(data_root, recipe.data.sources, k)
    assert len(records) == 3 + 9  # 3 COCO people, then the 9 AIC people (none filtered)
    card = pose_card(entry, entry.name)
    ds = TopdownDataset(records, build_codec(card.codec), card.normalization, card.flip_indices)
    i = next(j for j, r in enumerate(records) if r.ann_id == 8 and "aic" in str(r.path))
    s = ds[i]
    hm, w = s["heatmaps"].numpy(), s["weights"].numpy()
    assert hm.shape == (k, 24, 16)
    # AIC person 8: all 14 joints labelled; bbox [336, 26, 177, 254]
    bbox = (336, 26, 177, 254)
    expect = {6: (368, 142), 5: (487, 147), 10: (415, 271), 11: (449, 297)}  # AIC 0, 3, 2, 9
    if name == COMBINE:
        expect.update({17: (435, 43), 18: (430, 131)})  # head top, neck
    for ch, (x, y) in expect.items():
        row, col = np.unravel_index(np.argmax(hm[ch]), hm[ch].shape)
        assert (col, row) == _hand_heatmap_peak(x, y, bbox, (64, 96)), ch
        assert hm[ch].max() == pytest.approx(1.0) and w[ch] == 1
    assert _hand_heatmap_peak(368, 142, bbox, (64, 96)) == (4, 11)  # worked by hand
    # COCO's face keypoints have no AIC source: empty maps, weight 0
    assert not hm[:5].any() and not w[:5].any() and w[5:17].all()
    if name == COMBINE:
        coco = ds[0]  # a COCO person: head_top and neck unlabelled in COCO
        assert not coco["heatmaps"][17:].any() and not coco["weights"][17:].any()


@pytest.mark.slow
@pytest.mark.parametrize("name", [MERGE, COMBINE])
def test_train_on_coco_plus_aic_reload_strict_and_export(data_root, tmp_path, name):
    torch.set_num_threads(2)
    small = SMALL[name]
    entry = small_entry(small)
    recipe = replace(RECIPES[name], model=small)
    work = tmp_path / "work"
    tr = Trainer(recipe, quick_options(data_root, work, max_iters=3, batch_size=4))
    assert len(tr.dataset) == 12 and tr.iters_per_epoch == 3  # one epoch: every AIC person
    hist = tr.fit()
    assert len(hist) == 3 and all(np.isfinite(r["loss"]) and r["loss"] > 0 for r in hist)
    # validated on COCO (mmpose_tests' 12 valid people) with the 17 COCO keypoints
    header, row = (work / "val.csv").read_text().splitlines()[:2]
    val = dict(zip(header.split(","), row.split(",")))
    assert 0 <= float(val["AP"]) <= 1 and "AR" in val
    ck = work / "epoch_1.pth"
    from training import checkpoint as ckpt
    from training.models import create_model

    raw = ckpt.read_checkpoint(ck)
    assert raw["state_dict"]["head.final_layer.weight"].shape[0] == entry.num_outputs
    assert raw["meta"]["recipe"]["data"]["sources"][1]["mapping"] == (
        "aic_to_coco_aic" if name == COMBINE else "aic_to_coco"
    )
    m = create_model(small, checkpoint=ck)  # strict
    assert torch.equal(
        m.state_dict()["head.final_layer.bias"], raw["state_dict"]["head.final_layer.bias"]
    )
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
                "coco_aic_small",
                "--model-repository",
                str(repo),
            ]
        )
        == 0
    )
    card = json.loads(next(repo.rglob("card.json")).read_text())
    assert card["outputs"][0]["dims"][0] == entry.num_outputs
    assert card.get("output_keypoint_indices") == (list(range(17)) if name == COMBINE else None)


def test_recipe_file_sources_and_missing_mapping_errors(data_root, tmp_path):
    """A recipe file's ``[[data.sources]]`` (mapping by name or as pairs) reads the same
    instances as the built-in recipe; a 14-keypoint file without a mapping is refused."""
    from training.recipes import load_recipe_file

    f = tmp_path / "r.toml"
    f.write_text(f'''model = "{MERGE}"
[[data.sources]]
ann = "coco/annotations/person_keypoints_train2017.json"
images = "coco/train2017"
[[data.sources]]
ann = "aic/annotations/aic_train.json"
images = "{AIC_IMAGES}"
dataset = "aic"
mapping = [[0, 6], [1, 8], [2, 10], [3, 5], [4, 7], [5, 9], [6, 12], [7, 14], [8, 16],
           [9, 11], [10, 13], [11, 15]]
''')
    r = load_recipe_file(f)
    assert r.data.sources[1].mapping[0] == (0, 6)
    ours = load_sources(data_root, r.data.sources, 17)
    ref = load_sources(data_root, RECIPES[MERGE].data.sources, 17)
    assert len(ours) == len(ref) == 12
    assert all(
        np.array_equal(a.keypoints, b.keypoints) and np.array_equal(a.visible, b.visible)
        for a, b in zip(ours, ref)
    )
    bad = (replace(r.data.sources[1], mapping=None),)
    with pytest.raises(ValueError, match="annotations have 14 keypoints, the model predicts 17"):
        load_sources(data_root, bad, 17)
    with pytest.raises(ValueError, match="gives 19 keypoints, the model predicts 17"):
        load_sources(data_root, (replace(bad[0], mapping="aic_to_coco_aic"),), 17)
