import math

import pytest
import torch

from vidllm.losses.metric_depth import bin_chamfer_loss, metric_depth_loss


def test_global_scale_error_is_the_bias_term():
    gt = 0.5 + torch.rand(2, 3, 4, 5, generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(gt, dtype=torch.bool)
    # A pure scale error e^0.1 gives e_i = 0.1 for all i: b² = 0.01, no local term.
    assert metric_depth_loss(gt * math.exp(0.1), gt, mask, eps=0.0) == pytest.approx(0.01, rel=1e-5)
    assert metric_depth_loss(gt, gt, mask).item() == 0.0


def test_robust_local_term_hand_value():
    gt = torch.ones(1, 1, 1, 2)
    pred = torch.tensor([1.0, math.exp(0.2)]).view(1, 1, 1, 2)  # e = (0, 0.2): b = 0.1, e − b = ±0.1
    mask = torch.ones_like(gt, dtype=torch.bool)
    expected = 0.01 + 0.01 / (1 + 1.0 * 0.1)
    assert metric_depth_loss(pred, gt, mask, alpha=1.0, eps=0.0) == pytest.approx(expected, rel=1e-5)
    # Larger α down-weights the residual further.
    assert metric_depth_loss(pred, gt, mask, alpha=10.0, eps=0.0) == pytest.approx(0.01 + 0.01 / 2, rel=1e-5)


def test_masking_empty_images_and_gradients():
    gen = torch.Generator().manual_seed(1)
    gt = 0.5 + torch.rand(1, 2, 4, 4, generator=gen)
    mask = torch.ones_like(gt, dtype=torch.bool)
    mask[0, 1] = False  # an image with no valid pixel is skipped, not averaged in as 0
    pred = (gt * (1 + 0.2 * torch.rand(gt.shape, generator=gen))).requires_grad_()
    wild = torch.where(mask, pred, torch.full_like(pred, 1e4))
    loss = metric_depth_loss(wild, torch.where(mask, gt, torch.zeros_like(gt)), mask)
    assert loss.item() == pytest.approx(metric_depth_loss(pred[:, :1], gt[:, :1], mask[:, :1]).item(), rel=1e-6)
    assert loss > 0
    loss.backward()
    assert torch.isfinite(pred.grad).all() and pred.grad[0, 1].abs().sum() == 0
    empty = metric_depth_loss(pred, gt, torch.zeros_like(mask))
    assert empty.item() == 0 and empty.requires_grad
    with pytest.raises(ValueError, match="alpha"):
        metric_depth_loss(pred, gt, mask, alpha=0.0)


def test_bin_chamfer_hand_value():
    edges = torch.tensor([0.0, 2.0, 4.0]).view(1, 1, 3)  # centres 1, 3
    gt = torch.tensor([1.0, 3.5, 9.0]).view(1, 1, 1, 3)
    mask = torch.tensor([True, True, False]).view(1, 1, 1, 3)
    # centres → nearest GT: 0, 0.25 (mean 0.125); GT → nearest centre: 0, 0.25 (mean 0.125).
    assert bin_chamfer_loss(edges, gt, mask) == pytest.approx(0.25, rel=1e-6)
    assert bin_chamfer_loss(edges, torch.tensor([1.0, 3.0, 0.0]).view(1, 1, 1, 3), mask).item() == 0.0
