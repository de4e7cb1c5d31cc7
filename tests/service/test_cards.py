"""Model cards typed per task (service.cards): dispatch on ``task``, required fields per task,
backward compatibility with untyped cards, refusal of another task's fields."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from service.cards import (
    BottomUpCard,
    DetectorCard,
    SegmentationCard,
    TopDownCard,
    load_card,
    make_card,
    parse_card,
)

COMMON = dict(
    input_size=(192, 256),
    inputs=[{"name": "input", "dims": [3, 256, 192]}],
    outputs=[{"name": "heatmaps", "dims": [3, 64, 48]}],
    normalization={"mean": (0, 0, 0), "std": (1, 1, 1)},
)
POSE = dict(keypoint_names=["a", "b", "c"], flip_indices=[0, 2, 1], skeleton=[(0, 1)])
CODEC = {"input_size": (192, 256), "heatmap_size": (48, 64)}

# An untyped card as the previous schema wrote it: every task's fields, at their defaults.
LEGACY_EMPTY = dict(
    codec=None,
    bbox_padding=1.25,
    use_udp=False,
    flip_test=True,
    shift_heatmap=True,
    keypoint_names=[],
    skeleton=[],
    flip_indices=[],
    sigmas=[],
    dataset=None,
    output_keypoint_indices=None,
    bottomup=None,
    detector=None,
    classes=[],
    palette=[],
    test_pipeline=None,
    align_corners=False,
)


def test_task_picks_the_card_type():
    td = make_card(name="td", task="topdown_pose", codec=CODEC, **POSE, **COMMON)
    bu = make_card(name="bu", task="bottomup_pose", bottomup={"num_joints": 3}, **POSE, **COMMON)
    det = make_card(name="det", task="detection", detector={}, **COMMON)
    seg = make_card(name="seg", task="segmentation", classes=["road", "sky"], **COMMON)
    assert [type(c) for c in (td, bu, det, seg)] == [
        TopDownCard,
        BottomUpCard,
        DetectorCard,
        SegmentationCard,
    ]
    assert td.codec.heatmap_size == (48, 64) and bu.bottomup.max_num_people == 30
    assert det.detector.nms_threshold == 0.3 and seg.test_pipeline is None
    # each type carries its task's fields only
    assert not hasattr(seg, "codec") and not hasattr(td, "classes") and not hasattr(bu, "codec")
    assert td.output_keypoint_names == ["a", "b", "c"] and bu.output_skeleton == [(0, 1)]


def test_round_trip_through_json(tmp_path):
    card = make_card(
        name="bu",
        task="bottomup_pose",
        bottomup={"num_joints": 3, "scale_factor": [2, 1, 0.5]},
        **POSE,
        **COMMON,
    )
    card.save(tmp_path)
    again = load_card(tmp_path)
    assert again == card and isinstance(again, BottomUpCard)
    assert json.loads((tmp_path / "card.json").read_text())["task"] == "bottomup_pose"
    assert parse_card(card) == card


@pytest.mark.parametrize(
    "task, fields, missing",
    [
        ("topdown_pose", POSE, "codec"),
        ("bottomup_pose", POSE, "bottomup"),
        ("detection", {}, "detector"),
        ("segmentation", {}, "classes"),
    ],
)
def test_each_task_requires_its_fields(task, fields, missing):
    with pytest.raises(ValidationError, match=missing):
        make_card(name="x", task=task, **fields, **COMMON)


def test_unknown_task_is_refused():
    with pytest.raises(ValidationError, match="tag 'tracking'"):
        make_card(name="x", task="tracking", **COMMON)


def test_untyped_cards_with_defaults_still_load():
    """Cards written before the per-task types hold all fields at their defaults; they load."""
    td = parse_card(
        {**LEGACY_EMPTY, "name": "td", "task": "topdown_pose", "codec": CODEC, **POSE, **COMMON}
    )
    seg = parse_card(
        {**LEGACY_EMPTY, "name": "seg", "task": "segmentation", "classes": ["road"], **COMMON}
    )
    det = parse_card({**LEGACY_EMPTY, "name": "det", "task": "detection", "detector": {}, **COMMON})
    assert isinstance(td, TopDownCard) and isinstance(seg, SegmentationCard)
    assert isinstance(det, DetectorCard)


@pytest.mark.parametrize(
    "task, extra, field",
    [
        ("segmentation", {"classes": ["road"], "codec": CODEC}, "codec"),
        ("segmentation", {"classes": ["road"], "bbox_padding": 1.0}, "bbox_padding"),
        ("detection", {"detector": {}, "palette": [(1, 2, 3)]}, "palette"),
        (
            "bottomup_pose",
            {"bottomup": {"num_joints": 3}, **POSE, "output_keypoint_indices": [0]},
            "output_keypoint_indices",
        ),
    ],
)
def test_another_tasks_field_with_a_value_is_refused(task, extra, field):
    with pytest.raises(ValidationError, match=rf"{field}\s+Extra inputs are not permitted"):
        make_card(name="x", task=task, **extra, **COMMON)


def test_pose_consistency_checks():
    with pytest.raises(ValidationError, match="permutation"):
        make_card(
            name="x",
            task="topdown_pose",
            codec=CODEC,
            keypoint_names=["a", "b"],
            flip_indices=[0, 0],
            **COMMON,
        )
    with pytest.raises(ValidationError, match="num_joints"):
        make_card(name="x", task="bottomup_pose", bottomup={"num_joints": 17}, **POSE, **COMMON)
    with pytest.raises(ValidationError, match="output_keypoint_indices"):
        make_card(
            name="x",
            task="topdown_pose",
            codec=CODEC,
            output_keypoint_indices=[5],
            **POSE,
            **COMMON,
        )
    with pytest.raises(ValidationError, match="2 colours for 1 classes"):
        make_card(
            name="x", task="segmentation", classes=["a"], palette=[(0, 0, 0), (1, 1, 1)], **COMMON
        )


def test_segmentation_card_refuses_more_classes_than_a_uint8_label_map_holds():
    """Label maps are uint8 with 255 as the ignore id: 255 classes (ids 0..254) load, 256 do
    not, when the card is parsed rather than on a request."""
    seg = dict(
        name="s",
        task="segmentation",
        input_size=(None, None),
        inputs=[{"name": "input", "dims": [3, -1, -1]}],
        outputs=[{"name": "logits", "dims": [255, -1, -1]}],
        normalization={"mean": (0, 0, 0), "std": (1, 1, 1)},
    )
    card = parse_card({**seg, "classes": [f"c{i}" for i in range(255)]})
    assert isinstance(card, SegmentationCard) and len(card.classes) == 255
    with pytest.raises(ValidationError, match="256 classes do not fit a uint8 label map"):
        parse_card({**seg, "classes": [f"c{i}" for i in range(256)]})
