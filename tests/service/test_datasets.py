"""Dataset metainfo: keypoint sets (service.datasets pose) and class sets (segmentation).

Expected values come from sources independent of the tables under test: the real annotation
files in ``shared/`` (their ``categories`` carry keypoint names and skeletons), pycocotools' own
COCO OKS sigmas, the Cityscapes labelId -> trainId definition (cityscapesScripts ``labels.py``)
checked pixel by pixel on a real Cityscapes label pair, and the Pascal VOC colour-map rule.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from service.datasets import (
    PoseDatasetInfo,
    SegDatasetInfo,
    get_pose_dataset,
    get_seg_dataset,
    list_pose_datasets,
    list_seg_datasets,
)

REPO_ROOT = Path(__file__).resolve().parents[2]

POSE_COUNTS = {
    "coco": 17,
    "coco_aic": 19,
    "horse10": 22,
    "macaque": 17,
    "atrw": 15,
    "dlc_openfield": 4,
}
SEG_COUNTS = {
    "cityscapes": 19,
    "ade20k": 150,
    "voc": 21,
    "pascal_context": 60,
    "pascal_context_59": 59,
}


# ----------------------------------------------------------------------------- lookup / counts


def test_pose_dataset_names_and_counts():
    assert list_pose_datasets() == sorted(POSE_COUNTS)
    for name, k in POSE_COUNTS.items():
        info = get_pose_dataset(name)
        assert isinstance(info, PoseDatasetInfo)
        assert info.name == name
        assert info.num_keypoints == k == len(info.keypoint_names) == len(info.flip_indices)


def test_seg_dataset_names_and_counts():
    assert list_seg_datasets() == sorted(SEG_COUNTS)
    for name, c in SEG_COUNTS.items():
        info = get_seg_dataset(name)
        assert isinstance(info, SegDatasetInfo)
        assert info.num_classes == c == len(info.classes) == len(info.palette)


def test_unknown_names_raise_keyerror_listing_known():
    with pytest.raises(KeyError) as e:
        get_pose_dataset("coco17")
    assert "coco17" in str(e.value) and "horse10" in str(e.value) and "atrw" in str(e.value)
    with pytest.raises(KeyError) as e:
        get_seg_dataset("pascal_context_60")
    assert "pascal_context_59" in str(e.value) and "cityscapes" in str(e.value)
    with pytest.raises(KeyError):
        get_pose_dataset("cityscapes")  # a seg dataset is not a pose dataset


def test_import_is_torch_free():
    code = (
        "import sys, service.datasets, service.datasets.info; "
        "sys.exit(1 if 'torch' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT).returncode == 0


# ------------------------------------------------------------------ against real annotation files


@pytest.mark.parametrize(
    "dataset,ann",
    [
        ("coco", "mmpose_tests/coco/test_coco.json"),
        ("coco", "coco_mini/annotations/person_keypoints_train2017.json"),
        ("macaque", "mmpose_tests/macaque/test_macaque.json"),
        ("atrw", "mmpose_tests/atrw/test_atrw.json"),
        ("horse10", "mmpose_tests/horse10/test_horse10.json"),
    ],
)
def test_keypoint_names_and_skeleton_match_annotation_files(shared, dataset, ann):
    cat = json.loads((shared / "data" / ann).read_text())["categories"][0]
    info = get_pose_dataset(dataset)
    assert list(info.keypoint_names) == cat["keypoints"]
    links = cat.get("skeleton") or []
    if dataset in ("coco", "macaque"):
        # COCO-format skeletons are 1-based; MMPose lists the same links in the same order
        assert [tuple(link) for link in info.skeleton] == [(a - 1, b - 1) for a, b in links]
    elif dataset == "atrw":
        assert [tuple(link) for link in info.skeleton] == [
            tuple(link) for link in links
        ]  # 0-based there
    else:
        assert links == [] and len(info.skeleton) == 18  # Horse-10 json carries none


def test_coco_aic_extends_coco_with_aic_head_top_and_neck(shared):
    coco, union = get_pose_dataset("coco"), get_pose_dataset("coco_aic")
    assert union.keypoint_names[:17] == coco.keypoint_names
    assert union.flip_indices[:17] == coco.flip_indices
    assert union.sigmas[:17] == coco.sigmas
    aic = json.loads((shared / "data/mmpose_tests/aic/test_aic.json").read_text())
    aic_names = aic["categories"][0]["keypoints"]
    assert aic_names[12:] == ["Head top", "Neck"]
    assert [n.replace(" ", "_").lower() for n in aic_names[12:]] == list(union.keypoint_names[17:])
    assert union.flip_indices[17:] == (17, 18)  # midline keypoints map to themselves
    assert union.skeleton[-1] == (17, 18)


# ------------------------------------------------------------------------------- flip / sigmas


def _mirror_name(name: str) -> str:
    """Independent rule: swap the words left/right (any case), keep everything else."""

    def swap(m: re.Match) -> str:
        w = m.group(0)
        out = {"left": "right", "right": "left"}[w.lower()]
        return out.capitalize() if w[0].isupper() else out

    return re.sub(r"(?i)left|right", swap, name)


@pytest.mark.parametrize("name", sorted(POSE_COUNTS))
def test_flip_indices_are_involutions_that_swap_left_and_right(name):
    info = get_pose_dataset(name)
    flip = np.asarray(info.flip_indices)
    k = info.num_keypoints
    assert sorted(flip.tolist()) == list(range(k))
    np.testing.assert_array_equal(flip[flip], np.arange(k))
    for i, j in enumerate(flip):
        assert info.keypoint_names[j] == _mirror_name(info.keypoint_names[i])
    assert all(flip[a] == b and a < b for a, b in info.flip_pairs)


def test_flip_pair_counts():
    # COCO: eyes, ears, shoulders, elbows, wrists, hips, knees, ankles = 8 pairs + nose
    assert len(get_pose_dataset("coco").flip_pairs) == 8
    assert len(get_pose_dataset("coco_aic").flip_pairs) == 8
    # ATRW: ears, shoulders, front paws, hips, knees, back paws = 6 pairs; nose, tail, center
    assert len(get_pose_dataset("atrw").flip_pairs) == 6
    # Horse-10 (Near/Off side names): upstream defines no swaps
    assert get_pose_dataset("horse10").flip_pairs == ()
    assert get_pose_dataset("coco").flip_pairs[0] == (1, 2)  # left_eye <-> right_eye


def test_coco_sigmas_equal_pycocotools():
    from pycocotools.cocoeval import Params

    expected = Params(iouType="keypoints").kpt_oks_sigmas
    got = get_pose_dataset("coco").sigmas_array()
    assert got.dtype == np.float32 and got.shape == (17,)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-7)
    # (.26 + 2*(.25 + .35 + .79 + .72 + .62 + 1.07 + .87 + .89)) / 10 = 11.38 / 10
    coco_sum = float(np.sum(np.asarray(get_pose_dataset("coco").sigmas)))
    assert coco_sum == pytest.approx(1.138, abs=1e-9)
    assert get_pose_dataset("macaque").sigmas == get_pose_dataset("coco").sigmas


def test_atrw_has_its_own_sigmas():
    info = get_pose_dataset("atrw")
    assert len(info.sigmas) == 15
    assert sum(info.sigmas) == pytest.approx(0.7181, abs=1e-9)  # summed by hand
    assert info.sigmas[info.index("nose")] == 0.0831
    assert info.sigmas[info.index("left_ear")] == 0.0277


def test_horse10_has_no_sigmas():
    info = get_pose_dataset("horse10")
    assert info.sigmas == ()
    with pytest.raises(ValueError):
        info.sigmas_array()


def test_skeleton_links_in_range_and_colours_are_rgb():
    for name in POSE_COUNTS:
        info = get_pose_dataset(name)
        k = info.num_keypoints
        assert all(0 <= a < k and 0 <= b < k and a != b for a, b in info.skeleton)
        assert len(info.keypoint_colors) == k and len(info.link_colors) == len(info.skeleton)
        arr = np.asarray(info.keypoint_colors + info.link_colors)
        assert arr.shape[1] == 3 and arr.min() >= 0 and arr.max() <= 255


def test_index_lookup():
    coco = get_pose_dataset("coco")
    assert coco.index("left_wrist") == 9 and coco.index("right_ankle") == 16
    with pytest.raises(KeyError, match="left_paw"):
        coco.index("left_paw")


def test_pose_info_validation():
    ok = dict(
        name="t",
        keypoint_names=("a", "left_b", "right_b"),
        skeleton=((0, 1),),
        flip_indices=(0, 2, 1),
        sigmas=(0.1, 0.2, 0.2),
    )
    PoseDatasetInfo(**ok)
    for bad in (
        dict(flip_indices=(0, 1, 1)),  # not a permutation
        dict(flip_indices=(1, 2, 0)),  # permutation, not an involution
        dict(sigmas=(0.1, 0.2)),  # wrong length
        dict(skeleton=((0, 3),)),  # out of range
        dict(keypoint_names=("a", "a", "b")),
    ):  # duplicate name
        with pytest.raises(ValueError):
            PoseDatasetInfo(**{**ok, **bad})
    with pytest.raises(ValueError, match="unknown keypoint"):
        PoseDatasetInfo.from_rows("t", [("a", "b", None, (0, 0, 0))], [])


def test_records_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_pose_dataset("coco").name = "x"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_seg_dataset("voc").classes = ()  # type: ignore[misc]


# ------------------------------------------------------------------------------- segmentation

# cityscapesScripts labels.py: name -> labelId for the 19 evaluated classes
CITYSCAPES_LABEL_IDS = {
    "road": 7,
    "sidewalk": 8,
    "building": 11,
    "wall": 12,
    "fence": 13,
    "pole": 17,
    "traffic light": 19,
    "traffic sign": 20,
    "vegetation": 21,
    "terrain": 22,
    "sky": 23,
    "person": 24,
    "rider": 25,
    "car": 26,
    "truck": 27,
    "bus": 28,
    "train": 31,
    "motorcycle": 32,
    "bicycle": 33,
}


def test_cityscapes_class_order_matches_real_train_id_labels(shared):
    import cv2

    d = shared / "data/cityscapes_sample"
    stem = "frankfurt_000000_000294_gtFine"
    label_ids = cv2.imread(str(d / f"{stem}_labelIds.png"), cv2.IMREAD_UNCHANGED)
    train_ids = cv2.imread(str(d / f"{stem}_labelTrainIds.png"), cv2.IMREAD_UNCHANGED)
    info = get_seg_dataset("cityscapes")
    assert set(info.classes) == set(CITYSCAPES_LABEL_IDS)
    lut = np.full(256, 255, np.uint8)
    for c, name in enumerate(info.classes):
        lut[CITYSCAPES_LABEL_IDS[name]] = c
    mapped = lut[label_ids]
    # The sample's two PNGs were resized separately, so a few boundary pixels disagree; every
    # labelId's majority trainId must still be the mapped one, and >= 99% of pixels agree.
    for v in np.unique(label_ids):
        ids, counts = np.unique(train_ids[label_ids == v], return_counts=True)
        assert ids[np.argmax(counts)] == lut[v], f"labelId {v}"
    assert np.mean(mapped == train_ids) >= 0.99
    assert len(np.unique(mapped[mapped != 255])) >= 9  # many classes covered, not just one


def test_cityscapes_palette_spot_checks():
    info = get_seg_dataset("cityscapes")
    pal = dict(zip(info.classes, info.palette))
    # official Cityscapes colours (cityscapesScripts labels.py)
    assert pal["road"] == (128, 64, 128)
    assert pal["sky"] == (70, 130, 180)
    assert pal["person"] == (220, 20, 60)
    assert pal["bicycle"] == (119, 11, 32)


def _voc_colormap(n: int) -> list[tuple[int, int, int]]:
    """The Pascal VOC devkit colour map: bits of the class id spread over r, g, b from the MSB."""
    out = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out.append((r, g, b))
    return out


def test_voc_classes_and_palette():
    info = get_seg_dataset("voc")
    assert info.classes[0] == "background" and info.classes[15] == "person"
    assert info.classes[-1] == "tvmonitor"
    assert list(info.palette) == _voc_colormap(21)


def test_ade20k_and_pascal_context():
    ade = get_seg_dataset("ade20k")
    assert ade.classes[:3] == ("wall", "building", "sky") and ade.classes[-1] == "flag"
    assert ade.reduce_zero_label is True
    pc, pc59 = get_seg_dataset("pascal_context"), get_seg_dataset("pascal_context_59")
    assert pc.classes[0] == "background" and pc.reduce_zero_label is False
    assert pc59.classes == pc.classes[1:] and pc59.palette == pc.palette[1:]
    assert pc59.reduce_zero_label is True
    assert get_seg_dataset("cityscapes").reduce_zero_label is False


@pytest.mark.parametrize("name", sorted(SEG_COUNTS))
def test_palettes_are_uint8_triples_of_the_right_count(name):
    info = get_seg_dataset(name)
    arr = info.palette_array()
    assert arr.dtype == np.uint8 and arr.shape == (SEG_COUNTS[name], 3)
    assert all(
        len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c) for c in info.palette
    )
    assert len(set(info.classes)) == len(info.classes)
    # colouring a label map is a single gather
    labels = np.array([[0, SEG_COUNTS[name] - 1]])
    np.testing.assert_array_equal(arr[labels][0, 1], np.asarray(info.palette[-1], np.uint8))


def test_seg_info_validation():
    SegDatasetInfo("t", ("a", "b"), ((0, 0, 0), (1, 2, 3)))
    with pytest.raises(ValueError):
        SegDatasetInfo("t", ("a", "b"), ((0, 0, 0),))
    with pytest.raises(ValueError):
        SegDatasetInfo("t", ("a", "a"), ((0, 0, 0), (1, 1, 1)))
    with pytest.raises(ValueError):
        SegDatasetInfo("t", ("a",), ((0, 0, 256),))
