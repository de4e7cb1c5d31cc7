"""Hostile JSON in form fields (review finding 1): ``boxes`` and ``scales`` (service.forms,
service.boxes).
"""

from __future__ import annotations

import json

import pytest

from service.boxes import parse_boxes
from service.errors import InvalidBoxes
from service.pipelines.seg_plan import parse_scales
from tests.support.gateway import backend, client, error_of, png_image, repo


@pytest.mark.parametrize(
    "boxes, fragment",
    [
        ("[" * 50000 + "]" * 50000, "nested too deeply"),
        (json.dumps([[10**400, 0, 10, 10]]), "too large for a float"),
        ("[[" + "1" * 5000 + ", 0, 10, 10]]", "number is too long"),
    ],
)
def test_hostile_boxes_json_is_422(client, boxes, fragment):
    r = client.post("/pose", files={"image": ("x.png", png_image())}, data={"boxes": boxes})
    assert fragment in error_of(r, 422, "invalid_boxes")


def test_parse_boxes_hostile_json_direct():
    for text in (
        "[" * 50000 + "]" * 50000,
        "[[" + "9" * 5000 + ", 0, 1, 1]]",
        json.dumps([[0, 0, -(10**400), 1]]),
    ):
        with pytest.raises(InvalidBoxes):
            parse_boxes(text, "xywh", (100, 100), max_boxes=100000)
    # a field longer than 1000 characters per allowed box is refused before parsing
    with pytest.raises(InvalidBoxes, match="at most 2000"):
        parse_boxes(" " * 2001 + "[]", "xywh", (100, 100), max_boxes=2)


@pytest.mark.parametrize(
    "scales",
    [
        "[" * 50000 + "]" * 50000,  # over the 1000-character bound of the field
        "[" * 400 + "]" * 400,  # within it: parses, then "[[...]] is not a number"
        "[" + "1" * 5000 + "]",
        json.dumps([10**400]),
    ],
)
def test_hostile_scales_json_is_422(client, scales):
    r = client.post(
        "/segment", files={"image": ("x.png", png_image(8, 8))}, data={"scales": scales}
    )
    error_of(r, 422, "invalid_parameter")


def test_parse_scales_rejects_huge_integer():
    with pytest.raises(ValueError, match="too large"):
        parse_scales([10**400])


def test_load_json_field_turns_parser_failures_into_value_errors():
    from service.forms import load_json_field

    with pytest.raises(ValueError, match="nested too deeply"):  # RecursionError inside json
        load_json_field("[" * 100000 + "]" * 100000)
    with pytest.raises(ValueError, match="number is too long"):  # int_max_str_digits (4300)
        load_json_field("[" + "7" * 4301 + "]")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_json_field("[1,")
    assert load_json_field("[" + "7" * 4300 + "]") == [int("7" * 4300)]
