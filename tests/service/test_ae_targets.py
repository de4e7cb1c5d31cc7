"""Bottom-up training targets (service.codecs.associative_embedding_targets) against hand-derived
numbers: MMPose 0.x HeatmapGenerator's window/rounding and JointsEncoder's flat indices."""

from __future__ import annotations

import math

import numpy as np
import pytest

from service.codecs.associative_embedding_targets import (
    AssociativeEmbeddingTargets,
    encode_tag_joints,
    generate_bottomup_heatmaps,
)


def test_heatmap_gaussian_on_truncated_pixel_and_window():
    # joint at (5.7, 3.2): int() -> pixel (5, 3); sigma 2 -> window x in [5-7, 5+8) = [-2, 13),
    # y in [3-7, 3+8) = [-4, 11), clipped to the 16x16 map
    hms = generate_bottomup_heatmaps(np.array([[[5.7, 3.2, 2.0]]]), (16, 16), sigma=2)
    assert hms.shape == (1, 16, 16) and hms.dtype == np.float32
    m = hms[0]
    assert m[3, 5] == 1.0
    assert m[3, 6] == pytest.approx(math.exp(-1 / 8), rel=1e-6)
    assert m[5, 7] == pytest.approx(math.exp(-1.0), rel=1e-6)
    assert m[3, 12] == pytest.approx(math.exp(-49 / 8), rel=1e-5)  # last column of the window
    assert m[3, 13] == 0.0  # outside the window although exp(-64/8) > 0
    assert m[10, 5] == pytest.approx(math.exp(-49 / 8), rel=1e-5)
    assert m[11, 5] == 0.0
    assert m[0, 0] == pytest.approx(math.exp(-(25 + 9) / 8), rel=1e-5)
    assert np.count_nonzero(m) == 13 * 11  # the clipped window, every pixel > 0


def test_heatmap_truncation_toward_zero_skips_and_max_merge():
    joints = np.array(
        [
            [[-0.7, 2.0, 1.0], [16.0, 3.0, 1.0]],  # x -0.7 -> pixel 0 (drawn); x 16 -> off the map
            [[2.0, 2.0, 1.0], [5.0, 5.0, 0.0]],  # second person: joint 1 not labelled
        ],
        dtype=np.float32,
    )
    hms = generate_bottomup_heatmaps(joints, (16, 8), sigma=2)
    assert hms.shape == (2, 8, 16)
    assert not hms[1].any()
    # joint 0: Gaussians at (0, 2) and (2, 2), merged by max: pixel (1, 2) is 1 px from both
    assert hms[0, 2, 0] == 1.0 and hms[0, 2, 2] == 1.0
    assert hms[0, 2, 1] == pytest.approx(math.exp(-1 / 8), rel=1e-6)
    assert hms[0, 2, 4] == pytest.approx(math.exp(-4 / 8), rel=1e-6)  # nearer (2, 2) wins


def test_tag_joints_flat_indices_packed_to_front():
    # W=4, H=3, K=2: index = k * 12 + y * 4 + x
    joints = np.array(
        [
            [[1.9, 2.2, 2.0], [3.0, 0.0, 1.0]],
            [[1.0, 1.0, 0.0], [0.5, 1.5, 1.0]],
            [[4.0, 0.0, 1.0], [-0.5, 0.0, 1.0]],
        ],
        dtype=np.float32,
    )
    out = encode_tag_joints(joints, (4, 3), max_num_people=4)
    assert out.shape == (4, 2, 2) and out.dtype == np.int64
    np.testing.assert_array_equal(out[0], [[9, 1], [15, 1]])
    np.testing.assert_array_equal(out[1], [[16, 1], [0, 0]])  # invisible joint 0 skipped
    np.testing.assert_array_equal(out[2], [[12, 1], [0, 0]])  # x 4 off; x -0.5 -> 0
    np.testing.assert_array_equal(out[3], [[0, 0], [0, 0]])
    shared = encode_tag_joints(joints, (4, 3), max_num_people=4, tag_per_joint=False)
    np.testing.assert_array_equal(shared[0], [[9, 1], [3, 1]])
    # more people than slots: the first M are kept
    assert encode_tag_joints(joints, (4, 3), max_num_people=1).shape == (1, 2, 2)


def test_multi_stage_encode_and_errors():
    t = AssociativeEmbeddingTargets(((8, 8), (16, 16)), sigma=2, max_num_people=2)
    j0 = np.array([[[3.0, 3.0, 1.0]]], np.float32)
    out = t.encode([j0, j0 * [2, 2, 1]])
    assert [h.shape for h in out["heatmaps"]] == [(1, 8, 8), (1, 16, 16)]
    assert out["heatmaps"][1][0, 6, 6] == 1.0
    np.testing.assert_array_equal(out["joints"][0][0, 0], [27, 1])
    np.testing.assert_array_equal(out["joints"][1][0, 0], [6 * 16 + 6, 1])
    with pytest.raises(ValueError, match="2 stages"):
        t.encode([j0])
    with pytest.raises(ValueError, match="joints"):
        generate_bottomup_heatmaps(np.zeros((2, 3)), (8, 8))
    with pytest.raises(ValueError, match="sigma"):
        generate_bottomup_heatmaps(j0, (8, 8), sigma=0)
    with pytest.raises(ValueError, match="heatmap_size"):
        encode_tag_joints(j0, (0, 8))
