"""Bottom-up losses (training.ae_loss) on hand-derived cases (MMPose 0.x MultiLossFactory
semantics: masked heatmap MSE, AE 'exp' pull/push with its normalisation, stage factors)."""

from __future__ import annotations

import math

import pytest
import torch

from training.ae_loss import AELoss, BottomUpLoss, HeatmapLoss


def _two_people():
    """K=2 tag maps of 1x3 pixels: flat index = k * 3 + x. Person A's joints read tags 1 and 3,
    person B's 0 and 0."""
    tags = torch.tensor([[[[1.0, 0.0, 7.0]], [[9.0, 3.0, 0.0]]]], requires_grad=True)
    joints = torch.tensor(
        [
            [
                [[0, 1], [4, 1]],  # A: k0 x0 -> 1.0, k1 x1 -> 3.0
                [[1, 1], [5, 1]],  # B: k0 x1 -> 0.0, k1 x2 -> 0.0
                [[0, 0], [0, 0]],
            ]
        ]
    )  # empty slot
    return tags, joints


def test_ae_exp_pull_push_and_gradient_by_hand():
    tags, joints = _two_people()
    push, pull = AELoss("exp")(tags, joints)
    # pull: A mean 2, mean((1-2)^2, (3-2)^2) = 1; B 0; over T=2 people -> 0.5
    assert pull.item() == pytest.approx(0.5, rel=1e-6)
    # push: means 2 and 0; (2 + 2 exp(-4) - 2) / (2 * 1) * 0.5 = exp(-4) / 2 (float32: the sum
    # includes the diagonal's 1s and subtracts T afterwards, as upstream, so ~1e-8 absolute)
    assert push.item() == pytest.approx(math.exp(-4) / 2, abs=5e-8)
    (push + pull).sum().backward()
    # d pull / d t_A0 = ((t_A0 - m) - (t_A1 - m)) / 2 / T = -0.5;
    # d push / d t_A0 = -(mA - mB) exp(-(mA - mB)^2) * d mA / d t_A0 = -2 exp(-4) / 2
    assert tags.grad[0, 0, 0, 0].item() == pytest.approx(-0.5 - math.exp(-4), rel=1e-6)
    assert tags.grad[0, 0, 0, 2].item() == 0.0  # not read by any person


def test_ae_max_type_and_small_counts():
    tags, joints = _two_people()
    push, _ = AELoss("max")(tags, joints)
    assert push.item() == 0.0  # |2 - 0| >= 1
    one = joints.clone()
    one[0, 1] = 0  # only person A left: push 0, pull = A's own
    push, pull = AELoss("exp")(tags, one)
    assert push.item() == 0.0 and pull.item() == pytest.approx(1.0)
    push, pull = AELoss("exp")(tags, torch.zeros_like(joints))
    assert push.item() == 0.0 and pull.item() == 0.0
    with pytest.raises(ValueError, match="loss type"):
        AELoss("abs")
    with pytest.raises(ValueError, match="indices"):
        AELoss()(tags, joints + torch.tensor([6, 0]))


def test_heatmap_loss_mask_and_empty_channels():
    pred = torch.zeros(1, 2, 2, 2)
    pred[0, 0, 0, 0] = 0.5
    pred[0, 1, 1, 1] = 0.2
    target = torch.zeros(1, 2, 2, 2)
    target[0, 0, 0, 0] = 1.0
    mask = torch.ones(1, 2, 2)
    # (0.25 + 0.04) / 8 elements
    assert HeatmapLoss()(pred, target, mask).item() == pytest.approx(0.29 / 8)
    mask[0, 0, 0] = 0  # the peak pixel is not supervised
    assert HeatmapLoss()(pred, target, mask).item() == pytest.approx(0.04 / 8)
    mask[0, 0, 0] = 1  # channel 1 has an all-zero target: dropped without supervise_empty
    assert HeatmapLoss(supervise_empty=False)(pred, target, mask).item() == pytest.approx(0.25 / 8)
    with pytest.raises(ValueError, match="mask"):
        HeatmapLoss()(pred, target, mask[:, :1])


def test_multi_stage_combination():
    tags, joints = _two_people()
    k = 2
    hm0 = torch.zeros(1, k, 1, 3)
    out0 = torch.cat([hm0 + 0.1, tags.detach()], 1)  # stage 0: heatmaps + tags
    out1 = torch.full((1, k, 2, 6), 0.2)  # stage 1: heatmaps only
    loss = BottomUpLoss(
        k,
        heatmaps_loss_factor=(1.0, 2.0),
        push_loss_factor=(0.001, 0.5),
        pull_loss_factor=(0.001, 0.5),
    )
    parts = loss(
        [out0, out1],
        [hm0, torch.zeros(1, k, 2, 6)],
        [torch.ones(1, 1, 3), torch.ones(1, 2, 6)],
        [joints, joints],
    )
    assert parts["heatmap_loss"].item() == pytest.approx(0.01 + 2 * 0.04)
    assert parts["pull_loss"].item() == pytest.approx(0.001 * 0.5)  # stage 1 has no AE loss
    assert parts["push_loss"].item() == pytest.approx(0.001 * math.exp(-4) / 2, abs=1e-10)
    assert parts["loss"].item() == pytest.approx(0.09 + 0.0005 + 0.0005 * math.exp(-4))
    with pytest.raises(ValueError, match="2 stages"):
        loss([out0], [hm0], [torch.ones(1, 1, 3)], [joints])
