"""COCO constants the tests restate independently of the code under test."""

from __future__ import annotations

import numpy as np

#: COCO person keypoint sigmas as published with the COCO keypoint evaluation (cocoapi), in the
#: 17-keypoint COCO order; the OKS of a keypoint uses ``(2 * sigma) ** 2``
COCO_SIGMAS = (
    np.array(
        [0.26, 0.25, 0.25, 0.35, 0.35, 0.79, 0.79, 0.72, 0.72, 0.62, 0.62]
        + [1.07, 1.07, 0.87, 0.87, 0.89, 0.89]
    )
    / 10.0
)
