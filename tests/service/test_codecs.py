"""Heatmap codecs (MMPose 1.x MSRAHeatmap / UDPHeatmap semantics) against hand-derived numbers.

Setup: input 192x256, heatmap 48x64 (W=48, H=64), sigma 2, so the MSRA stride is exactly 4 and
the UDP encode factor is (191/47, 255/63), its decode factor (192/47, 256/63).

Measured on the synthetic peak exp(-((x-12.3)^2 + (y-20.7)^2) / 8) (48x64 map):
plain = (12.25, 20.75), error 0.05 px per axis (exact, hand-derived below);
DARK error 1.6e-4 heatmap px per axis; UDP encode -> decode error ~4e-5 heatmap px.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from service.cards import CodecSpec
from service.codecs import MSRAHeatmap, UDPHeatmap, build_codec, flip_heatmaps
from service.codecs.refine import get_heatmap_maximum
from service.geometry import (
    affine_transform_points,
    fix_aspect_ratio,
    get_udp_warp_matrix,
    keypoints_to_image,
)

W, H = 48, 64
INPUT = (192, 256)
XS = np.arange(W, dtype=np.float64)
YS = np.arange(H, dtype=np.float64)[:, None]


def gauss(x0: float, y0: float, sigma: float = 2.0, amp: float = 1.0) -> np.ndarray:
    return (amp * np.exp(-((XS - x0) ** 2 + (YS - y0) ** 2) / (2 * sigma**2))).astype(np.float32)


def random_batch(rng, b=3, k=17, noise=0.02) -> np.ndarray:
    hms = np.empty((b, k, H, W), np.float32)
    for i in range(b):
        for j in range(k):
            hms[i, j] = gauss(
                rng.uniform(-1, W), rng.uniform(-1, H), rng.uniform(1.5, 3), rng.uniform(0.2, 1)
            )
    return hms + rng.normal(0, noise, hms.shape).astype(np.float32)


# ---------------------------------------------------------------- argmax / plain refinement


def test_heatmap_maximum():
    hm = np.zeros((1, 3, 4, 5), np.float32)
    hm[0, 0, 2, 3] = 0.7
    hm[0, 1] = -0.5  # all negative -> -1
    hm[0, 2, 1, 1] = hm[0, 2, 3, 4] = 0.9  # tie -> first in row-major order
    locs, vals = get_heatmap_maximum(hm)
    np.testing.assert_array_equal(locs, [[[3, 2], [-1, -1], [1, 1]]])
    np.testing.assert_allclose(vals, [[0.7, -0.5, 0.9]])


def test_plain_decode_quarter_pixel():
    codec = MSRAHeatmap(INPUT, (W, H), sigma=2)
    kp, sc = codec.decode(gauss(12.3, 20.7)[None])
    # argmax (12, 21). x: hm[21,13] (dist 0.7) > hm[21,11] (dist 1.3) -> +0.25 -> 12.25;
    # y: hm[22,12] (dist 1.3) < hm[20,12] (dist 0.7) -> -0.25 -> 20.75. Input space: x4.
    assert kp.shape == (1, 1, 2) and sc.shape == (1, 1)
    np.testing.assert_allclose(kp[0, 0], [49.0, 83.0], atol=1e-5)
    assert np.all(np.abs(kp[0, 0] / 4 - [12.3, 20.7]) <= 0.25 + 1e-6)
    # score = map max = value at (12, 21) = exp(-(0.3^2 + 0.3^2) / 8)
    assert sc[0, 0] == pytest.approx(math.exp(-0.18 / 8), rel=1e-6)


def test_plain_decode_scale_factor_anisotropic():
    # input 200x256 over heatmap 50x32: stride (4, 8). Integer peak, equal neighbours -> no shift.
    codec = MSRAHeatmap((200, 256), (50, 32), sigma=2)
    hm = np.exp(-((np.arange(50) - 12.0) ** 2 + (np.arange(32)[:, None] - 20.0) ** 2) / 8).astype(
        np.float32
    )
    kp, _ = codec.decode(hm[None])
    np.testing.assert_allclose(kp[0, 0], [48.0, 160.0])


def test_plain_refinement_uses_upstream_bounds():
    codec = MSRAHeatmap(INPUT, (W, H), sigma=2)
    hm = np.zeros((4, H, W), np.float32)
    hm[0, 10, 1], hm[0, 10, 2] = 1.0, 0.5  # x = 1: upstream needs 1 < x -> no x step
    hm[1, 0, 10], hm[1, 0, 11], hm[1, 1, 10] = 1.0, 0.5, 0.4  # y = 0: no x step (0 < y), no y step
    hm[2, 10, W - 1], hm[2, 10, W - 2] = 1.0, 0.5  # last column: no x step
    hm[3, 10, 2], hm[3, 10, 3], hm[3, 11, 2] = 1.0, 0.5, 0.2  # x = 2, y = 10: both steps allowed
    kp, _ = codec.decode(hm)
    np.testing.assert_allclose(kp[0] / 4, [[1, 10], [10, 0], [W - 1, 10], [2.25, 10.25]])


def test_invalid_channels_decode_to_minus_one():
    hm = np.zeros((3, H, W), np.float32)  # channel 0 all zero
    hm[1] = -0.3  # all negative
    hm[1, 5, 5] = -0.1
    hm[2] = gauss(20, 30)
    for codec, factor in [
        (MSRAHeatmap(INPUT, (W, H), 2), (4.0, 4.0)),
        (MSRAHeatmap(INPUT, (W, H), 2, unbiased=True), (4.0, 4.0)),
        (UDPHeatmap(INPUT, (W, H), 2), (192 / 47, 256 / 63)),
    ]:
        kp, sc = codec.decode(hm)
        assert np.isfinite(kp).all()
        # upstream: location -1 in heatmap space, then scaled like any keypoint
        np.testing.assert_allclose(kp[0, :2], -np.array([factor, factor]), rtol=1e-6)
        np.testing.assert_allclose(sc[0, :2], [0.0, -0.1], rtol=1e-6)
        assert sc[0, 2] == pytest.approx(1.0)


# ---------------------------------------------------------------- DARK


def test_dark_decode_subpixel():
    codec = MSRAHeatmap(INPUT, (W, H), sigma=2, unbiased=True)
    hm = gauss(12.3, 20.7)
    kp, sc = codec.decode(hm[None])
    err = np.abs(kp[0, 0] / 4 - [12.3, 20.7])
    assert err.max() < 0.01  # measured 1.6e-4 heatmap px
    assert sc[0, 0] == pytest.approx(math.exp(-0.18 / 8), rel=1e-6)  # score is the un-blurred max
    np.testing.assert_array_equal(hm, gauss(12.3, 20.7))  # input not modified


def test_dark_leaves_border_peaks_unrefined():
    # upstream refines only when 1 < x < W-2 and 1 < y < H-2
    codec = MSRAHeatmap(INPUT, (W, H), sigma=2, unbiased=True)
    kp, _ = codec.decode(np.stack([gauss(1.3, 30.0), gauss(30.0, H - 2 + 0.2)]))
    np.testing.assert_allclose(kp[0] / 4, [[1, 30], [30, H - 2]], atol=1e-6)


def test_dark_encode_decode_round_trip():
    codec = MSRAHeatmap(INPUT, (W, H), sigma=2, unbiased=True)
    # interior points (within ~5 heatmap px of the border the blur's zero padding biases DARK:
    # measured 0.02 heatmap px at y = 3.4)
    kps = np.array([[[49.2, 82.8], [101.0, 33.7], [150.3, 200.1]]])
    enc = codec.encode(kps)
    kp, _ = codec.decode(enc["heatmaps"])
    np.testing.assert_allclose(kp, kps, atol=0.04)  # 0.01 heatmap px


# ---------------------------------------------------------------- UDP


def test_udp_decode_factor_is_input_over_heatmap_minus_one():
    # Exact Gaussian on integer pixel (24, 32): symmetric, so DARK-UDP adds ~0 and the output is
    # (24, 32) * input_size / (heatmap_size - 1), as upstream's decode (not (w-1)/(W-1)).
    codec = UDPHeatmap(INPUT, (W, H), sigma=2)
    kp, sc = codec.decode(gauss(24.0, 32.0)[None])
    np.testing.assert_allclose(kp[0, 0], [24 * 192 / 47, 32 * 256 / 63], atol=1e-4)
    assert sc[0, 0] == pytest.approx(1.0)


def test_udp_encode_decode_round_trip():
    codec = UDPHeatmap(INPUT, (W, H), sigma=2)
    hm_pts = np.array([[12.3, 20.7], [30.55, 40.15], [7.9, 9.45]])
    kps = hm_pts[None] * (np.array([191.0, 255.0]) / [47.0, 63.0])  # input space (encode factor)
    kp, sc = codec.decode(codec.encode(kps)["heatmaps"])
    decoded_hm = kp[0] / (np.array([192.0, 256.0]) / [47.0, 63.0])
    assert np.abs(decoded_hm - hm_pts).max() < 0.01  # measured ~4e-5 heatmap px
    np.testing.assert_allclose(sc[0, 0], math.exp(-(0.3**2 + 0.3**2) / 8), rtol=1e-5)


def test_udp_full_chain_is_identity_in_image_space():
    # image point -> UDP crop -> encode -> decode -> keypoints_to_image gives the point back
    codec = UDPHeatmap(INPUT, (W, H), sigma=2)
    center = np.array([300.0, 200.0])
    scale = fix_aspect_ratio(np.array([[150.0, 240.0]]), 0.75)[0]
    pts = np.array([[280.5, 150.25], [333.0, 260.0], [260.2, 201.7]])
    crop = affine_transform_points(pts, get_udp_warp_matrix(center, scale, 0.0, INPUT))
    kp, _ = codec.decode(codec.encode(crop[None])["heatmaps"])
    back = keypoints_to_image(kp, center[None], scale[None], INPUT)
    assert np.abs(back[0] - pts).max() < 0.05  # image px; box ~4 image px per heatmap px


def test_log_floor_differs_between_dark_and_udp():
    # Upstream floors the blurred map at 1e-10 before the log in refine_keypoints_dark, but clips
    # it to [1e-3, 50] in refine_keypoints_dark_udp. A peak of height 1e-3: DARK still sees the
    # Gaussian (the log is scale-invariant), DARK-UDP sees a flat map (all values clipped to 1e-3),
    # so it has zero gradient and returns the integer argmax (12, 21).
    hm = gauss(12.3, 20.7, amp=1e-3)[None]
    kp, sc = MSRAHeatmap(INPUT, (W, H), 2, unbiased=True).decode(hm)
    assert np.abs(kp[0, 0] / 4 - [12.3, 20.7]).max() < 0.01
    kp, sc = UDPHeatmap(INPUT, (W, H), 2).decode(hm)
    np.testing.assert_allclose(kp[0, 0], [12 * 192 / 47, 21 * 256 / 63], rtol=1e-6)
    assert sc[0, 0] == pytest.approx(1e-3 * math.exp(-0.18 / 8), rel=1e-5)


# ---------------------------------------------------------------- batching / references


def _ref_plain(hm, x, y):
    """Upstream refine_keypoints for one channel, written out as a scalar loop."""
    kx, ky = float(x), float(y)
    x, y = int(x), int(y)
    if 1 < x < W - 1 and 0 < y < H:
        kx += 0.25 * np.sign(hm[y, x + 1] - hm[y, x - 1])
    if 1 < y < H - 1 and 0 < x < W:
        ky += 0.25 * np.sign(hm[y + 1, x] - hm[y - 1, x])
    return kx, ky


def _ref_dark(logs, x, y):
    """Upstream refine_keypoints_dark step for one channel of the (blurred, log-ed) map."""
    x, y = int(x), int(y)
    if not (1 < x < W - 2 and 1 < y < H - 2):
        return float(x), float(y)
    L = logs.astype(np.float64)
    g = np.array([0.5 * (L[y, x + 1] - L[y, x - 1]), 0.5 * (L[y + 1, x] - L[y - 1, x])])
    dxx = 0.25 * (L[y, x + 2] - 2 * L[y, x] + L[y, x - 2])
    dyy = 0.25 * (L[y + 2, x] - 2 * L[y, x] + L[y - 2, x])
    dxy = 0.25 * (L[y + 1, x + 1] - L[y - 1, x + 1] - L[y + 1, x - 1] + L[y - 1, x - 1])
    hess = np.array([[dxx, dxy], [dxy, dyy]])
    if np.linalg.det(hess) == 0:
        return float(x), float(y)
    off = -np.linalg.solve(hess, g)
    return x + off[0], y + off[1]


def _ref_dark_udp(logs, x, y):
    """Upstream refine_keypoints_dark_udp step for one channel (edge-padded, step-1 differences)."""
    P = np.pad(logs.astype(np.float64), 1, mode="edge")
    i, j = int(y) + 1, int(x) + 1
    c = P[i, j]
    g = np.array([0.5 * (P[i, j + 1] - P[i, j - 1]), 0.5 * (P[i + 1, j] - P[i - 1, j])])
    dxx = P[i, j + 1] - 2 * c + P[i, j - 1]
    dyy = P[i + 1, j] - 2 * c + P[i - 1, j]
    dxy = 0.5 * (
        P[i + 1, j + 1]
        - P[i, j + 1]
        - P[i + 1, j]
        + 2 * c
        - P[i, j - 1]
        - P[i - 1, j]
        + P[i - 1, j - 1]
    )
    hess = np.array([[dxx, dxy], [dxy, dyy]]) + np.finfo(np.float32).eps * np.eye(2)
    off = np.linalg.solve(hess, g)
    return x - off[0], y - off[1]


def test_batched_decode_equals_per_sample_and_scalar_reference():
    from service.codecs.refine import gaussian_blur

    rng = np.random.default_rng(7)
    hms = random_batch(rng, 3, 17)
    plain = MSRAHeatmap(INPUT, (W, H), 2)
    dark = MSRAHeatmap(INPUT, (W, H), 2, unbiased=True)
    udp = UDPHeatmap(INPUT, (W, H), 2)
    blurred = gaussian_blur(hms, 11)
    for codec in (plain, dark, udp):
        kp, sc = codec.decode(hms)
        assert kp.shape == (3, 17, 2) and sc.shape == (3, 17) and kp.dtype == np.float32
        np.testing.assert_allclose(sc, hms.reshape(3, 17, -1).max(axis=2))
        for b in range(3):
            kb, sb = codec.decode(hms[b])
            np.testing.assert_array_equal(kb[0], kp[b])
            np.testing.assert_array_equal(sb[0], sc[b])
            for k in range(17):
                y, x = np.unravel_index(np.argmax(hms[b, k]), (H, W))
                if codec is plain:
                    ref = np.array(_ref_plain(hms[b, k], x, y)) * 4
                elif codec is dark:
                    ref = np.array(_ref_dark(np.log(np.maximum(blurred[b, k], 1e-10)), x, y)) * 4
                else:
                    ref = np.array(
                        _ref_dark_udp(np.log(np.clip(blurred[b, k], 1e-3, 50)), x, y)
                    ) * [192 / 47, 256 / 63]
                np.testing.assert_allclose(kp[b, k], ref, atol=1e-3)


def test_gaussian_blur_keeps_channel_max_and_matches_single_channel_opencv():
    import cv2

    from service.codecs.refine import gaussian_blur

    rng = np.random.default_rng(3)
    hms = random_batch(rng, 2, 3)
    out = gaussian_blur(hms, 11)
    np.testing.assert_allclose(out.reshape(6, -1).max(1), hms.reshape(6, -1).max(1), rtol=1e-6)
    pad = np.zeros((H + 10, W + 10), np.float32)
    pad[5:-5, 5:-5] = hms[1, 2]
    ref = cv2.GaussianBlur(pad, (11, 11), 0)[5:-5, 5:-5]
    ref *= hms[1, 2].max() / ref.max()
    np.testing.assert_allclose(out[1, 2], ref, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError):
        gaussian_blur(hms, 4)


# ---------------------------------------------------------------- encode


def test_msra_encode_peak_and_sigma():
    codec = MSRAHeatmap(INPUT, (W, H), sigma=2)
    enc = codec.encode(
        np.array([[[50.0, 82.0]]])
    )  # heatmap (12.5, 20.5) -> mu = int(+0.5) = (13, 21)
    hm, wt = enc["heatmaps"], enc["keypoint_weights"]
    assert hm.shape == (1, H, W) and hm.dtype == np.float32 and wt.shape == (1, 1)
    assert wt[0, 0] == 1
    assert np.unravel_index(np.argmax(hm[0]), (H, W)) == (21, 13) and hm[0, 21, 13] == 1.0
    assert hm[0, 21, 14] == pytest.approx(math.exp(-1 / 8), rel=1e-6)  # distance 1
    assert hm[0, 22, 14] == pytest.approx(math.exp(-2 / 8), rel=1e-6)  # diagonal
    assert hm[0, 21, 19] == pytest.approx(math.exp(-36 / 8), rel=1e-5)  # radius 3 sigma = 6: inside
    assert hm[0, 21, 20] == 0 and hm[0, 21, 6] == 0 and hm[0, 28, 13] == 0  # outside the window
    assert hm[0, 21, 7] > 0 and hm[0, 15, 13] > 0


def test_msra_encode_weights():
    codec = MSRAHeatmap(INPUT, (W, H), sigma=2)
    kps = np.array([[[50.0, 82.0], [60.0, 60.0], [-40.0, 100.0], [-12.0, 100.0], [80.0, 80.0]]])
    vis = np.array([[1.0, 0.0, 1.0, 1.0, 0.3]])
    enc = codec.encode(kps, vis)
    hm, wt = enc["heatmaps"], enc["keypoint_weights"]
    # invisible -> weight 0, empty; far outside (hm x = -10 -> window [-15, -2)) -> weight 0, empty;
    # partly outside (hm x = -3 -> mu = int(-2.5) = -2, truncation as upstream) -> weight 1 and
    # column 0 of row 25 holds exp(-(0 - (-2))^2 / 8); visibility 0.3 < 0.5 -> skipped, weight kept
    np.testing.assert_allclose(wt, [[1.0, 0.0, 0.0, 1.0, 0.3]])
    assert hm[1].max() == 0 and hm[2].max() == 0 and hm[4].max() == 0
    assert hm[3, 25, 0] == pytest.approx(math.exp(-0.5), rel=1e-6)
    assert hm[3, 25, 5] == 0  # window ends at int(-2 + 7) = 5 (exclusive)
    with pytest.raises(ValueError):
        codec.encode(np.zeros((2, 5, 2)))  # single instance only


def test_unbiased_encode_is_exact_full_map():
    codec = MSRAHeatmap(INPUT, (W, H), sigma=2, unbiased=True)
    hm = codec.encode(np.array([[[50.0, 82.0]]]))["heatmaps"][0]  # heatmap (12.5, 20.5)
    assert hm[20, 12] == pytest.approx(math.exp(-0.5 / 8), rel=1e-6)
    assert hm[21, 13] == pytest.approx(math.exp(-0.5 / 8), rel=1e-6)
    assert hm[25, 12] == pytest.approx(math.exp(-(0.25 + 4.5**2) / 8), rel=1e-5)
    assert hm[20, 19] > 0  # no 3-sigma window in DARK encoding


def test_udp_encode_values_and_window():
    codec = UDPHeatmap(INPUT, (W, H), sigma=2)
    kp_hm = np.array([12.25, 20.5])
    hm = codec.encode((kp_hm * [191 / 47, 255 / 63])[None, None])["heatmaps"][0]
    # exact centre (12.25, 20.5); window around mu = (int(12.75), int(21.0)) = (12, 21):
    # x in [6, 19), y in [15, 28)
    assert hm[20, 12] == pytest.approx(math.exp(-(0.0625 + 0.25) / 8), rel=1e-5)
    assert hm[21, 13] == pytest.approx(math.exp(-(0.5625 + 0.25) / 8), rel=1e-5)
    assert hm[21, 18] == pytest.approx(math.exp(-(5.75**2 + 0.25) / 8), rel=1e-4)
    assert hm[21, 6] == pytest.approx(math.exp(-(6.25**2 + 0.25) / 8), rel=1e-4)
    assert hm[21, 19] == 0 and hm[21, 5] == 0 and hm[14, 12] == 0 and hm[28, 12] == 0


# ---------------------------------------------------------------- flip

# Shift direction, derived from upstream mmpose/models/utils/tta.py::flip_heatmaps (heatmap mode):
#   flipped = heatmaps.flip(-1)                  -> flipped[..., i] = hm[..., W-1-i]
#   flipped = flipped[:, flip_indices]
#   flipped[..., 1:] = flipped[..., :-1]         -> out[..., j] = flipped[..., j-1] (j >= 1),
#                                                   out[..., 0] = flipped[..., 0] (kept)
# so a hot column c (c >= 1) ends at W-1-c+1 = W-c; c = 0 drops off; c = W-1 shows at 0 and 1.


def test_flip_shift_direction_single_hot():
    hm = np.zeros((1, 1, 4, W), np.float32)
    hm[0, 0, 2, 5] = 1.0
    out = flip_heatmaps(hm, [0], shift_heatmap=True)
    assert np.argwhere(out[0, 0]).tolist() == [[2, W - 5]]
    assert np.argwhere(flip_heatmaps(hm, [0], shift_heatmap=False)[0, 0]).tolist() == [
        [2, W - 1 - 5]
    ]
    hm0 = np.zeros_like(hm)
    hm0[0, 0, 1, 0] = 1.0
    assert flip_heatmaps(hm0, None).max() == 0  # column 0 -> W, off the map
    hml = np.zeros_like(hm)
    hml[0, 0, 1, W - 1] = 1.0
    assert np.argwhere(flip_heatmaps(hml, None)[0, 0]).tolist() == [[1, 0], [1, 1]]
    assert hm[0, 0, 2, 5] == 1.0  # input untouched


def test_flip_symmetric_pair():
    # a left/right pair mirrored about the centre column (x = (W-1)/2): channel 0 (left) hot at
    # column c, channel 1 (right) at W-1-c, same value. Flip + swap reproduces it; the shift then
    # moves everything one column right.
    c = 10
    hm = np.zeros((2, 2, 3, W), np.float32)
    hm[:, 0, 1, c] = 1.0
    hm[:, 1, 1, W - 1 - c] = 1.0
    hm[1] *= 2
    out = flip_heatmaps(hm, [1, 0], shift_heatmap=True)
    np.testing.assert_array_equal(out[..., 1:], hm[..., :-1])
    np.testing.assert_array_equal(out[..., 0], hm[..., 0])
    np.testing.assert_array_equal(flip_heatmaps(hm, [1, 0], shift_heatmap=False), hm)


def test_flip_swaps_channels_by_flip_indices():
    # output channel k = mirrored input channel flip_indices[k]
    hm = np.zeros((1, 3, 2, W), np.float32)
    hm[0, 0, 0, 4] = 0.1
    hm[0, 1, 0, 4] = 0.2
    hm[0, 2, 0, 4] = 0.3
    out = flip_heatmaps(hm, [2, 1, 0], shift_heatmap=False)
    np.testing.assert_allclose(out[0, :, 0, W - 1 - 4], [0.3, 0.2, 0.1])
    with pytest.raises(ValueError):
        flip_heatmaps(hm, [0, 0, 1])


# ---------------------------------------------------------------- build_codec


def test_build_codec():
    c = build_codec(CodecSpec(input_size=(192, 256), heatmap_size=(48, 64), sigma=2, unbiased=True))
    assert isinstance(c, MSRAHeatmap) and c.unbiased and c.blur_kernel_size == 11
    np.testing.assert_array_equal(c.scale_factor, [4, 4])
    u = build_codec(
        dict(
            type="UDPHeatmap",
            input_size=(288, 384),
            heatmap_size=(72, 96),
            sigma=3,
            blur_kernel_size=17,
            heatmap_type="gaussian",
        )
    )
    assert isinstance(u, UDPHeatmap) and u.sigma == 3 and u.blur_kernel_size == 17
    np.testing.assert_allclose(u.scale_factor, [287 / 71, 383 / 95], rtol=1e-6)
    with pytest.raises(ValueError):
        build_codec(dict(type="SimCCLabel", input_size=(192, 256), heatmap_size=(48, 64)))
    with pytest.raises(ValueError):
        build_codec(
            dict(
                type="UDPHeatmap",
                input_size=(192, 256),
                heatmap_size=(48, 64),
                heatmap_type="combined",
            )
        )
    with pytest.raises(ValueError):
        c.decode(np.zeros((17, 32, 24), np.float32))  # wrong heatmap size for this codec
