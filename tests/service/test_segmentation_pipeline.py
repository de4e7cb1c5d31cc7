"""Segmentation test-time path (service.pipelines.segmentation) and result encoding (service.rendering).

Expected values are derived by hand (sizes, windows, count maps, interpolation weights, blends) or
by an independent torch re-statement of MMSeg 1.x's EncoderDecoder / postprocess_result /
SegTTAModel (torch only in the tests, never in service/).
"""

from __future__ import annotations

import asyncio

import cv2
import numpy as np
import pytest

from service.backends.base import BackendError
from service.cards import ModelCard, Normalization, SegTestPipeline, TensorSpec, make_card
from service.datasets.segmentation import CITYSCAPES
from service.geometry import rescale_size
from service.interpolate import ArrayRows, ResizedRows
from service.pipelines.seg_plan import (
    MS_RATIOS,
    InputTooLarge,
    network_input_size,
    parse_scales,
    plan_augmentations,
    tta_resize_size,
)
from service.pipelines.segmentation import segment
from service.pipelines.slide import merge_windows, slide_windows, window_counts
from service.rendering import encode_label_png, overlay, overlay_image, pixel_counts
from tests.support.fake_backend import FakeBackend, conv_1x1_every_4th

MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)


# ----------------------------------------------------------------------------- references


def resize_logits(
    logits: np.ndarray,
    size_hw: tuple[int, int],
    align_corners: bool = False,
    channels_last: bool = False,
) -> np.ndarray:
    """Bilinear resize of a whole logit map through the pipeline's row-strip resizer
    (:class:`service.interpolate.ResizedRows`), as ``F.interpolate(mode='bilinear', ...)``.

    ``logits``: ``(C, h, w)`` float (or ``(h, w, C)`` with ``channels_last``); ``size_hw``: the
    output ``(H, W)`` in pixels. Returns float32 in the same layout. Follows MMSeg's
    ``mmseg.models.utils.wrappers.resize`` (a thin wrapper of torch's interpolate); any number of
    channels. Raises ValueError for a non-3-D input or an empty size.
    """
    x = np.asarray(logits, dtype=np.float32)
    if x.ndim != 3:
        raise ValueError(f"expected a 3-D logit map, got shape {x.shape}")
    if min(size_hw) <= 0:
        raise ValueError(f"output size must be positive, got {size_hw}")
    hwc = x if channels_last else np.ascontiguousarray(x.transpose(1, 2, 0))
    out = ResizedRows(ArrayRows(hwc), size_hw[0], size_hw[1], align_corners).rows(0, size_hw[0])
    out = np.ascontiguousarray(out, dtype=np.float32)
    return out if channels_last else np.ascontiguousarray(out.transpose(2, 0, 1))


def slide_merge(crop_logits, windows: np.ndarray, height: int, width: int) -> np.ndarray:
    """Reference: average overlapping window logits into one canvas (``slide_inference``'s sum /
    count), the full-size version of :func:`service.pipelines.slide.merge_windows`.

    ``crop_logits``: ``(M, h_c, w_c, C)`` float32 channels-last array, or any iterable of ``M``
    ``(h_c, w_c, C)`` arrays, each already resized to its window's size (summed in window order,
    as MMSeg does); ``windows``: ``(M, 4)`` ``[x1, y1, x2, y2]`` from :func:`slide_windows`.
    Returns ``(H, W, C)`` float32 = sum of the windows covering a pixel / their number.
    Raises ValueError if the counts disagree, a window's size does not match its logits, or a
    pixel is covered by no window.
    """
    windows = np.asarray(windows, np.int64)
    preds = None
    n = 0
    for k, logit in enumerate(crop_logits):
        if k >= len(windows):
            raise ValueError(f"more window logits than the {len(windows)} windows")
        x1, y1, x2, y2 = (int(v) for v in windows[k])
        if tuple(logit.shape[:2]) != (y2 - y1, x2 - x1):
            raise ValueError(
                f"window {k} is {y2 - y1}x{x2 - x1}, its logits {tuple(logit.shape[:2])}"
            )
        if preds is None:
            preds = np.zeros((height, width, logit.shape[2]), np.float32)
        preds[y1:y2, x1:x2] += logit
        n += 1
    if n != len(windows) or preds is None:
        raise ValueError(f"{n} window logits for {len(windows)} windows")
    count = window_counts(height, width, windows)
    if (count == 0).any():
        raise ValueError("some pixels are covered by no window")
    preds /= count[..., None]
    return preds


# ----------------------------------------------------------------------------- fakes


def conv_model(num_classes: int, seed: int = 0):
    """A fixed random 1x1 conv (with bias) on every 4th pixel: (N,3,h,w) -> (N,C,ceil(h/4),ceil(w/4));
    returns ``(fn, weight, bias)``."""
    fn = conv_1x1_every_4th(num_classes, seed, bias=True)
    return fn, fn.weight, fn.bias


def seg_card(
    num_classes=19,
    scale=(160, 80),
    mode="whole",
    crop=None,
    stride=None,
    align_corners=False,
    max_batch_size=32,
    name="seg",
) -> ModelCard:
    classes = (
        [c for c, _ in CITYSCAPES][:num_classes]
        if num_classes <= 19
        else [f"class{i}" for i in range(num_classes)]
    )
    palette = [p for _, p in CITYSCAPES][:num_classes] if num_classes <= 19 else []
    return make_card(
        name=name,
        task="segmentation",
        input_size=(None, None),
        inputs=[TensorSpec(name="input", dims=[3, -1, -1])],
        outputs=[TensorSpec(name="logits", dims=[num_classes, -1, -1])],
        max_batch_size=max_batch_size,
        normalization=Normalization(mean=MEAN, std=STD, channel_order="rgb"),
        classes=classes,
        palette=palette,
        align_corners=align_corners,
        test_pipeline=SegTestPipeline(
            scale=scale, keep_ratio=True, mode=mode, crop_size=crop, stride=stride
        ),
    )


def run(coro):
    return asyncio.run(coro)


def random_image(h, w, seed=1):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------- sizes


def test_rescale_size_cityscapes_scale():
    # factor = min(2048/1024, 1024/512) = 2
    assert rescale_size((1024, 512), (2048, 1024)) == ((2048, 1024), 2.0)
    # already at the scale: unchanged
    assert rescale_size((2048, 1024), (2048, 1024))[0] == (2048, 1024)


def test_rescale_size_odd_sizes():
    # long 1000, short 333: min(2048/1000, 1024/333) = 2.048; 333*2.048 = 681.984 -> 682
    assert rescale_size((1000, 333), (2048, 1024))[0] == (2048, 682)
    # portrait: the same factor, the long edge (height) becomes 2048
    assert rescale_size((333, 1000), (2048, 1024))[0] == (682, 2048)
    # ADE20K's (2048, 512): min(2048/500, 512/375) = 1.36533; 500*1.36533 = 682.67 -> 683
    assert rescale_size((500, 375), (2048, 512))[0] == (683, 512)
    # the scale pair's order does not matter (long/short edges)
    assert rescale_size((500, 375), (512, 2048))[0] == (683, 512)
    with pytest.raises(ValueError):
        rescale_size((10, 10), -1.0)


def test_test_resize_size_variants():
    assert network_input_size((90, 50), SegTestPipeline(scale=(160, 80))) == (144, 80)  # factor 1.6
    assert network_input_size((90, 50), SegTestPipeline(scale=(160, 80), keep_ratio=False)) == (
        160,
        80,
    )
    assert network_input_size((90, 50), SegTestPipeline(scale=None)) == (90, 50)


def test_tta_resize_rounds_twice_like_mmcv():
    # Resize(scale_factor=0.75): target (int(749.25+.5), int(7.5+.5)) = (749, 8); keep-ratio to it:
    # factor min(749/999, 8/10) = 0.74975 -> h = int(7.4975 + .5) = 7 (one rounding would give 8)
    assert tta_resize_size((999, 10), 0.75) == (749, 7)
    assert tta_resize_size((1024, 512), 0.5) == (512, 256)
    assert tta_resize_size((1024, 512), 1.75) == (1792, 896)
    # (90, 50) at 1.25: target (113, 63); factor min(113/90, 63/50) = 1.25556 -> (113, 63)
    assert tta_resize_size((90, 50), 1.25) == (113, 63)


def test_parse_scales():
    assert parse_scales("ms") == (0.5, 0.75, 1.0, 1.25, 1.5, 1.75) == MS_RATIOS
    assert parse_scales([1, 2.5]) == (1.0, 2.5)
    assert parse_scales(None) is None
    for bad in ([0.0], [4.5], [float("nan")], [float("inf")], [1.0] * 9, [], ["1"], [True], "xs"):
        with pytest.raises(ValueError):
            parse_scales(bad)


def test_plan_augmentations_flip_and_auto_slide():
    spec = SegTestPipeline(scale=(160, 80))
    views = plan_augmentations((90, 50), spec, flip=True, scales=[0.5, 1.25])
    assert [(v.size_wh, v.flip) for v in views] == [
        ((45, 25), False),
        ((45, 25), True),
        ((113, 63), False),
        ((113, 63), True),
    ]
    # 144 * 80 = 11520 input pixels: above 10000 the whole card slides, and so does an explicit
    # mode=whole (memory bound); 11520 itself is not above a limit of 11520
    assert plan_augmentations((90, 50), spec, slide_pixels=10000)[0].mode == "slide"
    assert plan_augmentations((90, 50), spec, slide_pixels=20000)[0].mode == "whole"
    assert plan_augmentations((90, 50), spec, mode="whole", slide_pixels=10)[0].mode == "slide"
    assert plan_augmentations((90, 50), spec, mode="whole", slide_pixels=11520)[0].mode == "whole"
    assert plan_augmentations((90, 50), spec, mode="whole", slide_pixels=11519)[0].mode == "slide"
    assert plan_augmentations((90, 50), spec, mode="slide")[0].mode == "slide"
    with pytest.raises(ValueError):
        plan_augmentations((90, 50), spec, mode="tiles")
    # 144 x 80 = 11520 input pixels: a limit of 11520 passes, 11519 does not
    assert len(plan_augmentations((90, 50), spec, max_input_pixels=11520)) == 1
    with pytest.raises(InputTooLarge):
        plan_augmentations((90, 50), spec, max_input_pixels=11519)


# ----------------------------------------------------------------------------- slide windows


def test_slide_windows_hand_grid():
    # H = W = 6, crop 4, stride 2: max(6-4+1, 0)//2 + 1 = 2 starts per axis: 0 and 2
    w = slide_windows(6, 6, (4, 4), (2, 2))
    np.testing.assert_array_equal(w, [[0, 0, 4, 4], [2, 0, 6, 4], [0, 2, 4, 6], [2, 2, 6, 6]])


def test_slide_windows_clamping():
    # H = 5, crop 4, stride 3: 2 rows; the second starts at 3, ends min(7, 5) = 5, moves back to 1
    w = slide_windows(5, 4, (4, 4), (3, 3))
    np.testing.assert_array_equal(w, [[0, 0, 4, 4], [0, 1, 4, 5]])
    # image smaller than the crop: one window, the whole image
    np.testing.assert_array_equal(slide_windows(3, 3, (4, 4), (2, 2)), [[0, 0, 3, 3]])
    # 1024 x 2048 with 1024 crops, stride 768: columns 0, 768 and (2304 -> 2048) 1024
    w = slide_windows(1024, 2048, (1024, 1024), (768, 768))
    np.testing.assert_array_equal(w[:, 0], [0, 768, 1024])
    assert (w[:, 1] == 0).all() and (w[:, 3] == 1024).all()
    # non-square crop (h, w) = (2, 3) on 4 x 5, stride (2, 2): rows 0, 2; cols 0, 2
    w = slide_windows(4, 5, (2, 3), (2, 2))
    np.testing.assert_array_equal(w, [[0, 0, 3, 2], [2, 0, 5, 2], [0, 2, 3, 4], [2, 2, 5, 4]])


def test_window_counts_and_overlap_normalisation():
    windows = slide_windows(6, 6, (4, 4), (2, 2))
    edge = np.array([1, 1, 2, 2, 1, 1], np.float32)
    np.testing.assert_array_equal(window_counts(6, 6, windows), np.outer(edge, edge))
    # window k holds the constant v_k; a pixel gets the mean of the windows covering it
    values = [1.0, 2.0, 4.0, 8.0]
    crops = np.stack([np.full((4, 4, 1), v, np.float32) for v in values])
    merged = slide_merge(crops, windows, 6, 6)[..., 0]
    block = np.array(
        [
            [1.0, 1.5, 2.0],  # rows 0-1: w0 | w0,w1 | w1
            [2.5, 3.75, 5.0],  # rows 2-3: w0,w2 | all four | w1,w3
            [4.0, 6.0, 8.0],
        ]
    )  # rows 4-5: w2 | w2,w3 | w3
    np.testing.assert_allclose(merged, np.kron(block, np.ones((2, 2))), rtol=0, atol=0)
    # the pipeline's strip-wise canvas (window-sized heads: the resize is a copy) gives the same
    np.testing.assert_array_equal(merge_windows(crops, windows, 6, 6, False)[..., 0], merged)


def test_slide_merge_rejects_gaps_and_mismatches():
    windows = np.array([[0, 0, 2, 2]])
    with pytest.raises(ValueError):
        slide_merge(np.zeros((1, 2, 2, 1), np.float32), windows, 3, 3)  # pixels left uncovered
    with pytest.raises(ValueError, match="covered by no window"):
        merge_windows(np.zeros((1, 2, 2, 1), np.float32), windows, 3, 3, False)
    with pytest.raises(ValueError):
        slide_merge(np.zeros((1, 3, 2, 1), np.float32), windows, 2, 2)  # wrong window size
    with pytest.raises(ValueError):
        slide_merge(np.zeros((2, 2, 2, 1), np.float32), windows, 2, 2)  # too many windows


# ----------------------------------------------------------------------------- bilinear resize


def test_resize_logits_hand_values():
    x = np.array([[[0.0, 1.0]]], np.float32)  # (C=1, h=1, w=2)
    # align_corners=False: src = max((d + .5) * 2/4 - .5, 0) = 0, .25, .75, 1.25 (clamped to 1)
    np.testing.assert_allclose(resize_logits(x, (1, 4))[0, 0], [0, 0.25, 0.75, 1.0], atol=1e-7)
    # align_corners=True: src = d * 1/3
    np.testing.assert_allclose(
        resize_logits(x, (1, 4), align_corners=True)[0, 0], [0, 1 / 3, 2 / 3, 1.0], atol=1e-6
    )
    # 2-D, separable: [[0, 1], [2, 3]] -> 4x4 = 2 * r_y + r_x with r = (0, .25, .75, 1)
    y = resize_logits(np.array([[[0.0, 1.0], [2.0, 3.0]]], np.float32), (4, 4))
    r = np.array([0, 0.25, 0.75, 1.0])
    np.testing.assert_allclose(y[0], 2 * r[:, None] + r[None, :], atol=1e-6)
    # 2x downsampling samples between pixel pairs: src = 0.5, 2.5
    np.testing.assert_allclose(
        resize_logits(np.arange(4, dtype=np.float32)[None, None], (1, 2))[0, 0],
        [0.5, 2.5],
        atol=1e-7,
    )
    # channels-last layout gives the same numbers; 150 channels (ADE20K) are fine
    z = np.random.default_rng(0).standard_normal((150, 5, 7)).astype(np.float32)
    np.testing.assert_array_equal(
        resize_logits(z, (9, 11)),
        resize_logits(z.transpose(1, 2, 0), (9, 11), channels_last=True).transpose(2, 0, 1),
    )


@pytest.mark.parametrize("align_corners", [False, True])
def test_resize_logits_matches_torch_interpolate(align_corners):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(3)
    for h, w, H, W in [
        (7, 9, 30, 37),
        (30, 37, 7, 9),
        (13, 17, 13, 40),
        (16, 32, 64, 128),
        (5, 5, 1, 1),
    ]:
        x = rng.standard_normal((19, h, w)).astype(np.float32)
        ref = F.interpolate(
            torch.from_numpy(x)[None], size=(H, W), mode="bilinear", align_corners=align_corners
        )[0].numpy()
        # align_corners=False runs through OpenCV, whose source coordinates are computed in double
        # where torch's CPU kernel uses float32: up to ~1e-5 apart on N(0, 1) data at odd ratios
        atol = 1e-5 if align_corners else 5e-5
        np.testing.assert_allclose(resize_logits(x, (H, W), align_corners), ref, atol=atol, rtol=0)


# ----------------------------------------------------------------------------- torch reference


def _torch_reference(image_bgr, card, weight, bias, views, mode, crop=None, stride=None):
    """MMSeg 1.x's test path re-stated in torch: returns (C, H, W) logits (1 view) or mean softmax."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    ac = card.align_corners
    H, W = image_bgr.shape[:2]
    wt, bt = torch.from_numpy(weight), torch.from_numpy(bias)

    def model(x):
        return torch.einsum("kc,nchw->nkhw", wt, x[:, :, ::4, ::4]) + bt[None, :, None, None]

    def encode_decode(x):  # decode_head.predict: resize to the (crop) input size
        return F.interpolate(model(x), size=x.shape[2:], mode="bilinear", align_corners=ac)

    outs = []
    for (w, h), flip in views:
        img = (
            image_bgr
            if (w, h) == (W, H)
            else cv2.resize(image_bgr, (w, h), interpolation=cv2.INTER_LINEAR)
        )
        if flip:
            img = img[:, ::-1]
        rgb = img[..., ::-1].astype(np.float32)
        x = torch.from_numpy(
            ((rgb - np.float32(MEAN)) / np.float32(STD)).transpose(2, 0, 1).copy()
        )[None]
        if mode == "whole":
            logit = encode_decode(x)
        else:  # slide_inference, literally
            (h_crop, w_crop), (h_stride, w_stride) = crop, stride
            h_grids = max(h - h_crop + h_stride - 1, 0) // h_stride + 1
            w_grids = max(w - w_crop + w_stride - 1, 0) // w_stride + 1
            preds = torch.zeros((1, len(card.classes), h, w))
            count = torch.zeros((1, 1, h, w))
            for hi in range(h_grids):
                for wi in range(w_grids):
                    y1, x1 = hi * h_stride, wi * w_stride
                    y2, x2 = min(y1 + h_crop, h), min(x1 + w_crop, w)
                    y1, x1 = max(y2 - h_crop, 0), max(x2 - w_crop, 0)
                    crop_logit = encode_decode(x[:, :, y1:y2, x1:x2])
                    preds += F.pad(crop_logit, (x1, w - x2, y1, h - y2))
                    count[:, :, y1:y2, x1:x2] += 1
            logit = preds / count
        if flip:
            logit = logit.flip(dims=(3,))
        outs.append(F.interpolate(logit, size=(H, W), mode="bilinear", align_corners=ac)[0])
    if len(outs) == 1:
        return outs[0].numpy()
    return (sum(o.softmax(dim=0) for o in outs) / len(outs)).numpy()


def _agree(label, ref_logits):
    return float((label == ref_logits.argmax(0)).mean())


@pytest.mark.parametrize("align_corners", [False, True])
def test_whole_inference_matches_torch_reference(align_corners):
    card = seg_card(scale=(160, 80), align_corners=align_corners)
    fn, weight, bias = conv_model(19)
    backend = FakeBackend(fn)
    img = random_image(50, 90)
    res = run(segment(img, card, backend, return_logits=True))
    # (90, 50) at scale (160, 80): factor min(160/90, 80/50) = 1.6 -> network input 144 x 80
    assert backend.shapes == [(1, 3, 80, 144)]
    assert res.label_map.shape == (50, 90) and res.label_map.dtype == np.uint8
    ref = _torch_reference(img, card, weight, bias, [((144, 80), False)], "whole")
    np.testing.assert_allclose(res.logits, ref, atol=1e-4, rtol=0)
    assert _agree(res.label_map, ref) > 0.999


def test_slide_inference_matches_torch_reference():
    card = seg_card(scale=(160, 80), mode="slide", crop=(48, 64), stride=(32, 40))
    fn, weight, bias = conv_model(19, seed=5)
    backend = FakeBackend(fn)
    img = random_image(50, 90, seed=2)
    res = run(segment(img, card, backend, return_logits=True))
    # 80 x 144 input: rows max(80-48+31,0)//32+1 = 2, cols max(144-64+39,0)//40+1 = 3 -> 6 windows
    assert backend.shapes == [(6, 3, 48, 64)] and res.windows == [6]
    ref = _torch_reference(
        img, card, weight, bias, [((144, 80), False)], "slide", crop=(48, 64), stride=(32, 40)
    )
    np.testing.assert_allclose(res.logits, ref, atol=1e-4, rtol=0)
    assert _agree(res.label_map, ref) > 0.999


def test_multiscale_flip_tta_matches_torch_reference():
    card = seg_card(scale=(160, 80))
    fn, weight, bias = conv_model(19, seed=7)
    backend = FakeBackend(fn)
    img = random_image(50, 90, seed=3)
    res = run(segment(img, card, backend, flip=True, scales=[0.5, 1.25], return_logits=True))
    # per ratio one call holding the image and its mirror: (45, 25) and (113, 63) (see sizes test)
    assert backend.shapes == [(2, 3, 25, 45), (2, 3, 63, 113)]
    views = [((45, 25), False), ((45, 25), True), ((113, 63), False), ((113, 63), True)]
    ref = _torch_reference(img, card, weight, bias, views, "whole")
    np.testing.assert_allclose(res.logits, ref, atol=1e-5, rtol=0)
    np.testing.assert_allclose(res.logits.sum(axis=0), 1.0, atol=1e-5)  # mean of probabilities
    assert _agree(res.label_map, ref) > 0.999


def test_slide_equals_whole_when_the_crop_covers_the_image():
    fn, _, _ = conv_model(19, seed=11)
    img = random_image(50, 90, seed=4)
    whole = run(segment(img, seg_card(), FakeBackend(fn), return_logits=True))
    slide = run(
        segment(
            img,
            seg_card(mode="slide", crop=(100, 200), stride=(50, 50)),
            FakeBackend(fn),
            return_logits=True,
        )
    )
    assert slide.windows == [1]
    np.testing.assert_array_equal(slide.logits, whole.logits)
    np.testing.assert_array_equal(slide.label_map, whole.label_map)


def test_overlapping_windows_of_a_pointwise_model_equal_whole():
    """A full-resolution pointwise model gives every window the same logits where they overlap,
    so sum / count must give back the whole-image logits."""
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((5, 3)).astype(np.float32)

    def pointwise(x):
        return np.einsum("kc,nchw->nkhw", weight, x).astype(np.float32)

    img = random_image(40, 60, seed=6)
    whole = run(segment(img, seg_card(5, scale=None), FakeBackend(pointwise), return_logits=True))
    card = seg_card(5, scale=None, mode="slide", crop=(24, 32), stride=(8, 12), max_batch_size=4)
    backend = FakeBackend(pointwise)
    slide = run(segment(img, card, backend, return_logits=True))
    # rows max(40-24+7,0)//8+1 = 3, cols max(60-32+11,0)//12+1 = 4: 12 windows in chunks of 4
    # all 12 windows in one backend call (the backend splits by max_batch_size)
    assert backend.shapes == [(12, 3, 24, 32)] and slide.windows == [12]
    np.testing.assert_allclose(slide.logits, whole.logits, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(slide.label_map, whole.label_map)


def test_flip_tta_averages_softmax_not_logits_and_flips_back():
    """Model output L[x] depends only on the column x (3 classes, width 2, no resizing).

    Plain: pixel x gets argmax L[x] = (0, 1). Flip TTA: pixel 0 averages softmax(L[0]) and, flipped
    back, softmax(L[1]); softmax(5, 0, 4) = (.7275, .0049, .2676), softmax(0, 4.9, 4) =
    (.0053, .7072, .2875); mean (.3664, .3561, .2776) -> class 0 at both pixels. Averaging logits
    instead would give (2.5, 2.45, 4) -> class 2; not flipping back would keep (0, 1).
    """
    table = np.array([[5.0, 0.0, 4.0], [0.0, 4.9, 4.0]], np.float32)  # (x, class)

    def by_column(x):
        n, _, h, w = x.shape
        return np.broadcast_to(table.T[None, :, None, :], (n, 3, h, w)).astype(np.float32)

    img = random_image(3, 2)
    card = seg_card(3, scale=None)
    plain = run(segment(img, card, FakeBackend(by_column)))
    np.testing.assert_array_equal(plain.label_map, [[0, 1]] * 3)
    tta = run(segment(img, card, FakeBackend(by_column), flip=True, return_logits=True))
    np.testing.assert_array_equal(tta.label_map, np.zeros((3, 2)))
    np.testing.assert_allclose(tta.logits[:, 0, 0], [0.3664, 0.3561, 0.2776], atol=2e-4)


def test_backend_output_must_match_the_card():
    fn, _, _ = conv_model(7)
    with pytest.raises(BackendError):
        run(segment(random_image(20, 20), seg_card(19, scale=None), FakeBackend(fn)))


def test_bad_arguments():
    fn, _, _ = conv_model(19)
    img = random_image(20, 20)
    with pytest.raises(ValueError):
        run(segment(img, seg_card(), FakeBackend(fn), mode="tiles"))
    with pytest.raises(ValueError):
        run(segment(img, seg_card(), FakeBackend(fn), scales=[0.0]))
    with pytest.raises(ValueError):
        run(segment(img[..., 0], seg_card(), FakeBackend(fn)))
    pose_like = seg_card().model_copy(update={"task": "detection"})
    with pytest.raises(ValueError):
        run(segment(img, pose_like, FakeBackend(fn)))


def test_demo_photo_label_map_has_the_original_size(shared):
    img = cv2.imread(str(shared / "data" / "cityscapes_sample" / "demo.png"), cv2.IMREAD_COLOR)
    assert img.shape == (512, 1024, 3)
    card = seg_card(scale=(2048, 1024))
    fn, _, _ = conv_model(19)
    backend = FakeBackend(fn)
    res = run(segment(img, card, backend))
    assert backend.shapes == [(1, 3, 1024, 2048)]  # Resize((2048, 1024), keep_ratio) doubles it
    assert res.label_map.shape == (512, 1024) and res.label_map.dtype == np.uint8
    assert res.label_map.max() < 19
    assert set(res.timing_ms) >= {"preprocess", "inference", "postprocess"}


# ----------------------------------------------------------------------------- rendering


def test_label_png_round_trip():
    label = np.random.default_rng(0).integers(0, 19, (37, 53), dtype=np.uint8)
    label[0, :5] = 255
    png = encode_label_png(label)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    back = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert back.dtype == np.uint8 and back.shape == (37, 53)
    np.testing.assert_array_equal(back, label)
    with pytest.raises(ValueError):
        encode_label_png(label.astype(np.int32))


def test_overlay_blend_values():
    img = np.full((2, 3, 3), 100, np.uint8)
    label = np.array([[0, 1, 255], [1, 0, 7]], np.uint8)
    palette = [(200, 0, 0), (0, 0, 254)]  # RGB
    # class 0: BGR colour (0, 0, 200): (50, 50, 150); class 1: (254, 0, 0): (50 + 127, 50, 50);
    # 255 and 7 have no colour: unchanged
    expected = np.array(
        [
            [[50, 50, 150], [177, 50, 50], [100, 100, 100]],
            [[177, 50, 50], [50, 50, 150], [100, 100, 100]],
        ],
        np.uint8,
    )
    np.testing.assert_array_equal(overlay_image(img, label, palette, alpha=0.5), expected)
    decoded = cv2.imdecode(np.frombuffer(overlay(img, label, palette), np.uint8), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(decoded, expected)
    # alpha 0.8 (MMSeg's default): in float64 1 - 0.8 = 0.19999999999999996, so a colourless
    # channel is 100 * 0.1999... = 19.999... and truncates to 19 (MMSeg's astype(uint8) does the
    # same); red: 19.999... + 200 * 0.8 (= 160.0) rounds to 180.0 in float64 -> 180
    np.testing.assert_array_equal(
        overlay_image(img, label, palette, alpha=0.8)[0, 0], [19, 19, 180]
    )
    with pytest.raises(ValueError):
        overlay_image(img, label[:1], palette)


def test_pixel_counts():
    label = np.array([[0, 0, 2], [255, 2, 2]], np.uint8)
    assert pixel_counts(label, ["road", "sidewalk", "building"]) == {"road": 2, "building": 3}


def test_slide_windows_geometry_is_cached_and_each_call_gets_its_own_array():
    """The window geometry is computed once per (size, crop, stride); every call still returns a
    fresh int64 array equal to the first (writing into one cannot change the next)."""
    from service.pipelines.slide import window_grid

    window_grid.cache_clear()
    first = slide_windows(1024, 2048, (1024, 1024), (768, 768))
    first[:] = -1
    second = slide_windows(1024, 2048, [1024, 1024], [768, 768])
    assert second.dtype == np.int64 and second.shape == (3, 4)
    np.testing.assert_array_equal(
        second, [[0, 0, 1024, 1024], [768, 0, 1792, 1024], [1024, 0, 2048, 1024]]
    )
    info = window_grid.cache_info()
    assert (info.misses, info.hits) == (1, 1)
    assert window_grid(6, 6, (4, 4), (2, 2)) == (
        (0, 0, 4, 4),
        (2, 0, 6, 4),
        (0, 2, 4, 6),
        (2, 2, 6, 6),
    )
    with pytest.raises(ValueError, match="sizes must be positive"):
        slide_windows(0, 6, (4, 4), (2, 2))
