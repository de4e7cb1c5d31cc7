"""Decoding uploaded images with clear errors (never a 500 for a bad file)."""
from __future__ import annotations

import cv2
import numpy as np

from .errors import InvalidImage, PayloadTooLarge

# magic numbers of the accepted containers: JPEG, PNG, WebP (RIFF....WEBP), BMP
_SIGNATURES = {
    "jpeg": (b"\xff\xd8\xff",),
    "png": (b"\x89PNG\r\n\x1a\n",),
    "bmp": (b"BM",),
}


def sniff_format(data: bytes) -> str | None:
    """Return ``'jpeg'|'png'|'webp'|'bmp'`` from the file's leading bytes, or None."""
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    for fmt, sigs in _SIGNATURES.items():
        if any(data.startswith(s) for s in sigs):
            return fmt
    return None


def _header_size(data: bytes, fmt: str) -> tuple[int, int] | None:
    """Width, height from the header without decoding pixels (PNG/BMP/JPEG), for the pixel limit."""
    try:
        if fmt == "png" and len(data) >= 24:
            return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        if fmt == "bmp" and len(data) >= 26:
            return abs(int.from_bytes(data[18:22], "little", signed=True)), \
                abs(int.from_bytes(data[22:26], "little", signed=True))
        if fmt == "jpeg":
            i = 2
            while i + 9 < len(data):
                if data[i] != 0xFF:
                    return None
                marker = data[i + 1]
                if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
                    i += 2
                    continue
                length = int.from_bytes(data[i + 2:i + 4], "big")
                if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
                    h = int.from_bytes(data[i + 5:i + 7], "big")
                    w = int.from_bytes(data[i + 7:i + 9], "big")
                    return w, h
                i += 2 + length
    except Exception:  # malformed header: let the decoder report it
        return None
    return None


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Decode an uploaded JPEG/PNG/WebP/BMP file into an ``(H, W, 3) uint8`` **BGR** array.

    The pixel limit is checked on the header before decoding where the format allows, and again
    after decoding. Raises :class:`InvalidImage` (415) for empty, unknown, truncated or undecodable
    data, and :class:`PayloadTooLarge` (413) when ``W*H > max_pixels``.
    """
    if not data:
        raise InvalidImage("the 'image' file is empty")
    fmt = sniff_format(data)
    if fmt is None:
        raise InvalidImage("the 'image' file is not a JPEG, PNG, WebP or BMP image")
    size = _header_size(data, fmt)
    if size is not None and size[0] * size[1] > max_pixels:
        raise PayloadTooLarge(f"image is {size[0]}x{size[1]} = {size[0] * size[1]} pixels; "
                              f"the limit is {max_pixels}")
    if fmt == "jpeg" and not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        raise InvalidImage("the JPEG 'image' file is truncated (no end-of-image marker)")
    buf = np.frombuffer(data, dtype=np.uint8)
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if img is None or img.size == 0:
        raise InvalidImage(f"the {fmt.upper()} 'image' file could not be decoded (corrupt or truncated)")
    h, w = img.shape[:2]
    if h * w > max_pixels:
        raise PayloadTooLarge(f"image is {w}x{h} = {w * h} pixels; the limit is {max_pixels}")
    return img
