"""Decoding uploaded images with clear errors (never a 500 for a bad file) and no decompression bombs.

The pixel limit is enforced on the file's header **before** any pixel is decoded, for every
accepted container: PNG (IHDR), BMP (BITMAPCOREHEADER / BITMAPINFOHEADER and later), JPEG (the
first SOF segment, found the way libjpeg finds markers: extraneous bytes and ``0xFF`` fill bytes
skipped) and WebP (``VP8 ``, ``VP8L`` and ``VP8X`` chunks). A file whose size cannot be read there
is decoded under OpenCV's own ceiling (``OPENCV_IO_MAX_IMAGE_PIXELS``, set by ``service/__init__``
before cv2 loads), which OpenCV checks after reading the header and before allocating the image.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np

from . import OPENCV_MAX_IMAGE_PIXELS, OPENCV_PIXEL_CAP_ACTIVE
from .errors import InvalidImage, PayloadTooLarge

log = logging.getLogger(__name__)

# magic numbers of the accepted containers: JPEG, PNG, WebP (RIFF....WEBP), BMP
_SIGNATURES = {
    "jpeg": (b"\xff\xd8\xff",),
    "png": (b"\x89PNG\r\n\x1a\n",),
    "bmp": (b"BM",),
}
#: JPEG start-of-frame markers (baseline, extended, progressive, lossless, arithmetic, ...);
#: 0xC4 (DHT), 0xC8 (JPG) and 0xCC (DAC) are not frames.
_JPEG_SOF = frozenset(
    (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF)
)
#: markers without a length field: TEM, RST0-7, SOI
_JPEG_STANDALONE = frozenset((0x01, *range(0xD0, 0xD8), 0xD8))
_JPEG_MAX_SEGMENTS = 4096  # header segments examined before giving up (then OpenCV's cap guards)
_WEBP_MAX_CHUNKS = 64


def sniff_format(data: bytes) -> str | None:
    """Return ``'jpeg'|'png'|'webp'|'bmp'`` from the file's leading bytes, or None."""
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    for fmt, sigs in _SIGNATURES.items():
        if any(data.startswith(s) for s in sigs):
            return fmt
    return None


def _le(b: bytes) -> int:
    return int.from_bytes(b, "little")


def jpeg_scan(data: bytes) -> tuple[tuple[int, int] | None, int | None]:
    """Walk a JPEG's header segments: ``((width, height) of the first SOF or None, offset of the
    first top-level SOS marker or None)``.

    Marker search follows libjpeg's ``next_marker``: bytes other than ``0xFF`` between segments are
    skipped (libjpeg warns and goes on), any run of ``0xFF`` fill bytes before a marker code is
    skipped, ``FF 00`` is no marker; segments are skipped by their length, so markers inside
    APPn segments (e.g. an EXIF thumbnail's own SOS/EOI) are never seen. Stops at the first SOS, at
    EOI, after ``_JPEG_MAX_SEGMENTS`` segments, or at the end of the data. Never raises.
    """
    n = len(data)
    i = 2  # after SOI
    size: tuple[int, int] | None = None
    for _ in range(_JPEG_MAX_SEGMENTS):
        if i >= n:
            break
        if data[i] != 0xFF:  # extraneous bytes before a marker
            i = data.find(b"\xff", i)
            if i < 0:
                break
        while i < n and data[i] == 0xFF:  # the marker prefix and any fill bytes
            i += 1
        if i >= n:
            break
        marker = data[i]
        i += 1
        if marker == 0x00 or marker in _JPEG_STANDALONE:
            continue
        if marker == 0xD9:  # EOI before any scan
            break
        if i + 2 > n:
            break
        length = int.from_bytes(data[i : i + 2], "big")
        if length < 2:
            break
        if marker in _JPEG_SOF and size is None and i + 7 <= n:
            h = int.from_bytes(data[i + 3 : i + 5], "big")
            w = int.from_bytes(data[i + 5 : i + 7], "big")
            size = (w, h)
        if marker == 0xDA:
            return size, i - 2
        i += length
    return size, None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    """Largest ``(width, height)`` announced by a WebP file's top-level chunks, or None.

    ``VP8X`` (extended format): 24-bit canvas width-1 / height-1 at bytes 4..9 of the chunk;
    ``VP8 `` (lossy): after the 3-byte frame tag and the ``9d 01 2a`` start code, two 16-bit
    little-endian words whose low 14 bits are width and height; ``VP8L`` (lossless): after the
    ``0x2f`` signature, 14-bit width-1 and height-1 packed little-endian. (libwebp's
    ``WebPGetFeatures`` reads the same fields.) Chunks are walked by their RIFF sizes (padded to
    even), at most ``_WEBP_MAX_CHUNKS``.
    """
    n = len(data)
    pos = 12
    best: tuple[int, int] | None = None
    for _ in range(_WEBP_MAX_CHUNKS):
        if pos + 8 > n:
            break
        fourcc, clen, body = data[pos : pos + 4], _le(data[pos + 4 : pos + 8]), pos + 8
        dims = None
        if fourcc == b"VP8X" and body + 10 <= n:
            dims = (_le(data[body + 4 : body + 7]) + 1, _le(data[body + 7 : body + 10]) + 1)
        elif fourcc == b"VP8 " and body + 10 <= n:
            dims = (
                _le(data[body + 6 : body + 8]) & 0x3FFF,
                _le(data[body + 8 : body + 10]) & 0x3FFF,
            )
        elif fourcc == b"VP8L" and body + 5 <= n and data[body] == 0x2F:
            bits = _le(data[body + 1 : body + 5])
            dims = ((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
        if dims is not None and (best is None or dims[0] * dims[1] > best[0] * best[1]):
            best = dims
        pos = body + clen + (clen & 1)
    return best


def header_size(data: bytes, fmt: str) -> tuple[int, int] | None:
    """``(width, height)`` in pixels read from the file header without decoding, or None.

    ``fmt`` from :func:`sniff_format`. PNG: the IHDR chunk (must come first). BMP: 16-bit fields
    for a 12-byte BITMAPCOREHEADER, else signed 32-bit (height's sign is the row order), as
    OpenCV's BMP decoder reads them. JPEG: :func:`jpeg_scan`. WebP: :func:`_webp_size`.
    Never raises; None means "unknown" (the caller then relies on OpenCV's ceiling).
    """
    try:
        if fmt == "png" and len(data) >= 24 and data[12:16] == b"IHDR":
            return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        if fmt == "bmp" and len(data) >= 26:
            if _le(data[14:18]) == 12:
                return _le(data[18:20]), _le(data[20:22])
            return abs(int.from_bytes(data[18:22], "little", signed=True)), abs(
                int.from_bytes(data[22:26], "little", signed=True)
            )
        if fmt == "jpeg":
            return jpeg_scan(data)[0]
        if fmt == "webp":
            return _webp_size(data)
    except Exception:  # pragma: no cover - malformed header: let the decoder report it
        return None
    return None


def jpeg_is_complete(data: bytes, sos: int | None = None) -> bool:
    """True when an end-of-image marker (``FF D9``) follows the first scan's SOS marker.

    Bytes after EOI (padding, appended metadata) are allowed, as decoders ignore them. The SOS
    offset comes from :func:`jpeg_scan` (so an EXIF thumbnail's SOS/EOI inside APP1 does not count;
    pass ``sos`` when the scan was already done), falling back to the first ``FF DA`` in the file
    when the walk does not reach it.
    """
    if sos is None:
        sos = jpeg_scan(data)[1]
    if sos is None:
        sos = data.find(b"\xff\xda")
    return sos >= 0 and data.rfind(b"\xff\xd9") > sos


def _too_large(w: int, h: int, max_pixels: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"image is {w}x{h} = {w * h} pixels; the limit is {max_pixels}")


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Decode an uploaded JPEG/PNG/WebP/BMP file into an ``(H, W, 3) uint8`` **BGR** array.

    The pixel limit is checked on the header before decoding (:func:`header_size`); a file whose
    header gives no size is decoded under OpenCV's ceiling (:data:`service.OPENCV_MAX_IMAGE_PIXELS`)
    and checked again after decoding. Raises :class:`InvalidImage` (415) for empty, unknown,
    truncated (JPEG without EOI after its scan) or undecodable data, and :class:`PayloadTooLarge`
    (413) when ``W*H > max_pixels`` or OpenCV refuses the size.
    """
    if not data:
        raise InvalidImage("the 'image' file is empty")
    fmt = sniff_format(data)
    if fmt is None:
        raise InvalidImage("the 'image' file is not a JPEG, PNG, WebP or BMP image")
    sos = None
    if fmt == "jpeg":  # one header walk gives both the size and the scan offset
        size, sos = jpeg_scan(data)
    else:
        size = header_size(data, fmt)
    if size is not None and size[0] * size[1] > max_pixels:
        raise _too_large(size[0], size[1], max_pixels)
    if size is None:
        log.info(
            "%s header gives no size; decoding under OpenCV's %s-pixel ceiling%s",
            fmt,
            OPENCV_MAX_IMAGE_PIXELS,
            ""
            if OPENCV_PIXEL_CAP_ACTIVE
            else " (NOT in force: cv2 was imported before the service package)",
        )
    if fmt == "jpeg" and not jpeg_is_complete(data, sos):
        raise InvalidImage(
            "the JPEG 'image' file is truncated (no end-of-image marker after the image data)"
        )
    buf = np.frombuffer(data, dtype=np.uint8)
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    except cv2.error as exc:
        if "CV_IO_MAX_IMAGE" in str(exc):  # OpenCV's size ceiling (validateInputImageSize)
            raise PayloadTooLarge(
                f"the {fmt.upper()} image is larger than the decoder accepts "
                f"(limit {max_pixels} pixels)"
            ) from None
        raise InvalidImage(f"the {fmt.upper()} 'image' file could not be decoded") from None
    if img is None or img.size == 0:
        raise InvalidImage(
            f"the {fmt.upper()} 'image' file could not be decoded (corrupt or truncated)"
        )
    h, w = img.shape[:2]
    if h * w > max_pixels:
        raise _too_large(w, h, max_pixels)
    return img
