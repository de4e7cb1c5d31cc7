"""hrnet-train building blocks with hand-derived numbers: targets, loss, LR schedule, pipeline
geometry, sampler, recipes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from service.codecs import MSRAHeatmap, UDPHeatmap
from training.losses import KeypointMSELoss
from training.optim import WarmupMultiStep, scaled_lr
from training.recipes import RECIPES, get_recipe, load_recipe_file
from training.trainer import ShardedShuffle
from training.transforms import AugmentConfig, Instance, random_flip, topdown_affine, truncnorm


def _gauss(w, h, cx, cy, sigma, x0, x1, y0, y1):
    """exp(-((x-cx)^2+(y-cy)^2)/(2 sigma^2)) on [x0, x1) x [y0, y1), 0 elsewhere."""
    out = np.zeros((h, w))
    for y in range(max(y0, 0), min(y1, h)):
        for x in range(max(x0, 0), min(x1, w)):
            out[y, x] = math.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma**2))
    return out


def test_msra_target_is_the_hand_gaussian():
    # input 64x64 -> heatmap 16x16 (factor 4); keypoint (20.4, 31.0) -> heatmap (5.1, 7.75);
    # MSRA centres on mu = int(kp + 0.5) = (5, 8), window [mu - 6, mu + 7) for sigma 2
    codec = MSRAHeatmap((64, 64), (16, 16), sigma=2.0)
    kp = np.array([[[20.4, 31.0], [10.0, 10.0], [200.0, 8.0]]])
    vis = np.array([[1.0, 0.0, 1.0]])
    t = codec.encode(kp, vis)
    want0 = _gauss(16, 16, 5, 8, 2.0, -1, 12, 2, 15)
    np.testing.assert_allclose(t["heatmaps"][0], want0, rtol=0, atol=1e-7)
    assert t["heatmaps"][0].max() == 1.0 and t["heatmaps"][0][8, 5] == 1.0
    np.testing.assert_array_equal(t["heatmaps"][1:], 0)  # invisible; off the map
    np.testing.assert_array_equal(t["keypoint_weights"], [[1.0, 0.0, 0.0]])
    assert t["heatmaps"].dtype == np.float32 and t["heatmaps"].shape == (3, 16, 16)


def test_udp_target_is_centred_on_the_subpixel():
    # UDP: heatmap = input * (16 - 1) / (64 - 1); (21.0, 42.0) -> (5.0, 10.0) exactly, then
    # (21.84, 42.0) -> (5.2, 10.0): the Gaussian moves, the window stays at mu = (5, 10)
    codec = UDPHeatmap((64, 64), (16, 16), sigma=2.0)
    t = codec.encode(np.array([[[21.84, 42.0]]]))
    cx = 21.84 * 15 / 63
    np.testing.assert_allclose(
        t["heatmaps"][0], _gauss(16, 16, cx, 10.0, 2.0, -1, 12, 4, 17), rtol=0, atol=1e-6
    )


def test_keypoint_mse_loss_hand_case():
    pred = torch.zeros(1, 2, 2, 2)
    target = torch.tensor([[[[1.0, 0.0], [0.0, 2.0]], [[3.0, 3.0], [3.0, 3.0]]]])
    w = torch.tensor([[1.0, 0.0]])
    # channel 0: (1 + 4) squared errors, channel 1 weighted out; mean over 8 elements
    assert KeypointMSELoss()(pred, target, w).item() == pytest.approx(5.0 / 8.0)
    # weights multiply the squared error (MMPose 1.x), not the difference
    w2 = torch.tensor([[0.5, 0.0]])
    assert KeypointMSELoss()(pred, target, w2).item() == pytest.approx(2.5 / 8.0)
    assert KeypointMSELoss(use_target_weight=False)(pred, target, w).item() == pytest.approx(
        (5.0 + 36.0) / 8.0
    )
    with pytest.raises(ValueError):
        KeypointMSELoss()(pred, target, torch.ones(1, 3))


def test_lr_schedule_matches_mmengine_closed_form():
    f = WarmupMultiStep(
        iters_per_epoch=100, warmup_iters=500, warmup_factor=0.001, milestones=(170, 200), gamma=0.1
    )
    assert f(0) == pytest.approx(0.001)
    # MMEngine LinearLR: total_iters = end - begin - 1 = 499
    assert f(250) == pytest.approx(0.001 + 0.999 * 250 / 499)
    assert f(499) == pytest.approx(1.0) and f(10_000) == pytest.approx(1.0)
    assert f(170 * 100 - 1) == pytest.approx(1.0)
    assert f(170 * 100) == pytest.approx(0.1)
    assert f(200 * 100) == pytest.approx(0.01)
    assert scaled_lr(5e-4, 64, 512) == pytest.approx(6.25e-5)


def test_affine_without_augmentation_maps_the_box_center_to_the_crop_center():
    img = np.zeros((100, 200, 3), np.uint8)
    inst = Instance(
        image=img,
        keypoints=np.array([[120.0, 40.0], [100.0, 50.0]], np.float32),
        visible=np.ones(2, np.float32),
        center=np.array([100.0, 50.0], np.float32),
        scale=np.array([60.0, 40.0], np.float32),
    )
    topdown_affine(inst, (48, 64))
    # aspect fixed to 48/64: (60, 80); zoom 48/60 = 0.8
    np.testing.assert_allclose(inst.scale, [60.0, 80.0])
    np.testing.assert_allclose(inst.keypoints[1], [24.0, 32.0], atol=1e-4)
    np.testing.assert_allclose(inst.keypoints[0], [24.0 + 20 * 0.8, 32.0 - 10 * 0.8], atol=1e-4)
    assert inst.image.shape == (64, 48, 3)


def test_flip_mirrors_keypoints_swaps_pairs_and_moves_the_center():
    img = np.arange(2 * 10 * 3, dtype=np.uint8).reshape(2, 10, 3)
    inst = Instance(
        image=img,
        keypoints=np.array([[1.0, 0.0], [2.0, 1.0], [7.0, 1.0]], np.float32),
        visible=np.array([1.0, 0.0, 1.0], np.float32),
        center=np.array([3.0, 1.0], np.float32),
        scale=np.ones(2, np.float32),
    )
    rng = np.random.default_rng(0)
    random_flip(inst, [0, 2, 1], prob=1.0, rng=rng)
    assert inst.flipped
    np.testing.assert_array_equal(inst.image, img[:, ::-1])
    # x -> 10 - 1 - x, then channels 1 and 2 swap (with their visibilities)
    np.testing.assert_allclose(inst.keypoints, [[8.0, 0.0], [2.0, 1.0], [7.0, 1.0]])
    np.testing.assert_array_equal(inst.visible, [1.0, 1.0, 0.0])
    np.testing.assert_allclose(inst.center, [6.0, 1.0])


def test_truncnorm_stays_in_unit_interval_with_unit_normal_shape():
    x = truncnorm(np.random.default_rng(1), 20000)
    assert np.abs(x).max() <= 1.0 and abs(x.mean()) < 0.02
    # variance of N(0,1) truncated to [-1, 1]: 1 - 2 phi(1) / (2 Phi(1) - 1) = 0.2911
    assert x.var() == pytest.approx(0.2911, abs=0.01)


def test_sharded_shuffle_splits_like_distributed_sampler():
    a, b = ShardedShuffle(5, 2, 0, seed=3), ShardedShuffle(5, 2, 1, seed=3)
    a.set_epoch(1), b.set_epoch(1)
    ia, ib = a.indices(), b.indices()
    assert len(ia) == len(ib) == 3
    assert sorted(set(ia + ib)) == list(range(5))
    a.set_epoch(1, skip=2)
    assert list(a) == ia[2:] and len(a) == 1


def test_recipes_follow_the_mmpose_coco_configs(tmp_path):
    r = RECIPES["td-hm_hrnet-w32_8xb64-210e_coco-256x192"]
    assert (
        r.lr,
        r.base_batch_size,
        r.batch_size,
        r.warmup_iters,
        r.warmup_factor,
        r.milestones,
        r.max_epochs,
    ) == (5e-4, 512, 64, 500, 0.001, (170, 200), 210)
    assert RECIPES["td-hm_hrnet-w48_8xb32-210e_coco-384x288"].batch_size == 32
    a = r.augment
    assert (
        a.shift_factor,
        a.shift_prob,
        a.scale_factor,
        a.rotate_factor,
        a.rotate_prob,
        a.flip_prob,
        a.upper_body_ids,
    ) == (0.16, 0.3, (0.5, 1.5), 80.0, 0.6, 0.5, tuple(range(11)))
    toml = tmp_path / "mine.toml"
    toml.write_text(
        'model = "td-hm_hrnet-w32_8xb64-210e_coco-256x192"\nmax_epochs = 3\n'
        "milestones = [2]\n[augment]\nrotate_factor = 10.0\n"
        '[data]\ntrain_images = "imgs"\n'
    )
    mine = get_recipe(toml)
    assert (
        mine.max_epochs,
        mine.milestones,
        mine.augment.rotate_factor,
        mine.batch_size,
        mine.data.train_images,
        mine.data.val_images,
    ) == (3, (2,), 10.0, 64, "imgs", "val2017")
    yml = tmp_path / "mine.yaml"
    yml.write_text("model: td-hm_hrnet-w18-small_dlc-openfield-128x128\nbatch_size: 4\n")
    assert load_recipe_file(yml).batch_size == 4 and load_recipe_file(yml).best_metric == "EPE"
    bad = tmp_path / "bad.toml"
    bad.write_text('model = "td-hm_hrnet-w32_8xb64-210e_coco-256x192"\nlearning_rate = 1\n')
    with pytest.raises(ValueError, match="learning_rate"):
        get_recipe(bad)
    with pytest.raises(KeyError):
        get_recipe("no-such-model")


def test_pixel_error_metrics_hand_case():
    from service.metrics import pixel_error_metrics

    pred = np.array([[[0.0, 0.0], [3.0, 4.0], [10.0, 10.0]]])
    gt = np.zeros((1, 3, 2))
    m = pixel_error_metrics(pred, gt, np.array([[1, 1, 0]]), np.array([[0.0, 0.0, 20.0, 10.0]]))
    # distances 0 and 5 px (the third keypoint is unlabelled); PCK threshold 0.2 * 20 = 4 px
    assert m["EPE"] == pytest.approx(2.5)
    assert m["RMSE"] == pytest.approx(math.sqrt(12.5))
    assert m["PCK@0.2"] == pytest.approx(0.5) and m["count"] == 2
