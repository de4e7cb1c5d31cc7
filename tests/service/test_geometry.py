"""service.geometry against hand-derived numbers (MMPose 1.x top-down box / affine semantics).

Running example (derived by hand, used throughout): box xyxy (10, 20, 110, 220), padding 1.25
-> center (60, 120), scale (125, 250); model input 192x256 (aspect 0.75) -> fixed scale
(187.5, 250). Standard warp zoom = 192 / 187.5 = 1.024, translation (96 - 1.024*60, 128 - 1.024*120)
= (34.56, 5.12). UDP zooms: sx = 191 / 187.5, sy = 255 / 250 = 1.02; translation
(sx * (93.75 - 60), 1.02 * (125 - 120)) = (191 * 0.18, 5.1) = (34.38, 5.1).
"""

from __future__ import annotations

import numpy as np
import pytest

from service.geometry import (
    affine_transform_points,
    bbox_xywh2xyxy,
    bbox_xyxy2cs,
    bbox_xyxy2xywh,
    crop_persons,
    fix_aspect_ratio,
    get_udp_warp_matrix,
    get_warp_matrix,
    keypoints_to_image,
    warp_matrices,
)

CENTER = np.array([60.0, 120.0])
SCALE = np.array([187.5, 250.0])
OUT = (192, 256)


def test_bbox_format_conversions():
    xywh = np.array([[10.0, 20.0, 100.0, 200.0, 0.9], [0.0, 0.0, 5.0, 7.0, 0.5]])
    xyxy = bbox_xywh2xyxy(xywh)
    np.testing.assert_allclose(xyxy, [[10, 20, 110, 220, 0.9], [0, 0, 5, 7, 0.5]])
    np.testing.assert_allclose(bbox_xyxy2xywh(xyxy), xywh)
    assert xywh[0, 2] == 100.0  # input untouched
    assert bbox_xywh2xyxy(np.array([[1, 2, 3, 4]])).dtype == np.float64  # ints -> float
    with pytest.raises(ValueError):
        bbox_xywh2xyxy(np.zeros((3, 3)))


def test_bbox_xyxy2cs():
    boxes = np.array([[10.0, 20.0, 110.0, 220.0], [0.0, 0.0, 200.0, 50.0]])
    c, s = bbox_xyxy2cs(boxes)  # default padding 1.25 (GetBBoxCenterScale)
    np.testing.assert_allclose(c, [[60, 120], [100, 25]])
    np.testing.assert_allclose(s, [[125, 250], [250, 62.5]])
    c1, s1 = bbox_xyxy2cs(boxes, padding=1.0)
    np.testing.assert_allclose(s1, [[100, 200], [200, 50]])
    c2, s2 = bbox_xyxy2cs(np.array([10.0, 20.0, 110.0, 220.0]))  # single (4,) box
    assert c2.shape == (2,) and s2.shape == (2,)
    np.testing.assert_allclose(s2, [125, 250])
    assert bbox_xyxy2cs(boxes.astype(np.float32))[0].dtype == np.float32


def test_fix_aspect_ratio():
    s = np.array(
        [
            [125.0, 250.0],  # tall: width grows to 250 * 0.75
            [250.0, 62.5],  # wide: height grows to 250 / 0.75
            [75.0, 100.0],
        ]
    )  # already 0.75: unchanged
    out = fix_aspect_ratio(s, 0.75)
    np.testing.assert_allclose(out, [[187.5, 250.0], [250.0, 1000.0 / 3.0], [75.0, 100.0]])
    with pytest.raises(ValueError):
        fix_aspect_ratio(s, 0.0)


def test_standard_warp_matrix_hand_values():
    m = get_warp_matrix(CENTER, SCALE, 0.0, OUT)
    assert m.shape == (2, 3)
    np.testing.assert_allclose(m, [[1.024, 0.0, 34.56], [0.0, 1.024, 5.12]], atol=1e-4)
    pts = np.array(
        [
            [60.0, 120.0],  # box center -> crop center (w/2, h/2)
            [60 - 93.75, 120.0],  # left edge of the fixed box -> x = 0
            [60 + 93.75, 120.0],  # right edge -> x = w
            [60.0, 120 - 125.0],  # top edge -> y = 0 (aspect fixed, so 1.024 * 125 = 128)
            [60.0, 120 + 125.0],
        ]
    )  # bottom edge -> y = h
    np.testing.assert_allclose(
        affine_transform_points(pts, m),
        [[96, 128], [0, 128], [192, 128], [96, 0], [96, 256]],
        atol=1e-3,
    )
    inv = get_warp_matrix(CENTER, SCALE, 0.0, OUT, inv=True)
    np.testing.assert_allclose(
        affine_transform_points([[96.0, 128.0], [0.0, 0.0]], inv),
        [[60, 120], [-33.75, -5]],
        atol=1e-3,
    )


def test_standard_warp_matrix_rotation_and_shift():
    # rot = 90: upstream rotates the src direction (-sw/2, 0) by [[cos, -sin], [sin, cos]] to
    # (0, -sw/2): the point above the center goes to the crop's left middle (0, h/2); the third
    # point construction then sends the point sw/2 left of the center to (w/2, h/2 + w/2).
    m = get_warp_matrix(CENTER, SCALE, 90.0, OUT)
    np.testing.assert_allclose(
        affine_transform_points([[60.0, 120 - 93.75], [60 - 93.75, 120.0]], m),
        [[0, 128], [96, 224]],
        atol=1e-3,
    )
    # shift (0.1, 0): the point center + 0.1 * scale_w lands on the crop center.
    m = get_warp_matrix(CENTER, SCALE, 0.0, OUT, shift=(0.1, 0.0))
    np.testing.assert_allclose(
        affine_transform_points([[60 + 18.75, 120.0]], m), [[96, 128]], atol=1e-3
    )


def test_udp_warp_matrix_hand_values():
    m = get_udp_warp_matrix(CENTER, SCALE, 0.0, OUT)
    assert m.dtype == np.float32
    np.testing.assert_allclose(
        m, [[191 / 187.5, 0.0, 34.38], [0.0, 1.02, 5.1]], rtol=1e-6, atol=1e-5
    )
    pts = np.array([[60.0, 120.0], [60 - 93.75, 120 - 125.0], [60 + 93.75, 120 + 125.0]])
    # UDP: center -> center *pixel* ((w-1)/2, (h-1)/2); box edges -> pixel centers 0 and w-1 / h-1
    np.testing.assert_allclose(
        affine_transform_points(pts, m), [[95.5, 127.5], [0, 0], [191, 255]], atol=1e-3
    )
    # rot = 90 (x' = -sx (y - cy) + sx sw/2, y' = sy (x - cx) + sy sh/2): the point 10 px above
    # the center goes 10 sx px right of the crop center, the point 10 px right of it 10 sy px down.
    m90 = get_udp_warp_matrix(CENTER, SCALE, 90.0, OUT)
    np.testing.assert_allclose(
        affine_transform_points([[60.0, 110.0], [70.0, 120.0]], m90),
        [[95.5 + 10 * 191 / 187.5, 127.5], [95.5, 127.5 + 10.2]],
        atol=1e-3,
    )


def test_warp_matrices_match_single_box_versions():
    centers = np.array([[60.0, 120.0], [333.3, 17.25], [5.0, 400.0]])
    scales = fix_aspect_ratio(np.array([[125.0, 250.0], [80.0, 20.0], [33.0, 47.0]]), 0.75)
    std = warp_matrices(centers, scales, OUT)
    udp = warp_matrices(centers, scales, OUT, use_udp=True)
    assert std.shape == (3, 2, 3) and udp.shape == (3, 2, 3)
    for i in range(3):
        np.testing.assert_allclose(
            std[i], get_warp_matrix(centers[i], scales[i], 0.0, OUT), atol=1e-9
        )
        np.testing.assert_allclose(
            udp[i], get_udp_warp_matrix(centers[i], scales[i], 0.0, OUT), rtol=1e-6
        )
    np.testing.assert_allclose(std[0], [[1.024, 0.0, 34.56], [0.0, 1.024, 5.12]], atol=1e-4)
    assert warp_matrices(np.zeros((0, 2)), np.zeros((0, 2)), OUT).shape == (0, 2, 3)


def test_keypoints_to_image_hand_values_and_round_trip():
    kp = np.array([[[96.0, 128.0], [0.0, 0.0], [192.0, 256.0]]])
    out = keypoints_to_image(kp, CENTER[None], SCALE[None], OUT)
    # kp / (192, 256) * (187.5, 250) + (60, 120) - (93.75, 125)
    np.testing.assert_allclose(out, [[[60, 120], [-33.75, -5], [153.75, 245]]])

    rng = np.random.default_rng(1)
    centers = rng.uniform(50, 400, (4, 2))
    scales = fix_aspect_ratio(rng.uniform(20, 300, (4, 2)), 192 / 256)
    pts = centers[:, None] + rng.uniform(-60, 60, (4, 5, 2))
    mats = warp_matrices(centers, scales, OUT)
    crop_pts = affine_transform_points(pts, mats)
    np.testing.assert_allclose(keypoints_to_image(crop_pts, centers, scales, OUT), pts, atol=1e-3)
    with pytest.raises(ValueError):
        keypoints_to_image(kp, np.zeros((2, 2)), np.ones((2, 2)), OUT)


def test_affine_transform_points_shapes():
    m = np.array([[2.0, 0.0, 1.0], [0.0, 3.0, -1.0]])
    np.testing.assert_allclose(affine_transform_points([1.0, 1.0], m), [3.0, 2.0])
    mats = np.stack([m, np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])])
    pts = np.array([[[1.0, 1.0], [2.0, 0.0]], [[1.0, 2.0], [5.0, 7.0]]])
    np.testing.assert_allclose(
        affine_transform_points(pts, mats), [[[3, 2], [5, -1]], [[2, 1], [7, 5]]]
    )
    with pytest.raises(ValueError):
        affine_transform_points(pts, np.zeros((3, 3)))


def test_crop_persons_puts_a_dot_where_expected():
    img = np.zeros((200, 300, 3), dtype=np.uint8)
    img[80, 100] = (255, 128, 7)
    img[90, 110] = (9, 200, 255)
    out = (48, 64)
    centers = np.array(
        [
            [100.0, 80.0],  # zoom 1 (scale == output size): pure translation
            [100.0, 80.0],
        ]
    )  # zoom 0.5 (scale twice the output)
    scales = np.array([[48.0, 64.0], [96.0, 128.0]])
    crops = crop_persons(img, centers, scales, out)
    assert crops.shape == (2, 64, 48, 3) and crops.dtype == np.uint8
    # box 0: x' = x - 100 + 24, y' = y - 80 + 32
    assert tuple(crops[0, 32, 24]) == (255, 128, 7)
    assert tuple(crops[0, 42, 34]) == (9, 200, 255)
    assert crops[0].astype(int).sum() == 255 + 128 + 7 + 9 + 200 + 255
    # box 1: x' = (x - 100) / 2 + 24: the dots at (100, 80) and (110, 90) -> (24, 32) and (29, 37),
    # each sampled exactly on its source pixel by INTER_LINEAR (zero-weight neighbours)
    assert tuple(crops[1, 32, 24]) == (255, 128, 7)
    assert tuple(crops[1, 37, 29]) == (9, 200, 255)
    assert crops[1, 32, 25].sum() == 0 and crops[1, 33, 24].sum() == 0


def test_crop_persons_udp_dot():
    img = np.zeros((200, 300, 3), dtype=np.uint8)
    img[80, 100] = 200
    # UDP with scale (w-1, h-1) = (47, 63): zoom 1, x' = x - 100.5 + 23.5 = x - 77, y' = y - 49
    crops = crop_persons(
        img, np.array([[100.5, 80.5]]), np.array([[47.0, 63.0]]), (48, 64), use_udp=True
    )
    assert tuple(crops[0, 31, 23]) == (200, 200, 200)
    assert crops[0].astype(int).sum() == 600


def test_crop_persons_edge_cases():
    img = np.zeros((10, 10, 3), dtype=np.uint8)
    assert crop_persons(img, np.zeros((0, 2)), np.zeros((0, 2)), (48, 64)).shape == (0, 64, 48, 3)
    with pytest.raises(ValueError):
        crop_persons(img.astype(np.float32), np.ones((1, 2)), np.ones((1, 2)), (48, 64))
    with pytest.raises(ValueError):
        crop_persons(img[..., 0], np.ones((1, 2)), np.ones((1, 2)), (48, 64))
