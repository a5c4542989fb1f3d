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


def test_decoder_levels_read_four_distinct_encoder_layers():
    """Each DPT level reads its own encoder layer: gradient reaches all four, and the result
    differs from feeding the final tokens at every level."""
    torch.manual_seed(0)
    model = MetricDepthModel(load_config("tiny").model.metric_depth, in_dim=32, patch_size=14)
    final = torch.randn(1, 2, 12, 32)
    levels = [torch.randn(1, 2, 12, 32, requires_grad=True) for _ in range(4)]
    out = model(final, (42, 56), levels)
    out["depth"].mean().backward()
    assert all(level.grad.abs().sum() > 0 for level in levels)
    assert not torch.allclose(out["depth"], model(final, (42, 56))["depth"])
    with pytest.raises(ValueError, match="4 encoder layers"):
        model(final, (42, 56), levels[:3])


def test_vidllm_feeds_the_configured_encoder_layers_to_metric_depth():
    from vidllm.config import ConfigError
    from vidllm.models.vidllm import VidLLM

    cfg = load_config("tiny", overrides=["model.metric_depth.encoder_layers=[0, 0, 1, 1]"]).model
    torch.manual_seed(0)
    model = VidLLM(cfg, vocab_size=512).eval()
    assert model.metric_depth_layers == [0, 0, 1, 1]
    assert VidLLM(load_config("tiny").model, vocab_size=512).metric_depth_layers == [0, 0, 1, 1]  # quarters of 2
    images = torch.rand(1, 2, 3, 56, 56)
    with torch.no_grad():
        recon = model.encode_video(images).recon
        pixels = (images[0] - model.encoder.mean) / model.encoder.std
        hidden = model.encoder.backbone(pixel_values=pixels, output_hidden_states=True).hidden_states
        prefix = model.encoder.num_prefix_tokens
        levels = [hidden[i + 1][None, :, prefix:] for i in (0, 0, 1, 1)]
        final = model.encoder(images)
        expected = model.reconstruction.metric_depth(final, (56, 56), levels)["depth"]
    assert torch.allclose(recon["metric_depth"], expected, atol=1e-6)
    assert not torch.equal(levels[0], levels[3])
    with pytest.raises(ConfigError, match="encoder_layers"):
        load_config("tiny", overrides=["model.metric_depth.encoder_layers=[0, 1, 2, 3]"])
