"""Helpers for form fields that carry JSON (``boxes`` of ``/pose``, ``scales`` of ``/segment``)."""
from __future__ import annotations

import json


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
    except ValueError as exc:  # e.g. "Exceeds the limit (4300 digits) for integer string conversion"
        raise ValueError(f"not valid JSON: a number is too long ({exc})") from None
    except TypeError as exc:
        raise ValueError(f"not valid JSON: {exc}") from None
