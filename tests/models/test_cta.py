import pytest
import torch

from vidllm.config import CTAConfig
from vidllm.models.cross_task_adapter import CrossTaskAdapter

DIM = 32


@pytest.mark.parametrize("variant", ["bridge", "none", "concat_sa", "cross_attn"])
def test_variants_shapes(variant):
    cta = CrossTaskAdapter(CTAConfig(variant=variant, num_bridge_tokens=4, num_heads=2), DIM)
    t_base = torch.randn(2, 3, 5, DIM)
    t_geom, t_lang = cta(t_base)
    assert t_geom.shape == t_lang.shape == t_base.shape
    if variant == "none":
        assert t_geom is t_base and t_lang is t_base
        assert not list(cta.parameters())
    else:
        assert not torch.allclose(t_geom, t_lang)


@pytest.mark.parametrize("k", [4, 8, 16, 32])
def test_bridge_token_count(k):
    cta = CrossTaskAdapter(CTAConfig(num_bridge_tokens=k, num_heads=2), DIM)
    assert cta.bridge_tokens.shape == (1, k, DIM)
    assert cta(torch.randn(1, 2, 4, DIM))[0].shape == (1, 2, 4, DIM)


def test_projection_mlps_are_two_layer_x4():
    cta = CrossTaskAdapter(CTAConfig(num_heads=2), DIM)
    assert cta.phi_geom.fc1.weight.shape == (4 * DIM, DIM)
    assert cta.phi_geom.fc2.weight.shape == (DIM, 4 * DIM)


def test_bridge_couples_the_streams():
    """The lang output depends on the geom projection only through the bridge tokens (eq. 2)."""
    torch.manual_seed(0)
    cta = CrossTaskAdapter(CTAConfig(num_bridge_tokens=4, num_heads=2), DIM)
    t_base = torch.randn(1, 2, 6, DIM)
    _, lang_a = cta(t_base)
    with torch.no_grad():  # a shift that varies over channels: LayerNorm would cancel a constant one
        cta.phi_geom.fc2.bias.add_(torch.randn(DIM))
    _, lang_b = cta(t_base)
    assert not torch.allclose(lang_a, lang_b)
    with torch.no_grad():  # bridge tokens themselves steer both streams
        cta.bridge_tokens.mul_(0)
    geom_c, lang_c = cta(t_base)
    assert not torch.allclose(lang_b, lang_c)


def test_gradients_reach_bridge_from_each_stream():
    cta = CrossTaskAdapter(CTAConfig(num_bridge_tokens=4, num_heads=2), DIM)
    t_base = torch.randn(1, 2, 6, DIM)
    for stream in (0, 1):
        cta.zero_grad()
        cta(t_base)[stream].square().mean().backward()
        assert cta.bridge_tokens.grad.abs().sum() > 0
        assert cta.bridge_from_geom.q_proj.weight.grad.abs().sum() > 0
        assert cta.bridge_from_lang.q_proj.weight.grad.abs().sum() > 0
