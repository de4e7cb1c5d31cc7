"""KeypointConverter semantics (training.keypoint_mapping): hand-derived arrays, and the seed-003
mappings checked against the keypoint names of the real AIC sample file and our COCO tables."""

from __future__ import annotations

import json

import numpy as np
import pytest

from service.datasets import get_pose_dataset
from training.keypoint_mapping import (
    AIC_TO_COCO,
    AIC_TO_COCO_AIC,
    COCO_TO_COCO_AIC,
    KeypointMapping,
    get_mapping,
)


def _aic_person() -> tuple[np.ndarray, np.ndarray]:
    """One AIC person: keypoint j at (10 j + 1, 10 j + 2); j = 2 (right wrist) and 7 (right
    knee) unlabelled."""
    kp = np.stack([10 * np.arange(14) + 1, 10 * np.arange(14) + 2], 1).astype(np.float32)
    vis = np.ones(14, np.float32)
    vis[[2, 7]] = 0
    kp[[2, 7]] = 0
    return kp[None], vis[None]


def test_merge_aic_14_to_coco_17_by_hand():
    kp, vis = _aic_person()
    out, ov, w = KeypointMapping(17, AIC_TO_COCO)(kp, vis)
    assert out.shape == (1, 17, 2) and ov.shape == w.shape == (1, 17)
    # COCO 6 (right shoulder) <- AIC 0 at (1, 2); COCO 5 (left shoulder) <- AIC 3 at (31, 32);
    # COCO 15 (left ankle) <- AIC 11 at (111, 112); COCO 9 (left wrist) <- AIC 5 at (51, 52)
    assert out[0, 6].tolist() == [1, 2] and out[0, 5].tolist() == [31, 32]
    assert out[0, 15].tolist() == [111, 112] and out[0, 9].tolist() == [51, 52]
    # face (0..4) unmapped: zero position, visibility 0, weight 0
    assert not out[0, :5].any() and not ov[0, :5].any() and not w[0, :5].any()
    # COCO 10 (right wrist) <- AIC 2 and COCO 14 (right knee) <- AIC 7 are unlabelled there:
    # visibility 0 but weight 1 (mapped)
    expected_vis = np.zeros(17)
    expected_vis[[5, 6, 7, 8, 9, 11, 12, 13, 15, 16]] = 1
    assert ov[0].tolist() == expected_vis.tolist()
    expected_w = np.zeros(17)
    expected_w[5:] = 1
    assert w[0].tolist() == expected_w.tolist()


def test_combine_coco_17_and_aic_14_to_19_by_hand():
    kp, vis = _aic_person()
    out, ov, w = KeypointMapping(19, AIC_TO_COCO_AIC)(kp, vis)
    assert out[0, 17].tolist() == [121, 122] and out[0, 18].tolist() == [131, 132]  # head top, neck
    assert ov[0, 17:].tolist() == [1, 1] and w[0].tolist() == [0] * 5 + [1] * 14
    coco = np.arange(34, dtype=np.float32).reshape(1, 17, 2)
    cvis = (np.arange(17) % 2).astype(np.float32)[None]
    out, ov, w = KeypointMapping(19, COCO_TO_COCO_AIC)(coco, cvis)
    assert out[0, :17].tolist() == coco[0].tolist() and not out[0, 17:].any()
    assert ov[0].tolist() == cvis[0].tolist() + [0, 0]
    assert w[0].tolist() == [1] * 17 + [0, 0]


def test_midpoint_pairs_average_positions_and_multiply_visibility():
    kp = np.array([[[0, 0], [4, 8], [10, 20]]], np.float32)
    vis = np.array([[1, 1, 0]], np.float32)
    out, ov, w = KeypointMapping(3, (((0, 1), 0), (1, 1), ((1, 2), 2)))(kp, vis)
    assert out[0].tolist() == [[2, 4], [4, 8], [7, 14]]
    assert ov[0].tolist() == [1, 1, 0] and w[0].tolist() == [1, 1, 1]


def test_mapping_errors_name_the_problem():
    with pytest.raises(ValueError, match="repeats a target"):
        KeypointMapping(17, ((0, 1), (2, 1)))
    with pytest.raises(ValueError, match="range\\(17\\)"):
        KeypointMapping(17, ((0, 17),))
    kp, vis = _aic_person()
    with pytest.raises(ValueError, match="source index 13 but the annotations have 12"):
        KeypointMapping(19, AIC_TO_COCO_AIC)(kp[:, :12], vis[:, :12])
    with pytest.raises(KeyError, match="aic_to_coco"):
        get_mapping("nope")


def _norm(name: str) -> str:
    return name.lower().replace(" ", "_")


def test_seed_003_mappings_pair_keypoints_of_the_same_name(shared):
    """The pairs (as MMPose's merge/combine configs write them) join keypoints of the same name:
    AIC names from the real sample file's category, COCO / COCO-AIC from service.datasets."""
    cat = json.loads((shared / "data/mmpose_tests/aic/test_aic.json").read_text())["categories"][0]
    aic = [_norm(n) for n in cat["keypoints"]]
    coco = get_pose_dataset("coco").keypoint_names
    coco_aic = get_pose_dataset("coco_aic").keypoint_names
    assert len(aic) == 14
    assert all(aic[s] == coco[t] for s, t in AIC_TO_COCO)
    assert all(aic[s] == coco_aic[t] for s, t in AIC_TO_COCO_AIC)
    assert all(coco[s] == coco_aic[t] for s, t in COCO_TO_COCO_AIC)
    # every AIC keypoint with a COCO namesake is mapped (12 limb joints), and all 14 in combine
    assert sorted(s for s, _ in AIC_TO_COCO) == [i for i, n in enumerate(aic) if n in coco]
    assert sorted(s for s, _ in AIC_TO_COCO_AIC) == list(range(14))
    assert get_mapping("aic_to_coco").num_keypoints == 17
    assert get_mapping("aic_to_coco_aic").num_keypoints == 19
