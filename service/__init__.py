"""HRNet serving stack: the torch-free gateway (``service``) and its shared numpy/OpenCV pieces.

Importing the package caps the number of pixels OpenCV will decode from one file
(``OPENCV_IO_MAX_IMAGE_PIXELS``, unless the environment already sets it): OpenCV reads that variable
once, when its library loads (a static initialiser in ``imgcodecs/loadsave.cpp``, not lazily at the
first decode), so it must be in the environment before the process first imports ``cv2``; every
``service`` module that uses OpenCV is imported after this file runs. It is the backstop behind
:func:`service.imaging.decode_image`'s header check, for files whose header that check cannot read.
"""

from __future__ import annotations

import os as _os
import sys as _sys

#: OpenCV's per-file decode ceiling set here: 4x the default ``max_image_pixels`` (4096 x 4096),
#: i.e. at most ~200 MB for a BGR image.
OPENCV_MAX_IMAGE_PIXELS = 4 * 4096 * 4096

#: True when the ceiling is in force in this process: cv2 was not loaded before this package, or
#: the operator had already put ``OPENCV_IO_MAX_IMAGE_PIXELS`` in the environment.
OPENCV_PIXEL_CAP_ACTIVE = "cv2" not in _sys.modules or "OPENCV_IO_MAX_IMAGE_PIXELS" in _os.environ
_os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(OPENCV_MAX_IMAGE_PIXELS))
