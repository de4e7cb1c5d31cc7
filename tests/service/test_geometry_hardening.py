"""Geometry input checks (review finding 2): warp matrices refuse non-positive box scales
(service.geometry).
"""

from __future__ import annotations

import numpy as np
import pytest

from service.geometry import crop_persons, get_udp_warp_matrix, get_warp_matrix, warp_matrices


@pytest.mark.parametrize("scale", [(0.0, 10.0), (10.0, 0.0), (-5.0, 10.0), (np.nan, 10.0)])
def test_warp_matrices_reject_non_positive_scale(scale):
    with pytest.raises(ValueError, match="finite and positive"):
        warp_matrices(np.array([[5.0, 5.0]]), np.array([scale]), (192, 256))
    with pytest.raises(ValueError, match="finite and positive"):
        warp_matrices(np.array([[5.0, 5.0]]), np.array([scale]), (192, 256), use_udp=True)
    with pytest.raises(ValueError, match="finite and positive"):
        get_warp_matrix((5.0, 5.0), scale, 0.0, (192, 256))
    with pytest.raises(ValueError, match="finite and positive"):
        get_udp_warp_matrix((5.0, 5.0), scale, 0.0, (192, 256))
    with pytest.raises(ValueError):
        crop_persons(
            np.zeros((10, 10, 3), np.uint8), np.array([[5.0, 5.0]]), np.array([scale]), (192, 256)
        )
