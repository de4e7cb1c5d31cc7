"""hrnet-train for bottom-up HigherHRNet on real data at reduced size: the recipe is MMPose 0.x's,
the loss falls when fitting one batch, the checkpoint (MMPose 0.x layout) reloads strictly and
exports, resume is bit-exact, validation goes through the gateway's bottom-up path."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.train_fixtures import quick_options
from training import checkpoint as ckpt
from training.bottomup_transforms import BottomUpAugment
from training.optim import WarmupMultiStep
from training.recipes import BottomUpTrainConfig, get_recipe, load_recipe_file
from training.trainer import Trainer

NAME = "higher_hrnet32_coco_512x512"


def test_recipe_follows_mmpose_0x_config():
    r = get_recipe(NAME)
    assert (r.lr, r.base_batch_size, r.batch_size) == (1.5e-3, 192, 24)
    assert (r.warmup_iters, r.warmup_factor, r.warmup_style) == (500, 0.001, "mmcv")
    assert (r.milestones, r.gamma, r.max_epochs) == ((200, 260), 0.1, 300)
    assert (r.val_interval, r.checkpoint_interval, r.best_metric) == (50, 50, "AP")
    bu = r.bottomup
    assert (bu.input_size, bu.sigma, bu.max_num_people, bu.ae_loss_type) == (None, 2.0, 30, "exp")
    assert bu.heatmaps_loss_factor == (1.0, 1.0) and bu.push_loss_factor == (0.001, 0.001)
    assert bu.augment == BottomUpAugment(30.0, (0.75, 1.5), "short", 40.0, 0.5)
    # MMCV linear warm-up: 0.001 + 0.999 * t / 500 (MMEngine's LinearLR divides by 499)
    f = WarmupMultiStep(100, 500, 0.001, (200, 260), 0.1, style="mmcv")
    assert f(0) == pytest.approx(0.001) and f(250) == pytest.approx(0.5005) and f(500) == 1.0
    assert f(200 * 100) == pytest.approx(0.1) and f(260 * 100) == pytest.approx(0.01)
    assert WarmupMultiStep(100, 500, 0.001, (), 0.1)(499) == 1.0
    with pytest.raises(ValueError, match="style"):
        WarmupMultiStep(100, 500, 0.001, (), 0.1, style="linear")
    with pytest.raises(ValueError):
        dataclasses.replace(r, bottomup=None)
    # the W32 640 and W48 512 configs: samples_per_gpu 16, the same lr 1.5e-3
    for other in ("higher_hrnet32_coco_640x640", "higher_hrnet48_coco_512x512"):
        o = get_recipe(other)
        assert (o.lr, o.base_batch_size, o.batch_size, o.max_epochs) == (1.5e-3, 128, 16, 300)


def test_recipe_file_bottomup_table(tmp_path):
    p = tmp_path / "r.toml"
    p.write_text(
        f'model = "{NAME}"\nbatch_size = 2\n[bottomup]\ninput_size = 128\n'
        "push_loss_factor = [0.01, 0.0]\n[bottomup.augment]\nrot_factor = 10.0\n"
    )
    r = load_recipe_file(p)
    assert r.batch_size == 2 and r.lr == 1.5e-3
    assert r.bottomup.input_size == 128 and r.bottomup.push_loss_factor == (0.01, 0.0)
    assert r.bottomup.augment.rot_factor == 10.0 and r.bottomup.augment.trans_factor == 40.0
    p.write_text(f'model = "{NAME}"\n[bottomup]\nsize = 1\n')
    with pytest.raises(ValueError, match="bottomup"):
        load_recipe_file(p)


@pytest.fixture(scope="module")
def mini_bottomup(shared, tmp_path_factory) -> Path:
    """Two coco_mini images with several people each, as train and val splits."""
    src = shared / "data" / "coco_mini"
    coco = json.loads((src / "annotations/person_keypoints_train2017.json").read_text())
    per_image: dict = {}
    for a in coco["annotations"]:
        if not a.get("iscrowd") and a.get("num_keypoints", 0) >= 8:
            per_image[a["image_id"]] = per_image.get(a["image_id"], 0) + 1
    ids = sorted(per_image, key=lambda i: (-per_image[i], i))[:2]
    sub = {
        "images": [im for im in coco["images"] if im["id"] in ids],
        "annotations": [a for a in coco["annotations"] if a["image_id"] in ids],
        "categories": coco["categories"],
    }
    out = tmp_path_factory.mktemp("bu")
    (out / "annotations").mkdir()
    for split in ("train2017", "val2017"):
        (out / "annotations" / f"person_keypoints_{split}.json").write_text(json.dumps(sub))
        (out / split).mkdir()
        for im in sub["images"]:
            shutil.copy(src / "train2017" / im["file_name"], out / split / im["file_name"])
    return out


def _recipe(size: int, **kw):
    r = get_recipe(NAME)
    base = dict(
        base_batch_size=2,
        batch_size=2,
        warmup_iters=1,
        num_workers=0,
        val_interval=1000,
        checkpoint_interval=1000,
        bottomup=dataclasses.replace(r.bottomup, input_size=size),
    )
    base.update(kw)
    return dataclasses.replace(r, **base)


def test_fit_one_batch_checkpoint_reload_validate_export(mini_bottomup, tmp_path):
    torch.set_num_threads(1)
    # one batch of 2 images, 14 Adam steps at lr 1.5e-3 from scratch: measured 0.0403 -> 0.0258
    # (a spike to 0.24 at step 3, then down from step 9)
    opts = quick_options(
        mini_bottomup, tmp_path / "w", max_iters=14, batch_size=2, augment=False, shuffle=False
    )
    tr = Trainer(_recipe(128), opts)
    assert tr.card.bottomup.input_size == 128 and tr.iters_per_epoch == 1
    hist = tr.fit()
    losses = [h["loss"] for h in hist]
    assert len(losses) == 14 and all(loss > 0 for loss in losses)
    assert losses[-1] < 0.75 * losses[0], losses
    raw = ckpt.read_checkpoint(tmp_path / "w" / "epoch_14.pth")
    keys = set(raw["state_dict"])
    assert {k.split(".", 1)[0] for k in keys} == {"backbone", "keypoint_head"}  # MMPose 0.x
    assert "keypoint_head.final_layers.0.weight" in keys
    assert raw["state_dict"]["keypoint_head.final_layers.0.weight"].shape[0] == 34
    from training.models import create_model

    m = create_model(NAME, checkpoint=tmp_path / "w" / "epoch_14.pth")  # strict
    sd = ckpt.to_layout(m.state_dict(), "mmpose0")
    assert all(torch.equal(sd[k], raw["state_dict"][k]) for k in keys)
    # validation ran at the end through the gateway's bottom-up path (val = train images)
    val = (tmp_path / "w" / "val.csv").read_text().splitlines()
    assert val[0].split(",")[:2] == ["epoch", "iter"] and "AP" in val[0].split(",")
    assert tr.best["metric"] == "AP" and (tmp_path / "w" / tr.best["file"]).is_file()
    from export.cli import main as export_main

    assert (
        export_main(
            [
                "--arch",
                NAME,
                "--checkpoint",
                str(tmp_path / "w" / "epoch_14.pth"),
                "--name",
                "bu_small",
                "--model-repository",
                str(tmp_path / "repo"),
                "--check-size",
                "128x192",
            ]
        )
        == 0
    )
    assert (tmp_path / "repo" / "bu_small" / "1" / "model.onnx").is_file()


def test_resume_is_bit_exact(mini_bottomup, tmp_path):
    torch.set_num_threads(1)
    recipe = _recipe(64)
    full = Trainer(
        recipe, quick_options(mini_bottomup, tmp_path / "full", max_iters=4, batch_size=1)
    ).fit()
    Trainer(recipe, quick_options(mini_bottomup, tmp_path / "cut", max_iters=3, batch_size=1)).fit()
    opts = quick_options(mini_bottomup, tmp_path / "cut", max_iters=4, batch_size=1)
    opts.resume = True
    second = Trainer(recipe, opts)
    assert second.iter == 3
    part2 = second.fit()
    rows = (tmp_path / "cut" / "log.csv").read_text().splitlines()[1:]
    assert [float(r.split(",")[2]) for r in rows] == pytest.approx(
        [float(f"{h['loss']:.9g}") for h in full], rel=0, abs=0
    )
    assert part2[-1]["loss"] == full[-1]["loss"]
    a = ckpt.read_checkpoint(tmp_path / "full" / "epoch_2.pth")["state_dict"]
    b = ckpt.read_checkpoint(tmp_path / "cut" / "epoch_2.pth")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_torchrun_two_ranks_bottomup_gradients_equal_doubled_batch(tmp_path):
    """DDP over gloo: each rank's batch-mean heatmap + AE loss, gradients averaged over the two
    ranks, equal one process's gradients on the 4 images (BN frozen, as ``test_train_ddp``)."""
    from tests.ddp_grad_worker import fixed_bottomup_batch, grads, small_model, split
    from tests.support.torchrun import REPO, run_torchrun
    from training.ae_loss import BottomUpLoss

    out = tmp_path / "grads.pt"
    run_torchrun(REPO / "tests" / "ddp_grad_worker.py", str(out), "bottomup", cwd=tmp_path)
    ddp = torch.load(out, weights_only=True)
    torch.set_num_threads(1)
    batch = fixed_bottomup_batch()
    single = grads(small_model("bottomup_pose"), batch, BottomUpLoss(4))
    assert ddp.keys() == single.keys() and len(single) > 100
    worst = max(
        float((ddp[k] - single[k]).abs().max() / (single[k].abs().max() + 1e-12)) for k in single
    )
    assert worst < 1e-4, worst
    half = grads(small_model("bottomup_pose"), split(batch, 0, 2), BottomUpLoss(4))
    k = "head.final_layers.0.weight"
    assert float((half[k] - single[k]).abs().max()) > 1e-3 * float(single[k].abs().max())
