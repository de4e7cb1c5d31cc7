"""Encoding segmentation results: the label-map PNG, a colour overlay PNG, per-class pixel counts.

The overlay blends like MMSeg 1.x ``SegLocalVisualizer._draw_sem_seg``:
``(image * (1 - alpha) + colour * alpha).astype(uint8)`` (float64 arithmetic, truncation), colours
from the card's RGB palette. One deliberate difference: pixels whose label has no palette entry
(255 = ignore, or any id >= number of classes) keep the photo's pixel, where MMSeg blends them
with black.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

IGNORE_INDEX = 255


def _check_label(label: np.ndarray) -> np.ndarray:
    label = np.asarray(label)
    if label.ndim != 2 or label.dtype != np.uint8 or label.size == 0:
        raise ValueError(
            f"expected a non-empty (H, W) uint8 label map, got {label.shape} {label.dtype}"
        )
    return label


def encode_label_png(label: np.ndarray) -> bytes:
    """Single-channel 8-bit PNG of an ``(H, W)`` uint8 label map (class ids, 255 = ignore).

    Lossless: ``cv2.imdecode(png, cv2.IMREAD_UNCHANGED)`` gives the same array back.
    Raises ValueError for anything but a non-empty 2-D uint8 array.
    """
    label = _check_label(label)
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(label))
    if not ok:  # pragma: no cover - cv2 encodes any uint8 2-D array
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def default_palette(num_classes: int) -> np.ndarray:
    """A fixed ``(num_classes, 3)`` uint8 RGB palette for cards without one (seeded, stable)."""
    rng = np.random.default_rng(42)
    return rng.integers(0, 256, size=(num_classes, 3), dtype=np.uint8)


def colorize(
    label: np.ndarray, palette: Sequence[Sequence[int]] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Colour image of a label map: ``(H, W, 3)`` uint8 **BGR** and the ``(H, W)`` bool mask of
    pixels that got a colour (label < ``len(palette)``). ``palette``: RGB triples per class id.
    """
    label = _check_label(label)
    pal = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    if len(pal) > 255:
        raise ValueError(f"a palette of {len(pal)} colours does not fit uint8 class ids")
    lut = np.zeros((256, 3), np.uint8)
    lut[: len(pal)] = pal[:, ::-1]  # RGB -> BGR
    valid = np.zeros(256, bool)
    valid[: len(pal)] = True
    return lut[label], valid[label]


def overlay_image(
    image_bgr: np.ndarray,
    label: np.ndarray,
    palette: Sequence[Sequence[int]] | None = None,
    alpha: float = 0.5,
) -> np.ndarray:
    """Blend the palette colours of ``label`` over the photo: ``(H, W, 3)`` uint8 BGR.

    ``image_bgr``: ``(H, W, 3)`` uint8 with the label map's size; ``palette``: RGB per class id
    (None: :func:`default_palette` over the ids present); ``alpha`` in [0, 1] is the colour's
    weight. Coloured pixels become ``int(pixel * (1 - alpha) + colour * alpha)`` (MMSeg's
    visualiser); pixels without a palette entry (255) stay as they are.
    Raises ValueError for mismatched shapes or alpha outside [0, 1].
    """
    label = _check_label(label)
    image_bgr = np.asarray(image_bgr)
    if image_bgr.shape != label.shape + (3,) or image_bgr.dtype != np.uint8:
        raise ValueError(
            f"image {image_bgr.shape} {image_bgr.dtype} does not match label map {label.shape}"
        )
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if palette is None or len(palette) == 0:
        present = label[label != IGNORE_INDEX]
        colour, mask = colorize(
            label, default_palette(int(present.max()) + 1 if present.size else 0)
        )
    else:
        colour, mask = colorize(label, palette)
    blended = (image_bgr * (1.0 - alpha) + colour * alpha).astype(np.uint8)
    return np.where(mask[..., None], blended, image_bgr)


def overlay(
    image_bgr: np.ndarray,
    label: np.ndarray,
    palette: Sequence[Sequence[int]] | None = None,
    alpha: float = 0.5,
) -> bytes:
    """PNG bytes of :func:`overlay_image` (3-channel, viewable; decodes to the BGR array)."""
    ok, buf = cv2.imencode(".png", overlay_image(image_bgr, label, palette, alpha))
    if not ok:  # pragma: no cover
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def pixel_counts(label: np.ndarray, classes: Sequence[str]) -> dict[str, int]:
    """``{class name: number of pixels}`` for the classes present (count > 0), in class order.

    ``label``: ``(H, W)`` uint8; ids >= ``len(classes)`` (255 = ignore) are not counted.
    """
    label = _check_label(label)
    counts = np.bincount(label.ravel(), minlength=256)
    return {name: int(counts[i]) for i, name in enumerate(classes) if i < 256 and counts[i] > 0}
