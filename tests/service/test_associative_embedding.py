"""Bottom-up (associative-embedding) decode, its preprocessing geometry and pipeline.

Expected numbers are derived by hand in the comments (HigherHRNet repo semantics: sizes from
``get_multi_scale_size``, candidates from the max-pool peak test + top-k, grouping by Hungarian
matching on ``round(tag distance) * 100 - value``, adjust = quarter pixel toward the higher
neighbour + 0.5, refine = argmax of ``value - round(tag distance)``).
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from service.cards import (
    COCO_JOINT_ORDER,
    BottomUpSpec,
    ModelCard,
    Normalization,
    TensorSpec,
    make_card,
)
from service.codecs.associative_embedding import (
    ScaleOutputs,
    adjust_people,
    aggregate_outputs,
    group_people,
    match_by_tag,
    munkres_assignment,
    people_to_image,
    refine_people,
    top_k_candidates,
)
from service.datasets.coco import COCO
from service.geometry import (
    get_bottomup_warp_matrix,
    get_multi_scale_size,
    get_warp_matrix,
    resize_align_multi_scale,
)
from service.interpolate import resize_bilinear

K = 17


# ----------------------------------------------------------------------------- preprocessing


def test_multi_scale_size_landscape_photo():
    # 640x425 at 512: short side 425 -> 512; long side 512 / 425 * 640 = 770.8 -> ceil64 = 832.
    # center (int(320 + 0.5), int(212.5 + 0.5)) = (320, 213); scale (832 / 512 * 425, 425).
    size, center, scale = get_multi_scale_size((640, 425), 512, 1.0, 1.0)
    assert size == (832, 512)
    np.testing.assert_array_equal(center, [320, 213])
    np.testing.assert_allclose(scale, [690.625, 425.0], rtol=0, atol=1e-12)


def test_multi_scale_size_portrait_and_multi_scale():
    size, center, scale = get_multi_scale_size((425, 640), 512, 1.0, 1.0)
    assert size == (512, 832)
    np.testing.assert_array_equal(center, [213, 320])
    np.testing.assert_allclose(scale, [425.0, 690.625], rtol=0, atol=1e-12)
    # scales [2, 1, 0.5]: at 0.5 the short side is ceil64(256) = 256 and the long side
    # ceil64(256 / 425 * 640 = 385.5) = 448; scale s multiplies both by s / 0.5.
    sizes = {s: get_multi_scale_size((640, 425), 512, s, 0.5)[0] for s in (2, 1, 0.5)}
    assert sizes == {2: (1792, 1024), 1: (896, 512), 0.5: (448, 256)}
    np.testing.assert_allclose(get_multi_scale_size((640, 425), 512, 1, 0.5)[2], [743.75, 425.0])


def test_multi_scale_size_rounds_like_upstream():
    # 1537x1024 at 512: 512 / 1024 * 1537 = 768.5; upstream's (768.5 + 63) // 64 * 64 = 768
    # (MMPose 0.x's ceil(768.5 / 64) * 64 would give 832).
    assert get_multi_scale_size((1537, 1024), 512, 1.0, 1.0)[0] == (768, 512)
    with pytest.raises(ValueError):
        get_multi_scale_size((0, 10), 512, 1.0, 1.0)


def test_bottomup_warp_matrix_hand_values():
    # zoom 832 / 690.625; the center (320, 213) goes to the output center (416, 256).
    _, center, scale = get_multi_scale_size((640, 425), 512, 1.0, 1.0)
    m = get_bottomup_warp_matrix(center, scale, (832, 512))
    z = 832 / 690.625
    np.testing.assert_allclose(m, [[z, 0, 416 - z * 320], [0, z, 256 - z * 213]], atol=1e-4)
    # the same similarity as the MMPose 1.x construction, and inv really is the inverse
    np.testing.assert_allclose(m, get_warp_matrix(center, scale, 0.0, (832, 512)), atol=1e-4)
    inv = get_bottomup_warp_matrix(center, scale, (832, 512), inv=True)
    np.testing.assert_allclose(inv[:, :2] @ m[:, :2], np.eye(2), atol=1e-9)


def test_resize_align_multi_scale_shapes_and_content():
    img = np.zeros((425, 640, 3), np.uint8)
    img[:, :320] = 200  # left half bright
    out, center, scale = resize_align_multi_scale(img, 512, 1.0, 1.0)
    assert out.shape == (512, 832, 3) and out.dtype == np.uint8
    # image x = 320 maps to 416; the photo ends at 640 -> 416 + 320 * 1.2047 = 801.5, black beyond
    assert out[256, 400, 0] == 200 and out[256, 430, 0] == 0 and out[256, 820, 0] == 0


# ----------------------------------------------------------------------------- resizing


def test_resize_bilinear_hand_values():
    # 1x2 -> 1x4, align_corners=False: sources (d + 0.5) / 2 - 0.5 = -0.25 (clamped 0), 0.25,
    # 0.75, 1.25 (right neighbour clamped) -> 0, 0.25, 0.75, 1.
    x = np.array([[[0.0, 1.0]]], np.float32)
    np.testing.assert_allclose(resize_bilinear(x, (1, 4))[0, 0], [0, 0.25, 0.75, 1.0])
    # align_corners=True: sources d / 3 -> 0, 1/3, 2/3, 1.
    np.testing.assert_allclose(
        resize_bilinear(x, (1, 4), align_corners=True)[0, 0], [0, 1 / 3, 2 / 3, 1.0], rtol=1e-6
    )


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize(
    "sizes",
    [((32, 52), (64, 104)), ((64, 104), (128, 208)), ((128, 224), (64, 112)), ((7, 5), (13, 11))],
)
def test_resize_bilinear_matches_torch(align_corners, sizes):
    torch = pytest.importorskip("torch")
    (h, w), (ho, wo) = sizes
    x = np.random.default_rng(0).normal(size=(3, h, w)).astype(np.float32)
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(x)[None], size=(ho, wo), mode="bilinear", align_corners=align_corners
    )[0].numpy()
    np.testing.assert_allclose(resize_bilinear(x, (ho, wo), align_corners), ref, rtol=0, atol=2e-6)


# ----------------------------------------------------------------------------- candidates


def test_top_k_peak_test_plateau_and_threshold():
    hm = np.zeros((K, 20, 20), np.float32)
    hm[0, 5, 5], hm[0, 6, 7] = 0.9, 0.5  # within one 5x5 window: only 0.9 survives
    hm[0, 15, 3] = hm[0, 15, 4] = 0.4  # a plateau of equal maxima: both survive, index order
    hm[0, 2, 17] = 0.1  # not above the 0.1 detection threshold
    tags = np.arange(K * 400, dtype=np.float32).reshape(K, 20, 20, 1)
    val, loc, tag, cnt = top_k_candidates(hm, tags, BottomUpSpec())
    assert cnt[0] == 3 and cnt[1:].sum() == 0
    np.testing.assert_allclose(val[0, :3], [0.9, 0.4, 0.4])
    np.testing.assert_array_equal(loc[0, :3], [[5, 5], [3, 15], [4, 15]])
    np.testing.assert_array_equal(tag[0, :3, 0], [5 * 20 + 5, 15 * 20 + 3, 15 * 20 + 4])


def test_more_than_30_candidates_keeps_the_30_strongest():
    # 35 isolated peaks (4 px apart) of joint 0 with values 0.2 + 0.02 i: the 30 strongest
    # (i = 34..5) start 30 people in descending order; the 5 weakest are dropped.
    hm = np.zeros((K, 40, 40), np.float32)
    tags = np.zeros((K, 40, 40, 1), np.float32)
    for i in range(35):
        y, x = 2 + 4 * (i // 9), 2 + 4 * (i % 9)
        hm[0, y, x] = 0.2 + 0.02 * i
        tags[0, y, x, 0] = 10.0 * i  # far apart: every candidate is its own person
    val, loc, _, cnt = top_k_candidates(hm, tags, BottomUpSpec())
    assert cnt[0] == 30
    np.testing.assert_allclose(val[0], 0.2 + 0.02 * np.arange(34, 4, -1), rtol=1e-6)
    people = match_by_tag(val, loc, *top_k_candidates(hm, tags, BottomUpSpec())[2:], BottomUpSpec())
    assert people.shape == (30, K, 4)
    np.testing.assert_allclose(people[:, 0, 2], 0.2 + 0.02 * np.arange(34, 4, -1), rtol=1e-6)
    np.testing.assert_allclose(people[:, 0, 3], 10.0 * np.arange(34, 4, -1))


# ----------------------------------------------------------------------------- grouping


def _two_people(missing_joint: int | None = None, size: int = 64):
    """Person A (tag 0) and B (tag 3) with all 17 joints as single-pixel peaks: A's joint j at
    (4 + 3j, 10) value 0.9, B's at (4 + 3j, 40) value 0.8 (3 px apart along x... the peak test
    compares joints of one channel only, so neighbouring joints do not suppress each other).
    A's right neighbour is 0.05 (x + 0.25 after adjust), B's left neighbour 0.05 (x - 0.25)."""
    hm = np.zeros((K, size, size), np.float32)
    tags = np.full((K, size, size, 1), 3.0, np.float32)  # background tag = B's
    for j in range(K):
        x = 4 + 3 * j
        if j != missing_joint:
            hm[j, 10, x], hm[j, 10, x + 1] = 0.9, 0.05
        else:
            hm[j, 10, x], hm[j, 10, x + 1] = 0.05, 0.01  # too weak to be a candidate
        tags[j, 8:13, x - 2 : x + 3, 0] = 0.0  # A's tag around its joint
        hm[j, 40, x], hm[j, 40, x - 1] = 0.8, 0.05
    return hm, tags


def test_two_people_with_separable_tags():
    hm, tags = _two_people()
    g = group_people(hm, tags, BottomUpSpec())
    # joint order starts with the nose: A (0.9) is created before B (0.8)
    assert g.people.shape == (2, K, 4)
    xs = 4 + 3 * np.arange(K)
    np.testing.assert_allclose(g.people[0, :, 0], xs + 0.75)  # +0.25 (right higher) + 0.5
    np.testing.assert_allclose(g.people[0, :, 1], 10 + 0.25)  # rows equal: -0.25, + 0.5
    np.testing.assert_allclose(g.people[1, :, 0], xs + 0.25)  # left higher: -0.25 + 0.5
    np.testing.assert_allclose(g.people[1, :, 1], 40 + 0.25)
    np.testing.assert_allclose(g.people[:, :, 2], [[0.9] * K, [0.8] * K], rtol=1e-6)
    np.testing.assert_allclose(g.people[:, :, 3], [[0.0] * K, [3.0] * K])
    np.testing.assert_allclose(g.scores, [0.9, 0.8], rtol=1e-6)


def test_missing_joint_recovered_by_refine():
    j = 9  # left wrist: its 0.05 peak is below the detection threshold
    hm, tags = _two_people(missing_joint=j)
    no_refine = group_people(hm, tags, BottomUpSpec(refine=False))
    assert no_refine.people[0, j, 2] == 0
    g = group_people(hm, tags, BottomUpSpec())
    # person score is computed before refine: A has 16 joints of 0.9 and one 0
    np.testing.assert_allclose(g.scores, [0.9 * 16 / 17, 0.8], rtol=1e-6)
    # refine for A: joint 9's map scores value - round(|tag - 0|): 0.05 at A's weak peak
    # (tag 0), 0.01 at its neighbour, 0.8 - 3 at B's peak, 0 - 3 elsewhere -> (31, 10), v 0.05.
    # quarter offsets: right (0.01) > left (0) -> +0.25; rows equal -> -0.25; then + 0.5.
    np.testing.assert_allclose(g.people[0, j, :3], [31 + 0.75, 10 + 0.25, 0.05], rtol=1e-6)
    np.testing.assert_array_equal(g.people[0, j, 3], 0.0)  # tags of refined joints stay 0
    np.testing.assert_array_equal(
        np.delete(g.people, j, axis=1), np.delete(no_refine.people, j, axis=1)
    )


def test_tie_follows_munkres():
    # Noses start P0 (tag 0.0, value 0.9) and P1 (tag 1.6, value 0.8). Left eyes: c0 (value
    # 0.75, tag 0.2: distances 0.2 / 1.4, rounded 0 / 1) and c1 (0.5, tag -0.8: 0.8 / 2.4 -> 1 / 2).
    # Costs [[-0.75, 99.25], [99.5, 199.5]]: both assignments cost 198.75. munkres: rows reduced to
    # [[0, 100], [0, 100]], star (0, 0); no uncovered zero, so 100 comes off column 1 -> all zero;
    # prime (0, 1), cover row 0, uncover column 0; in row 1 the last uncovered zero from column 0
    # is (1, 1), no star in its row -> starred: c0 -> P0, c1 -> P1. c0 joins P0 (0.2 < 1); c1 is
    # 2.4 from P1 and starts P2. The other optimum (c0 -> P1, rejected at 1.4; c1 -> P0, accepted
    # at 0.8) would give P0 the weaker eye; which optimum scipy returns depends on float details.
    val = np.zeros((K, 30), np.float32)
    loc = np.zeros((K, 30, 2), np.int64)
    tag = np.zeros((K, 30, 1), np.float32)
    cnt = np.zeros(K, np.int64)
    val[0, :2], tag[0, :2, 0], loc[0, :2] = (0.9, 0.8), (0.0, 1.6), ((1, 1), (20, 1))
    val[1, :2], tag[1, :2, 0], loc[1, :2] = (0.75, 0.5), (0.2, -0.8), ((2, 2), (21, 2))
    cnt[:2] = 2
    people = match_by_tag(val, loc, tag, cnt, BottomUpSpec())
    assert people.shape[0] == 3
    np.testing.assert_array_equal(people[:, 1, :3], [[2, 2, 0.75], [0, 0, 0], [21, 2, 0.5]])
    np.testing.assert_array_equal(people[:, 0, 2] > 0, [True, True, False])


def test_munkres_assignment_hand_traced():
    # [[1, 2], [2, 4]]: rows reduced to [[0, 1], [0, 2]], one star (0, 0), no uncovered zero;
    # step 6 subtracts 1 from column 1 -> [[0, 0], [0, 1]]; prime (0, 1), cover row 0, uncover
    # column 0; prime (1, 0) has no star in its row -> path (1,0) (0,0) (0,1): rows -> [1, 0].
    r, c = munkres_assignment(np.array([[1.0, 2.0], [2.0, 4.0]]))
    np.testing.assert_array_equal(c, [1, 0])
    np.testing.assert_array_equal(munkres_assignment(np.zeros((2, 3)))[1], [0, 1])
    with pytest.raises(ValueError):
        munkres_assignment(np.zeros((3, 2)))


def test_munkres_assignment_equals_munkres_package_on_ties():
    munkres = pytest.importorskip("munkres")  # the dev extra pins 1.1.4, upstream's version
    rng = np.random.default_rng(0)
    for t in range(300):
        n = int(rng.integers(1, 9))
        m = int(rng.integers(n, 10))
        if t % 2:
            cost = np.round(rng.uniform(0, 4, (n, m))) * 100 - rng.choice([0.3, 0.5], (n, 1))
        else:
            cost = rng.integers(0, 3, (n, m)).astype(float)
        expected = np.array(munkres.Munkres().compute(cost.copy()))
        r, c = munkres_assignment(cost)
        np.testing.assert_array_equal(np.stack([r, c], 1), expected)


def _refine_reference(people, hm, tags):
    """Upstream's refine written plainly, person by person and joint by joint."""
    out = people.copy()
    k, h, w = hm.shape
    for p in range(len(out)):
        found = [
            tags[j, int(out[p, j, 1]), int(out[p, j, 0])] for j in range(k) if out[p, j, 2] > 0
        ]
        mean = np.mean(found, axis=0)
        for j in range(k):
            if out[p, j, 2] > 0:
                continue
            score = hm[j] - np.round(((tags[j] - mean[None, None]) ** 2).sum(axis=2) ** 0.5)
            y, x = np.unravel_index(np.argmax(score), score.shape)
            v = hm[j, y, x]
            if v > 0:
                dx = 0.25 if hm[j, y, min(x + 1, w - 1)] > hm[j, y, max(x - 1, 0)] else -0.25
                dy = 0.25 if hm[j, min(y + 1, h - 1), x] > hm[j, max(y - 1, 0), x] else -0.25
                out[p, j, :3] = (x + 0.5 + dx, y + 0.5 + dy, v)
    return out


@pytest.mark.parametrize("seed", range(9))
def test_vectorised_refine_equals_reference(seed):
    # the block search must give what a scan of the whole map gives: maps whose sides are not
    # multiples of the 5-pixel blocks (or smaller than one), equal values (first-index ties),
    # and sparse maps (low background, a few blobs) where most blocks are skipped
    rng = np.random.default_rng(seed)
    k, n_tag = 5, 1 + seed % 2
    h, w = [(23, 31), (3, 4), (64, 48)][seed % 3]
    hm = rng.uniform(-0.2, 1.0, (k, h, w)).astype(np.float32)
    if seed % 3 == 0:
        hm = np.round(hm * 4) / 4
    if seed >= 6:
        hm = rng.uniform(-0.01, 0.03, (k, h, w)).astype(np.float32)
        for _ in range(6):
            hm[rng.integers(k), rng.integers(h), rng.integers(w)] = rng.uniform(0.04, 0.9)
    tags = rng.normal(0, 2, (k, h, w, n_tag)).astype(np.float32)
    p = 7
    people = np.zeros((p, k, 3 + n_tag), np.float32)
    for i in range(p):
        n_found = rng.integers(1, k + 1)
        for j in rng.choice(k, n_found, replace=False):
            x, y = rng.integers(0, w), rng.integers(0, h)
            people[i, j] = (
                x + rng.choice([0.25, 0.75]),
                y + rng.choice([0.25, 0.75]),
                rng.uniform(0.1, 1),
                *tags[j, y, x],
            )
    np.testing.assert_array_equal(
        refine_people(people, hm, tags), _refine_reference(people, hm, tags)
    )


def test_adjust_at_the_border_compares_with_itself():
    hm = np.zeros((1, 4, 4), np.float32)
    hm[0, 0, 3] = 1.0
    people = np.zeros((1, 1, 4), np.float32)
    people[0, 0, :3] = (3, 0, 1.0)
    # x = 3 = W - 1: right neighbour clamps to itself (1.0) vs left 0 -> +0.25; y = 0: down 0 vs
    # up (itself) 1.0 -> -0.25; then + 0.5 -> (3.75, 0.25)
    np.testing.assert_allclose(adjust_people(people, hm)[0, 0, :2], [3.75, 0.25])


def test_aggregate_flip_and_stages_hand_values():
    # one joint pair (K = 2, flip swaps them), stages 2x2 (hm + tags) and 4x4 (hm); constant maps
    # make every resize exact: plain stage heatmaps 1 and 3 -> average 2; flipped: channel 0 holds
    # 5 / 7 and channel 1 holds 9 / 11 -> stage average 6 and 10, swapped -> [10, 6]; flip average
    # [(2 + 10) / 2, (2 + 6) / 2] = [6, 4]. Tags: plain 0.5, flipped (swapped) [-2, -1] -> L = 2.
    def stage0(h0, h1, t0, t1):
        return np.stack([np.full((2, 2), v, np.float32) for v in (h0, h1, t0, t1)])

    def stage1(h0, h1):
        return np.stack([np.full((4, 4), v, np.float32) for v in (h0, h1)])

    so = ScaleOutputs(
        1.0, [stage0(1, 1, 0.5, 0.5), stage1(3, 3)], [stage0(5, 9, -1, -2), stage1(7, 11)]
    )
    hm, tags = aggregate_outputs(
        [so],
        num_joints=2,
        flip_indices=[1, 0],
        with_heatmaps=[True, True],
        with_ae=[True, False],
        base_size=(8, 8),
    )
    assert hm.shape == (2, 8, 8) and tags.shape == (2, 8, 8, 2)
    np.testing.assert_allclose(hm[:, 0, 0], [6, 4])
    np.testing.assert_allclose(tags[:, 0, 0], [[0.5, -2], [0.5, -1]])
    with pytest.raises(ValueError, match="scale 1"):
        aggregate_outputs(
            [ScaleOutputs(2.0, so.outputs), ScaleOutputs(0.5, so.outputs)],
            num_joints=2,
            flip_indices=[1, 0],
            with_heatmaps=[True, True],
            with_ae=[True, False],
            base_size=(8, 8),
        )


def test_people_to_image_inverts_the_resize():
    # heatmap point (416, 256) is the resized image's center -> image center (320, 213)
    _, center, scale = get_multi_scale_size((640, 425), 512, 1.0, 1.0)
    kp = people_to_image(np.array([[[416.0, 256.0], [0.0, 0.0]]]), center, scale, (832, 512))
    z = 690.625 / 832
    np.testing.assert_allclose(kp[0], [[320, 213], [320 - 416 * z, 213 - 256 * z]], atol=1e-3)


def test_params_validation():
    with pytest.raises(ValueError):
        BottomUpSpec(nms_kernel=4)
    with pytest.raises(ValueError):
        BottomUpSpec(detection_threshold=-0.1)
    with pytest.raises(ValueError):
        BottomUpSpec(joint_order=[0, 0])
    assert BottomUpSpec().grouping_order() == COCO_JOINT_ORDER
    assert BottomUpSpec(num_joints=3).grouping_order() == (0, 1, 2)


# ----------------------------------------------------------------------------- pipeline


def bottomup_card(**spec) -> ModelCard:
    return make_card(
        name="fake_bottomup",
        task="bottomup_pose",
        input_size=(None, None),
        inputs=[TensorSpec(name="image", dims=[3, -1, -1])],
        outputs=[
            TensorSpec(name="stage_1_4", dims=[2 * K, -1, -1]),
            TensorSpec(name="stage_1_2", dims=[K, -1, -1]),
        ],
        normalization=Normalization(mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375)),
        keypoint_names=list(COCO.keypoint_names),
        flip_indices=list(COCO.flip_indices),
        sigmas=list(COCO.sigmas),
        bottomup=BottomUpSpec(**spec),
    )


class SyntheticBackend:
    """Answers with HigherHRNet-shaped outputs of one known person, per input size."""

    def __init__(self, person: np.ndarray, image_wh, input_size: int, scales):
        from benchmarks.bench_grouping import synthetic_outputs

        self.calls = []
        self.by_shape = {}
        rng = np.random.default_rng(0)
        for s in scales:
            plain, flipped = synthetic_outputs(
                rng,
                person,
                image_wh,
                input_size,
                s,
                min(scales),
                COCO.flip_indices,
                weak_fraction=0.0,
                false_peaks=0,
            )
            h = plain[1].shape[1] * 2
            self.by_shape[h] = [np.stack([a, b]) for a, b in zip(plain, flipped)]

    async def infer(self, model, inputs, outputs=None):
        x = inputs["image"]
        self.calls.append(x)
        stages = self.by_shape[x.shape[2]]
        return {"stage_1_4": stages[0][: len(x)], "stage_1_2": stages[1][: len(x)]}


@pytest.mark.parametrize("scales", [None, [2, 1, 0.5]])
def test_pipeline_finds_the_person(scales):
    from benchmarks.bench_grouping import synthetic_people
    from service.pipelines.bottomup import check_scales, estimate_poses_bottomup

    rng = np.random.default_rng(3)
    w, h = 640, 425
    person = synthetic_people(rng, (w, h), 1)
    backend = SyntheticBackend(person, (w, h), 512, scales or [1.0])
    img = np.zeros((h, w, 3), np.uint8)
    res = asyncio.run(
        estimate_poses_bottomup(
            img,
            bottomup_card(),
            backend,
            flip_test=True,
            scales=check_scales(scales, [1.0]) if scales else None,
        )
    )
    assert len(backend.calls) == len(scales or [1])
    assert all(x.shape[0] == 2 for x in backend.calls)  # plain + flipped in one batch
    np.testing.assert_array_equal(backend.calls[0][1], backend.calls[0][0][..., ::-1])
    assert res.keypoints.shape == (1, K, 2) and res.keypoint_scores.shape == (1, K)
    # Gaussians drawn at sub-pixel positions of 1/4 and 1/2 resolution maps: within 2 image px
    assert np.abs(res.keypoints[0] - person[0, :, :2]).max() < 2.0
    assert 0.3 < res.person_scores[0] <= 1.0
    np.testing.assert_allclose(res.boxes[0], [*res.keypoints[0].min(0), *res.keypoints[0].max(0)])


def test_pipeline_rejects_bad_scales_and_udp():
    from service.pipelines.bottomup import check_scales, estimate_poses_bottomup

    assert check_scales(None, [1.0]).values == (1.0,)
    assert check_scales([0.5, 2, 1], [1.0]).values == (2.0, 1.0, 0.5)
    for bad in ([2, 0.5], [0], [float("nan")], [1] * 9):
        with pytest.raises(ValueError):
            check_scales(bad, [1.0])
    with pytest.raises(ValueError, match="use_udp"):
        asyncio.run(
            estimate_poses_bottomup(
                np.zeros((8, 8, 3), np.uint8), bottomup_card(use_udp=True), None, flip_test=False
            )
        )
