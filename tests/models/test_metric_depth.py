import math

import pytest
import torch

from vidllm.config import load_config
from vidllm.models.metric_depth import MetricDepthModel, adaptive_bin_centers, ordinal_bin_probabilities


def test_ordinal_bin_probabilities_hand_computed():
    # Logits for N = 3 bins: σ(0) = 0.5, σ(ln 3) = 0.75.
    logits = torch.tensor([0.0, math.log(3.0)]).view(1, 2)
    p = ordinal_bin_probabilities(logits, dim=1)[0]
    # q0 = 1, q1 = 0.5, q2 = 0.5·0.75 = 0.375 → p = (1−0.5, 0.5−0.375, 0.375)
    assert torch.allclose(p, torch.tensor([0.5, 0.125, 0.375]), atol=1e-6)


def test_ordinal_probabilities_are_a_distribution_with_monotone_exceedance():
    logits = torch.randn(3, 15, 4, 5) * 6
    p = ordinal_bin_probabilities(logits, dim=1)
    assert p.shape == (3, 16, 4, 5)
    assert torch.all(p >= 0)
    assert torch.allclose(p.sum(dim=1), torch.ones(3, 4, 5), atol=1e-5)
    exceed = 1 - torch.cumsum(p, dim=1)  # P(depth beyond bin k)
    assert torch.all(exceed[:, 1:] <= exceed[:, :-1] + 1e-6)
    # Raising one logit moves mass to farther bins only (stochastic dominance).
    bumped = logits.clone()
    bumped[:, 7] += 2.0
    p2 = ordinal_bin_probabilities(bumped, dim=1)
    assert torch.all(1 - torch.cumsum(p2, dim=1) >= exceed - 1e-6)


def test_adaptive_bins_hand_computed():
    centers, widths, edges = adaptive_bin_centers(torch.log(torch.tensor([1.0, 1.0, 2.0])), 1.0, 5.0)
    assert torch.allclose(widths, torch.tensor([1.0, 1.0, 2.0]))
    assert torch.allclose(edges, torch.tensor([1.0, 2.0, 3.0, 5.0]))
    assert torch.allclose(centers, torch.tensor([1.5, 2.5, 4.0]))


def test_metric_depth_model_shapes_range_and_bin_formula():
    cfg = load_config("tiny").model
    torch.manual_seed(0)
    model = MetricDepthModel(cfg.metric_depth, in_dim=32, patch_size=14, frames_chunk_size=2)
    features = torch.randn(2, 3, 12, 32, requires_grad=True)
    out = model(features, (42, 56))
    n = cfg.metric_depth.num_bins
    assert out["depth"].shape == (2, 3, 42, 56)
    assert out["probs"].shape == out["centers"].shape == (2, 3, n, 42, 56)
    assert out["bin_edges"].shape == (2, 3, n + 1)
    md = cfg.metric_depth
    assert torch.all(out["depth"] >= md.min_depth) and torch.all(out["depth"] <= md.max_depth)
    assert torch.allclose(out["probs"].sum(dim=2), torch.ones(2, 3, 42, 56), atol=1e-5)
    # depth = Σ_k p(k)·c(k)
    assert torch.allclose(out["depth"], (out["probs"] * out["centers"]).sum(dim=2), atol=1e-5)
    # refined centres stay inside their own bins, hence ordered
    lo = out["bin_edges"][..., :-1, None, None]
    hi = out["bin_edges"][..., 1:, None, None]
    assert torch.all(out["centers"] >= lo - 1e-5) and torch.all(out["centers"] <= hi + 1e-5)
    out["depth"].mean().backward()
    assert features.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.parameters())  # no unused parameters (DDP)


def test_metric_depth_rejects_mismatched_grid():
    model = MetricDepthModel(load_config("tiny").model.metric_depth, in_dim=32, patch_size=14)
    with pytest.raises(ValueError, match="do not tile"):
        model(torch.randn(1, 1, 12, 32), (56, 56))
