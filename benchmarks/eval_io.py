"""Files of an ``hrnet-eval`` run: the resumable JSON-lines prediction log and atomic writes.

``OUT/predictions.jsonl`` holds one JSON object per finished image, each with a unique ``"key"``
(the image id, or the image's relative path for segmentation). Lines are appended and flushed one
by one, so a killed run loses at most the line being written; on the next start
:meth:`PredictionLog.load` drops a torn last line (truncating the file back to the last newline),
keeps the first record of any repeated key, and the run skips every key already present.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, TextIO


def atomic_write_text(path: Path | str, text: str) -> Path:
    """Write ``text`` to ``path`` via a temporary file in the same folder and ``os.replace``,
    so readers see either the old or the new complete file. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_json(path: Path | str, obj: Any, indent: int | None = 2) -> Path:
    """:func:`atomic_write_text` of ``json.dumps(obj)`` (NaN written as ``NaN``)."""
    return atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")


class PredictionLog:
    """Append-only JSON-lines log of per-image predictions, keyed by ``record["key"]``.

    ``load()`` returns ``{key: record}`` (first occurrence wins) and repairs a torn last line;
    ``append(record)`` writes one line and flushes it. Undecodable complete lines are counted in
    ``bad_lines`` and skipped. Not thread-safe: call from one thread (the event loop).
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.bad_lines = 0
        self.torn_bytes = 0
        self.duplicates = 0
        self._fh: TextIO | None = None

    def load(self) -> dict[str, dict]:
        """Read the existing log (if any); see the class docstring."""
        records: dict[str, dict] = {}
        if not self.path.exists():
            return records
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1  # bytes up to and including the last newline
        if end < len(data):
            self.torn_bytes = len(data) - end
            with open(self.path, "r+b") as f:
                f.truncate(end)
        for line in data[:end].splitlines():
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                key = str(rec["key"])
            except (ValueError, KeyError, TypeError):
                self.bad_lines += 1
                continue
            if key in records:
                self.duplicates += 1
                continue
            records[key] = rec
        return records

    def append(self, record: dict) -> None:
        """Append ``record`` (must have a ``"key"``) as one line and flush it."""
        if "key" not in record:
            raise ValueError("a prediction record needs a 'key'")
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a", encoding="utf-8")
        self._fh.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._fh.flush()

    def close(self) -> None:
        """Close the append handle (``append`` reopens it)."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> PredictionLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
