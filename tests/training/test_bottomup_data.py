"""Bottom-up training data (training.bottomup_transforms / bottomup_data): hand-derived geometry of
BottomUpRandomAffine / BottomUpRandomFlip, COCO masks and record rules of MMPose 0.x
BottomUpCocoDataset, and the real coco_mini pipeline's consistency."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from export.paths import default_shared_dir
from service.codecs.associative_embedding_targets import AssociativeEmbeddingTargets
from training.bottomup_data import (
    BottomUpDataset,
    BottomUpRecord,
    ignore_mask,
    load_bottomup_records,
    stage_sizes,
)
from training.bottomup_transforms import (
    AffineDraw,
    BottomUpAugment,
    BottomUpSample,
    bottomup_scale,
    draw_affine,
    random_flip,
    warp_sample,
)
from training.data import sample_rng

SHARED = default_shared_dir()
COCO_MINI = SHARED / "data" / "coco_mini"
FLIP = [0, 2, 1]


class _Norm:
    mean = (0.0, 0.0, 0.0)
    std = (1.0, 1.0, 1.0)
    channel_order = "rgb"


def test_scale_short_and_long():
    # 640x480 region into a square: w/ow = 5 > h/oh = 3.75
    np.testing.assert_array_equal(bottomup_scale((640, 480), (128, 128), "short"), [480, 480])
    np.testing.assert_array_equal(bottomup_scale((640, 480), (128, 128), "long"), [640, 640])
    np.testing.assert_array_equal(bottomup_scale((300, 600), (64, 64), "short"), [300, 300])
    with pytest.raises(ValueError):
        bottomup_scale((1, 1), (1, 1), "mid")


def _sample(w=64, h=32):
    img = np.zeros((h, w, 3), np.uint8)
    img[:, 40:] = 200
    mask = np.ones((h, w), bool)
    mask[:, :24] = False  # ignore the left part
    joints = np.array([[[40.0, 10.0, 2.0], [36.0, 16.0, 1.0], [0.0, 0.0, 0.0]]], np.float32)
    return BottomUpSample(img, [mask, mask], [joints, joints])


def test_warp_without_augmentation_by_hand():
    # center (32, 16); region 64x32 -> 'short' square 32x32 -> zoom 1 into 32x32, x' = x - 16
    s = warp_sample(_sample(), AffineDraw(1.0, 0.0, 0, 0), 32, (8, 16))
    assert s.image.shape == (32, 32, 3)
    assert (s.image[:, 24:] == 200).all() and (s.image[:, :24] == 0).all()
    np.testing.assert_allclose(s.joints[0][0, 0, :2], [(40 - 32) / 4 + 4, (10 - 16) / 4 + 4])
    np.testing.assert_allclose(s.joints[1][0, 1, :2], [(36 - 32) / 2 + 8, 8.0])
    assert s.joints[0][0, 0, 2] == 2.0  # visibility untouched
    # mask: image columns < 24 ignored -> stage-0 columns < (24 - 32) / 4 + 4 = 2
    assert s.masks[0].dtype == np.float32 and (s.masks[0][:, :2] == 0).all()
    assert (s.masks[0][:, 2:] == 1).all()


def test_warp_rotation_shift_and_border():
    # +90 degrees: a point right of the center goes above the output center
    s = warp_sample(_sample(), AffineDraw(1.0, 90.0, 0, 0), 32, (8, 16))
    np.testing.assert_allclose(s.joints[1][0, 1, :2], [8.0, 8.0 - (36 - 32) / 2], atol=1e-5)
    # zoom out x2 and shift the center by (+4, -2): x' = (x - 36) / 2 / 4 * ... at stage 16
    s = warp_sample(_sample(), AffineDraw(2.0, 0.0, 4, -2), 32, (8, 16))
    np.testing.assert_allclose(s.joints[1][0, 0, :2], [(40 - 36) / 4 + 8, (10 - 14) / 4 + 8])
    # stage 1 (zoom 1/4): x' = (x - 36) / 4 + 8, y' = (y - 14) / 4 + 8, so the 64x32 image
    # covers x' in [-1, 15), y' in [4.5, 12.5): outside it the border is 0 (not supervised);
    # the ignored image columns x < 24 are x' < 5
    assert (s.masks[1][:4] == 0).all() and (s.masks[1][8, 5:15] == 1).all()
    assert (s.masks[1][8, :5] == 0).all()
    assert s.masks[1][8, 15] == 0 and (s.masks[1][13:] == 0).all()


def test_draw_affine_ranges_and_flip():
    cfg = BottomUpAugment()
    draws = [draw_affine(cfg, (640, 480), sample_rng(0, 0, i)) for i in range(200)]
    assert all(0.75 <= d.aug_scale <= 1.5 and abs(d.aug_rot) <= 30 for d in draws)
    # |dx| < 40 * 640 * scale / 200 (<= 192 at scale 1.5)
    assert all(abs(d.dx) < 40 * 640 * d.aug_scale / 200 + 1 for d in draws)
    assert max(abs(d.dx) for d in draws) > 60
    s = warp_sample(_sample(), AffineDraw(1.0, 0.0, 0, 0), 32, (8, 16))
    j0 = s.joints[0].copy()
    s = random_flip(s, FLIP, 1.0, np.random.default_rng(0))
    # joint 1 and 2 swap; x -> 8 - 1 - x at stage 0
    np.testing.assert_allclose(s.joints[0][0, 2, :2], [7 - j0[0, 1, 0], j0[0, 1, 1]])
    assert (s.masks[0][:, -2:] == 0).all() and (s.image[:, :8] == 200).all()
    with pytest.raises(ValueError):
        BottomUpAugment(scale_type="wide")


def test_ignore_mask_crowd_rle_and_unlabelled_polygon():
    # 4x5 image; uncompressed RLE is column-major: 4 zeros (column 0), 8 ones (columns 1-2)
    crowd = {"iscrowd": 1, "segmentation": {"counts": [4, 8, 8], "size": [4, 5]}}
    rec = BottomUpRecord(Path("x"), 1, 5, 4, np.zeros((0, 3, 3), np.float32), (crowd,))
    m = ignore_mask(rec)
    assert m.shape == (4, 5) and m.dtype == bool
    assert (~m[:, 1:3]).all() and m[:, [0, 3, 4]].all()
    # a person without keypoints: polygon square (1, 1)-(3, 3) covers pixels x, y in 1..2
    poly = {"iscrowd": 0, "num_keypoints": 0, "segmentation": [[1, 1, 3, 1, 3, 3, 1, 3]]}
    m = ignore_mask(BottomUpRecord(Path("x"), 1, 5, 4, np.zeros((0, 3, 3)), (poly,)))
    assert np.count_nonzero(~m) == 4 and (~m[1:3, 1:3]).all()
    empty = {"iscrowd": 0, "num_keypoints": 0, "segmentation": []}
    assert ignore_mask(BottomUpRecord(Path("x"), 1, 5, 4, np.zeros((0, 3, 3)), (empty,))).all()


def test_records_rules(tmp_path):
    kp = [10, 10, 2, 0, 0, 0, 20, 20, 1]
    coco = {
        "images": [
            {"id": 1, "file_name": "a.jpg", "width": 40, "height": 30},
            {"id": 2, "file_name": "b.jpg", "width": 40, "height": 30},
        ],
        "annotations": [
            {
                "id": 10,
                "image_id": 1,
                "iscrowd": 0,
                "num_keypoints": 2,
                "keypoints": kp,
                "segmentation": [[0, 0, 1, 0, 1, 1]],
            },
            {
                "id": 11,
                "image_id": 1,
                "iscrowd": 1,
                "num_keypoints": 0,
                "keypoints": [0] * 9,
                "segmentation": {"counts": [1200], "size": [30, 40]},
            },
            {
                "id": 12,
                "image_id": 1,
                "iscrowd": 0,
                "num_keypoints": 0,
                "keypoints": [0] * 9,
                "segmentation": [[0, 0, 4, 0, 4, 4]],
            },
        ],
    }
    p = tmp_path / "ann.json"
    p.write_text(json.dumps(coco))
    recs = load_bottomup_records(p, tmp_path, 3)
    assert len(recs) == 1  # image 2 has no annotation
    r = recs[0]
    assert r.joints.shape == (2, 3, 3)  # the crowd one is not a person; the unlabelled one is
    np.testing.assert_array_equal(r.joints[0, :, 2], [2, 0, 1])
    assert [a["id"] for a in r.ignored] == [11, 12]
    with pytest.raises(Exception, match="keypoints"):
        load_bottomup_records(p, tmp_path, 17)
    assert stage_sizes(512) == (128, 256) and stage_sizes(128) == (32, 64)
    with pytest.raises(ValueError):
        stage_sizes(100)


@pytest.mark.skipif(not COCO_MINI.is_dir(), reason="../shared/data/coco_mini missing")
def test_coco_mini_samples_consistent_and_deterministic():
    recs = load_bottomup_records(
        COCO_MINI / "annotations/person_keypoints_train2017.json", COCO_MINI / "train2017", 17
    )
    assert len(recs) == 36 and sum(len(r.joints) for r in recs) == 167
    flip = [0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15]
    t = AssociativeEmbeddingTargets(((32, 32), (64, 64)), max_num_people=30)
    ds = BottomUpDataset(recs, 128, t, _Norm(), flip, BottomUpAugment(), seed=3)
    n_tagged = 0
    for i in range(6):
        d = ds[i]
        assert d["inputs"].shape == (3, 128, 128)
        for s, _size in enumerate((32, 64)):
            hm = d["heatmaps"][s].numpy().reshape(-1)
            j = d["joints"][s].numpy().reshape(-1, 2)
            idx = j[j[:, 1] > 0, 0]
            n_tagged += len(idx)
            # every tagged joint sits on its heatmap's peak pixel (both use int(x), int(y))
            assert (hm[idx] == 1.0).all()
            assert set(np.unique(d["masks"][s].numpy())) <= {0.0, 1.0}
    assert n_tagged > 20
    a, b = ds[4], ds[4]
    assert all((x == y).all() for x, y in zip(a["heatmaps"], b["heatmaps"]))
    ds.set_epoch(1)
    c = ds[4]
    assert not (a["inputs"] == c["inputs"]).all()
