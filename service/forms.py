"""Helpers for form fields that carry JSON (``boxes`` of ``/pose``, ``scales`` of ``/segment`` and
of bottom-up ``/pose``)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence

#: Limits on test-time scale ratios (each in (0, MAX_SCALE_RATIO], at most MAX_SCALES of them).
MAX_SCALES = 8
MAX_SCALE_RATIO = 4.0
#: Longest ``scales`` form field accepted (characters).
MAX_SCALES_CHARS = 1000


def load_json_field(text: str) -> object:
    """``json.loads`` of a form field that turns every failure into ``ValueError`` with a reason.

    Besides malformed JSON (``json.JSONDecodeError``) the standard parser raises
    ``RecursionError`` for deeply nested arrays (``"[" * 50000``) and ``ValueError`` for an integer
    literal of more than ``sys.get_int_max_str_digits()`` digits (4300 by default); both become a
    ``ValueError`` saying what is wrong, never an unhandled 500.
    """
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON: {exc}") from None
    except RecursionError:
        raise ValueError("not valid JSON: arrays nested too deeply") from None
    except (
        ValueError
    ) as exc:  # e.g. "Exceeds the limit (4300 digits) for integer string conversion"
        raise ValueError(f"not valid JSON: a number is too long ({exc})") from None
    except TypeError as exc:
        raise ValueError(f"not valid JSON: {exc}") from None


def validate_ratios(
    value: Sequence[float] | str | None, presets: Mapping[str, tuple[float, ...]]
) -> tuple[float, ...] | None:
    """Validate test-time scale ratios: a preset name or up to :data:`MAX_SCALES` finite numbers
    in (0, :data:`MAX_SCALE_RATIO`].

    Returns the ratios as floats (None for None). Raises ValueError with the reason otherwise
    (also for an integer too large for a float, which ``float()`` reports as ``OverflowError``).
    """
    if value is None:
        return None
    if isinstance(value, str):
        if value not in presets:
            raise ValueError(f"unknown scale preset '{value}'; known: {', '.join(presets)}")
        return presets[value]
    ratios = list(value)
    if not ratios:
        raise ValueError("scales must hold at least one ratio")
    if len(ratios) > MAX_SCALES:
        raise ValueError(f"at most {MAX_SCALES} scales are allowed, got {len(ratios)}")
    out = []
    for r in ratios:
        if isinstance(r, bool) or not isinstance(r, (int, float)):
            raise ValueError(f"scale {str(r)[:40]!r} is not a number")
        try:
            r = float(r)
        except OverflowError:  # an integer too large for a float, e.g. 10**400
            raise ValueError(
                f"scale {str(r)[:20]}... is too large; it must be a finite number in "
                f"(0, {MAX_SCALE_RATIO:g}]"
            ) from None
        if not math.isfinite(r) or not 0.0 < r <= MAX_SCALE_RATIO:
            raise ValueError(f"scale {r} must be a finite number in (0, {MAX_SCALE_RATIO:g}]")
        out.append(r)
    return tuple(out)


def load_json_list_field(
    text: str, field: str, max_chars: int, what: str = "values", note: str = ""
) -> list:
    """A form field that must hold a JSON list (``boxes``, ``scales``): at most ``max_chars``
    characters (checked before parsing), valid JSON (:func:`load_json_field`), a list.

    Raises ValueError naming ``field`` for each failure (``what`` names the list's items and
    ``note`` is appended to the length message); routers turn it into a 422.
    """
    if len(text) > max_chars:
        raise ValueError(
            f"'{field}' is {len(text)} characters long; at most {max_chars} are accepted{note}"
        )
    try:
        parsed = load_json_field(text)
    except ValueError as exc:
        raise ValueError(
            f"'{field}' must be a JSON list of {what}; {text[:40]!r} is {exc}"
        ) from None
    if not isinstance(parsed, list):
        raise ValueError(f"'{field}' must be a JSON list of {what}, got {text[:40]!r}")
    return parsed


def parse_scales_field(
    value: str | None, presets: Mapping[str, tuple[float, ...]]
) -> tuple[float, ...] | None:
    """The ``scales`` form field: empty/None, a preset name or a JSON list of ratios.

    Raises ValueError naming the problem for anything else (also hostile JSON: nesting too deep,
    numbers too long or too large, more than :data:`MAX_SCALES_CHARS` characters), or ratios
    outside (0, 4] / more than 8 (:func:`validate_ratios`). Routers turn it into a 422.
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    if text in presets:
        return presets[text]
    names = f" or one of {', '.join(presets)}" if presets else ""
    parsed = load_json_list_field(text, "scales", MAX_SCALES_CHARS, f"numbers{names}")
    try:
        return validate_ratios(parsed, presets)
    except ValueError as exc:
        raise ValueError(f"scales: {exc}") from None
