"""Crops bit-identical to MMPose 1.x's dataset path for detection-file boxes.

MMPose's ``CocoDataset`` (``BaseCocoStyleDataset._load_detection_results``) casts each JSON box
to float32, converts xywh -> xyxy in float32 (``bbox_xywh2xyxy``), and ``GetBBoxCenterScale`` /
``TopdownAffine`` keep float32 until the three float32 point pairs go to
``cv2.getAffineTransform``. ``upstream_crop`` below restates that arithmetic by hand; the served
path (``parse_boxes`` -> ``crop_inputs``) must give the same bytes for all 22 detections of COCO
image 785 in ``test_coco_det_AP_H_56.json``. Converting in float64 first (the old path) moves
box 1's center by one float32 ulp and changes 104 crop values by up to 3 grey levels.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from service.boxes import parse_boxes
from service.geometry import get_warp_matrix, warp_matrices
from service.pipelines.topdown import crop_inputs
from tests.fake_cards import pose_card

IN_W, IN_H = 192, 256
PADDING = 1.25


def upstream_center_scale(xywh: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """MMPose's float32 chain for one JSON box: cast, xyxy, center/scale (padding 1.25), aspect fix."""
    b = np.array(xywh, dtype=np.float32)
    xyxy = np.concatenate([b[:2], b[:2] + b[2:]])  # float32 + float32
    center = (xyxy[2:] + xyxy[:2]) * 0.5
    scale = (xyxy[2:] - xyxy[:2]) * PADDING
    # one-element arrays keep numpy's array-with-Python-float rule: the result stays float32
    w, h = scale[:1], scale[1:]
    ar = IN_W / IN_H
    scale = np.concatenate([w, w / ar]) if w[0] > (h * ar)[0] else np.concatenate([h * ar, h])
    assert center.dtype == np.float32 and scale.dtype == np.float32
    return center, scale


def upstream_matrix(center: np.ndarray, scale: np.ndarray, use_udp: bool) -> np.ndarray:
    """``get_warp_matrix`` (rotation 0, no shift) or, with numpy 1.x's float64 scalar maths (the
    numpy the published numbers ran on), ``get_udp_warp_matrix``."""
    if use_udp:
        cx, cy = float(center[0]), float(center[1])
        sx, sy = (IN_W - 1) / float(scale[0]), (IN_H - 1) / float(scale[1])
        return np.array(
            [
                [sx, 0.0, sx * (-cx + 0.5 * float(scale[0]))],
                [0.0, sy, sy * (-cy + 0.5 * float(scale[1]))],
            ],
            dtype=np.float32,
        )
    src = np.zeros((3, 2), np.float32)
    src[0] = center
    src[1] = center.astype(np.float64) + np.array([-0.5 * float(scale[0]), 0.0])
    d = src[0] - src[1]
    src[2] = src[1] + np.array([-d[1], d[0]], np.float32)
    dst = np.array([[IN_W / 2, IN_H / 2], [0, IN_H / 2], [0, IN_H / 2 + IN_W / 2]], np.float32)
    return cv2.getAffineTransform(src, dst)


def upstream_crop(image: np.ndarray, xywh: list[float], use_udp: bool = False) -> np.ndarray:
    m = upstream_matrix(*upstream_center_scale(xywh), use_udp=use_udp)
    return cv2.warpAffine(image, m, (IN_W, IN_H), flags=cv2.INTER_LINEAR)


@pytest.fixture(scope="module")
def photo_785(shared):
    root = shared / "data" / "mmpose_tests" / "coco"
    image = cv2.imread(str(root / "000000000785.jpg"))
    dets = json.loads((root / "test_coco_det_AP_H_56.json").read_text())
    dets = [d for d in dets if d["image_id"] == 785 and d["category_id"] == 1]
    assert image is not None and len(dets) == 22
    return image, dets


@pytest.mark.parametrize("use_udp", [False, True])
def test_served_crops_equal_mmpose_dataset_crops_for_image_785(photo_785, use_udp):
    image, dets = photo_785
    h, w = image.shape[:2]
    text = json.dumps([d["bbox"] + [d["score"]] for d in dets])
    xyxy, _ = parse_boxes(text, "xywh", (w, h), max_boxes=100)
    assert xyxy.dtype == np.float32
    card = pose_card(use_udp=use_udp)
    centers, scales, crops = crop_inputs(image, xyxy, card)
    for i, det in enumerate(dets):
        c, s = upstream_center_scale(det["bbox"])
        np.testing.assert_array_equal(centers[i], c, err_msg=f"box {i}")
        np.testing.assert_array_equal(scales[i], s, err_msg=f"box {i}")
        ref = upstream_crop(image, det["bbox"], use_udp=use_udp)
        assert np.array_equal(crops[i], ref), (
            f"box {i}: {np.count_nonzero(crops[i] != ref)} crop values differ"
        )


def test_float64_conversion_would_move_box_1(photo_785):
    """The data exercises the defect: xywh -> xyxy in float64 before the float32 cast gives box
    1 another center (one float32 ulp, 2**-16 px) and a crop that differs from MMPose's."""
    image, dets = photo_785
    x, y, bw, bh = dets[1]["bbox"]
    old = np.array([x, y, x + bw, y + bh], np.float64).astype(np.float32)
    c_old = (old[2:] + old[:2]) * 0.5
    c_new, s_new = upstream_center_scale(dets[1]["bbox"])
    assert np.abs(c_old - c_new).max() == 2.0**-16
    crop_old = cv2.warpAffine(
        image, upstream_matrix(c_old, s_new, False), (IN_W, IN_H), flags=cv2.INTER_LINEAR
    )
    diff = np.abs(crop_old.astype(int) - upstream_crop(image, dets[1]["bbox"]).astype(int))
    assert 0 < np.count_nonzero(diff) < 0.01 * diff.size and diff.max() <= 3


def test_eval_job_boxes_are_served_like_the_raw_detection_boxes(shared, photo_785):
    """hrnet-eval sends the detections as float32 xyxy; the gateway turns those into the same
    float32 boxes as the raw xywh JSON numbers (so an eval run scores MMPose's crops)."""
    from benchmarks.eval_data import build_pose_items, load_json

    image, dets = photo_785
    h, w = image.shape[:2]
    root = shared / "data" / "mmpose_tests" / "coco"
    items, _, _ = build_pose_items(
        load_json(root / "test_coco.json"),
        root,
        "coco",
        box_source="det",
        det_file=root / "test_coco_det_AP_H_56.json",
    )
    sent = next(it for it in items if it.image_id == 785).boxes
    got, _ = parse_boxes(json.dumps(sent), "xyxy", (w, h), max_boxes=100)
    raw, _ = parse_boxes(json.dumps([d["bbox"] for d in dets]), "xywh", (w, h), max_boxes=100)
    np.testing.assert_array_equal(got, raw)


def test_warp_matrices_are_opencvs_bit_for_bit():
    """``warp_matrices`` equals ``cv2.getAffineTransform`` on the float32 point triples exactly
    (a closed-form float64 solve differed in the last bits and moved ~2% of crops)."""
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 600, (200, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 400, (200, 2))], axis=1)
    cs = [upstream_center_scale(list(np.concatenate([b[:2], b[2:] - b[:2]]))) for b in boxes]
    centers = np.stack([c for c, _ in cs])
    scales = np.stack([s for _, s in cs])
    mats = warp_matrices(centers, scales, (IN_W, IN_H))
    for i in range(len(boxes)):
        ref = upstream_matrix(centers[i], scales[i], use_udp=False)
        np.testing.assert_array_equal(mats[i], ref)
        np.testing.assert_array_equal(
            mats[i], get_warp_matrix(centers[i], scales[i], 0.0, (IN_W, IN_H))
        )
    udp = warp_matrices(centers, scales, (IN_W, IN_H), use_udp=True)
    for i in range(len(boxes)):
        np.testing.assert_array_equal(udp[i], upstream_matrix(centers[i], scales[i], True))


def test_normalisation_divides_like_mmengine():
    """``to_input_tensor`` gives MMEngine's ``(x - mean) / std`` float32 values exactly, for every
    0..255 value of each channel; multiplying by ``1 / std`` would differ in the last bit."""
    from service.cards import Normalization
    from service.pipelines.common import to_input_tensor

    mean = np.array([123.675, 116.28, 103.53], np.float32)
    std = np.array([58.395, 57.12, 57.375], np.float32)
    levels = np.repeat(
        np.arange(256, dtype=np.uint8)[None, :, None, None], 3, axis=2
    )  # (1,256,3,1)
    bgr = np.ascontiguousarray(levels.transpose(0, 1, 3, 2))  # (1, 256, 1, 3): every grey level
    got = to_input_tensor(bgr, Normalization(mean=tuple(mean), std=tuple(std)))
    rgb = bgr[..., ::-1].astype(np.float32)
    want = ((rgb - mean) / std).transpose(0, 3, 1, 2)
    assert got.dtype == np.float32 and np.array_equal(got, want)
    assert not np.array_equal(want, ((rgb - mean) * (1 / std)).transpose(0, 3, 1, 2))


def test_flip_batch_is_the_normalised_mirror_images_in_both_channel_orders():
    """``with_flipped``: rows N..2N-1 equal normalising the left-right mirrored crops on their own
    (same float32 values), rows 0..N-1 equal the plain call; for RGB and BGR cards."""
    from service.cards import Normalization
    from service.pipelines.common import to_input_tensor

    crops = np.random.default_rng(3).integers(0, 256, (3, 8, 6, 3), dtype=np.uint8)
    for order in ("rgb", "bgr"):
        norm = Normalization(
            mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375), channel_order=order
        )
        both = to_input_tensor(crops, norm, with_flipped=True)
        assert both.shape == (6, 3, 8, 6) and both.dtype == np.float32
        assert np.array_equal(both[:3], to_input_tensor(crops, norm))
        mirrored = np.ascontiguousarray(crops[:, :, ::-1])
        assert np.array_equal(both[3:], to_input_tensor(mirrored, norm))
        assert both[3, 0, 0, 0] == both[0, 0, 0, 5]  # column 0 of the flip = last column
