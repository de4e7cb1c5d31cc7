"""Decompression bombs and JPEG trailers (review findings 4, 8): header sizes, OpenCV's pixel cap,
truncation (service.imaging).
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from service.imaging import decode_image, header_size, jpeg_is_complete, jpeg_scan
from tests.support.gateway import backend, client, error_of, repo

REPO_ROOT = Path(__file__).resolve().parents[2]


def _webp(fourcc: bytes, body: bytes) -> bytes:
    chunk = fourcc + len(body).to_bytes(4, "little") + body + (b"\x00" if len(body) % 2 else b"")
    return b"RIFF" + (4 + len(chunk)).to_bytes(4, "little") + b"WEBP" + chunk


def webp_vp8l(w: int, h: int) -> bytes:
    bits = (w - 1) | ((h - 1) << 14)
    return _webp(b"VP8L", b"\x2f" + bits.to_bytes(4, "little") + b"\x00" * 11)


def webp_vp8(w: int, h: int) -> bytes:
    return _webp(
        b"VP8 ",
        b"\x00\x00\x00\x9d\x01\x2a"
        + w.to_bytes(2, "little")
        + h.to_bytes(2, "little")
        + b"\x00" * 10,
    )


def webp_vp8x(w: int, h: int) -> bytes:
    return _webp(
        b"VP8X", b"\x00\x00\x00\x00" + (w - 1).to_bytes(3, "little") + (h - 1).to_bytes(3, "little")
    )


def jpeg_with_fill_bytes(w: int, h: int) -> bytes:
    """SOI, APP0, three 0xFF fill bytes, SOF0 claiming w x h, SOS, a little data, EOI."""
    app0 = b"\xff\xe0" + (16).to_bytes(2, "big") + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof = (
        b"\xff\xff\xff\xff\xc0"
        + (17).to_bytes(2, "big")
        + b"\x08"
        + h.to_bytes(2, "big")
        + w.to_bytes(2, "big")
        + b"\x03\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    )
    sos = b"\xff\xda" + (12).to_bytes(2, "big") + b"\x03\x01\x00\x02\x11\x03\x11\x00\x3f\x00"
    return b"\xff\xd8" + app0 + sof + sos + b"\x12\x34" * 8 + b"\xff\xd9"


def png_header(w: int, h: int) -> bytes:
    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    "data, size",
    [
        (webp_vp8l(16383, 16383), (16383, 16383)),
        (webp_vp8(16383, 16383), (16383, 16383)),
        (webp_vp8x(20000, 30000), (20000, 30000)),
        (jpeg_with_fill_bytes(12000, 12000), (12000, 12000)),
        (png_header(20000, 20000), (20000, 20000)),
    ],
)
def test_bomb_headers_are_413_without_decoding(client, monkeypatch, data, size):
    fmt = {b"RIFF": "webp", b"\xff\xd8\xff\xe0": "jpeg", b"\x89PNG": "png"}
    assert header_size(data, next(v for k, v in fmt.items() if data.startswith(k))) == size

    def no_decode(*a, **k):
        raise AssertionError("cv2.imdecode must not be called for an oversized header")

    monkeypatch.setattr(cv2, "imdecode", no_decode)
    r = client.post("/pose", files={"image": ("x", data)}, data={"boxes": "[[1, 1, 5, 5]]"})
    assert f"{size[0]}x{size[1]}" in error_of(r, 413, "payload_too_large")


def test_real_files_header_sizes():
    a = np.random.default_rng(0).integers(0, 255, (50, 61, 4), np.uint8)
    for img, ext, params in [
        (a[..., :3], ".webp", [cv2.IMWRITE_WEBP_QUALITY, 80]),  # VP8
        (a, ".webp", [cv2.IMWRITE_WEBP_QUALITY, 80]),  # VP8X
        (a[..., :3], ".webp", [cv2.IMWRITE_WEBP_QUALITY, 101]),  # VP8L
        (a[..., :3], ".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]),
        (a[..., :3], ".bmp", []),
    ]:
        data = cv2.imencode(ext, img, params)[1].tobytes()
        fmt = {".webp": "webp", ".jpg": "jpeg", ".bmp": "bmp"}[ext]
        assert header_size(data, fmt) == (61, 50), (ext, params)
    # a fill byte before the SOF of a real JPEG: libjpeg decodes it, the header walk finds SOF
    jpg = cv2.imencode(".jpg", a[..., :3])[1].tobytes()
    i = jpg.find(b"\xff\xc0")
    filled = jpg[:i] + b"\xff\xff" + jpg[i:]
    assert header_size(filled, "jpeg") == (61, 50)
    assert decode_image(filled, 10_000).shape == (50, 61, 3)
    # BITMAPCOREHEADER (12 bytes): 16-bit width/height
    core = (
        b"BM"
        + (26 + 3).to_bytes(4, "little")
        + b"\x00" * 4
        + (26).to_bytes(4, "little")
        + (12).to_bytes(4, "little")
        + (7).to_bytes(2, "little")
        + (5).to_bytes(2, "little")
        + (1).to_bytes(2, "little")
        + (24).to_bytes(2, "little")
    )
    assert header_size(core, "bmp") == (7, 5)


_SUBPROCESS_ENV = {k: v for k, v in os.environ.items() if k != "OPENCV_IO_MAX_IMAGE_PIXELS"}


def _run_python(code: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        env=_SUBPROCESS_ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_opencv_reads_its_pixel_cap_when_the_library_loads_not_lazily():
    code = """
import os, numpy as np
{before}
import cv2
{after}
png = cv2.imencode('.png', np.zeros((20, 20, 3), np.uint8))[1]
try:
    print(cv2.imdecode(png, cv2.IMREAD_COLOR).shape)
except cv2.error:
    print('refused')
"""
    setenv = "os.environ['OPENCV_IO_MAX_IMAGE_PIXELS'] = '100'"
    # 20 x 20 = 400 pixels > 100: refused only when the variable was set before cv2 loaded
    assert _run_python(code.format(before=setenv, after="")) == "refused"
    assert _run_python(code.format(before="", after=setenv)) == "(20, 20, 3)"


def test_undetected_size_is_caught_by_the_opencv_cap():
    """With the header walk disabled, OpenCV's own ceiling (set by ``import service``) turns the
    16383 x 16383 WebP (268 Mpx > 67 Mpx) into a 413, before pixels are allocated."""
    code = f"""
import service.imaging as im
import service
assert service.OPENCV_PIXEL_CAP_ACTIVE
im.header_size = lambda data, fmt: None
try:
    im.decode_image({webp_vp8l(16383, 16383)!r}, 10 ** 12)
    print('decoded')
except im.PayloadTooLarge as exc:
    print('413', exc)
"""
    assert _run_python(code).startswith("413")


def test_jpeg_trailing_bytes_accepted_truncation_rejected(client, shared):
    data = (shared / "data" / "samples" / "coco_val2017_000000000785.jpg").read_bytes()
    ok = client.post(
        "/pose",
        files={"image": ("x.jpg", data + b"\x00\x00trailing bytes")},
        data={"boxes": "[[10, 10, 100, 200]]"},
    )
    assert ok.status_code == 200, ok.text
    assert ok.json()["image_size"] == [640, 425]
    r = client.post(
        "/pose",
        files={"image": ("x.jpg", data[: len(data) // 2])},
        data={"boxes": "[[10, 10, 100, 200]]"},
    )
    assert "truncated" in error_of(r, 415, "invalid_image")


def test_exif_thumbnail_eoi_does_not_hide_truncation(shared):
    """An APP1 segment carrying a complete thumbnail (its own SOS and EOI) before the main image:
    the main scan is found by walking segments, so a truncated main image is still caught (a plain
    ``find(FFDA)`` would stop at the thumbnail's SOS and accept it)."""
    data = (shared / "data" / "samples" / "coco_val2017_000000000785.jpg").read_bytes()
    thumb = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
    payload = b"Exif\x00\x00" + thumb
    app1 = b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload
    full = data[:2] + app1 + data[2:]
    sos = jpeg_scan(full)[1]
    assert sos is not None and sos > 2 + len(app1) and full[sos : sos + 2] == b"\xff\xda"
    assert jpeg_is_complete(full)
    assert jpeg_is_complete(full + b"junk after EOI")
    truncated = full[: sos + (len(full) - sos) // 2]
    assert not jpeg_is_complete(truncated)
    assert full.find(b"\xff\xda") < truncated.rfind(b"\xff\xd9")  # the naive rule would accept
