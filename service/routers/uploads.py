"""Reading an uploaded image with the configured size limits (shared by every endpoint)."""

from __future__ import annotations

import asyncio

import numpy as np
from fastapi import UploadFile

from ..errors import PayloadTooLarge
from ..imaging import decode_image
from ..settings import Settings


async def read_image(upload: UploadFile, settings: Settings) -> np.ndarray:
    """Read the upload (at most ``max_upload_bytes``) and decode it to ``(H, W, 3) uint8`` BGR.

    Decoding runs in a worker thread (the event loop keeps serving other requests). Raises
    PayloadTooLarge (413) for an oversized file or image, InvalidImage (415) otherwise.
    """
    data = await upload.read(settings.max_upload_bytes + 1)
    if len(data) > settings.max_upload_bytes:
        raise PayloadTooLarge(f"the uploaded file exceeds {settings.max_upload_bytes} bytes")
    return await asyncio.to_thread(decode_image, data, settings.max_image_pixels)
