import math

import pytest
import torch

from vidllm.config import load_config
from vidllm.models.camera_head import CameraHead
from vidllm.models.dpt_head import DPTHead, activate_head, uv_position_embedding


def test_camera_head_iterative_refinement_shapes_and_fov_activation():
    heads = load_config("tiny").model.heads.model_copy(update={"camera_iters": 3})
    torch.manual_seed(0)
    head = CameraHead(heads, dim_in=64)
    tokens = torch.randn(2, 5, 7, 64, requires_grad=True)
    poses = head([torch.randn(2, 5, 7, 64), tokens])  # reads the last layer only
    assert len(poses) == 3
    assert all(p.shape == (2, 5, 9) for p in poses)
    assert torch.all(poses[-1][..., 7:] >= 0)  # FoVs through ReLU
    assert not torch.allclose(poses[0], poses[-1])  # refinement changes the estimate
    poses[-1].sum().backward()
    assert tokens.grad[:, :, 0].abs().sum() > 0  # camera token (index 0) is used
    assert tokens.grad[:, :, 1:].abs().sum() == 0  # other tokens are not


def _dpt(output_dim: int, activation: str, chunk: int = 8) -> DPTHead:
    torch.manual_seed(0)
    return DPTHead(32, patch_size=14, output_dim=output_dim, features=16, out_channels=[16, 16, 32, 32],
                   intermediate_layer_idx=[0, 1, 1, 2], activation=activation, frames_chunk_size=chunk)


def test_dpt_depth_head_shapes_positive_depth_and_chunking():
    tokens = [torch.randn(2, 3, 3 + 12, 32) for _ in range(3)]  # patch grid 3x4 → image 42x56
    images = torch.rand(2, 3, 3, 42, 56)
    depth, conf = _dpt(2, "exp")(tokens, images, patch_start_idx=3)
    assert depth.shape == (2, 3, 42, 56, 1) and conf.shape == (2, 3, 42, 56)
    assert torch.all(depth > 0) and torch.all(conf > 1)
    depth1, conf1 = _dpt(2, "exp", chunk=1)(tokens, images, patch_start_idx=3)
    assert torch.allclose(depth, depth1, atol=1e-5) and torch.allclose(conf, conf1, atol=1e-5)


def test_dpt_point_head_and_gradient():
    tokens = [torch.randn(1, 2, 2 + 16, 32, requires_grad=True) for _ in range(3)]
    points, conf = _dpt(4, "inv_log")(tokens, torch.rand(1, 2, 3, 56, 56), patch_start_idx=2)
    assert points.shape == (1, 2, 56, 56, 3) and conf.shape == (1, 2, 56, 56)
    points.mean().backward()
    assert all(t.grad[:, :, 2:].abs().sum() > 0 for t in tokens)
    assert all(t.grad[:, :, :2].abs().sum() == 0 for t in tokens)  # special tokens unused


def test_head_activations():
    raw = torch.tensor([1.0, -2.0, 0.5, 0.0]).view(1, 4, 1, 1)
    xyz, conf = activate_head(raw, "inv_log")
    assert torch.allclose(xyz[0, 0, 0], torch.tensor([math.e - 1, -(math.e**2 - 1), math.exp(0.5) - 1]))
    assert conf.item() == 2.0
    depth, _ = activate_head(raw[:, 2:], "exp")
    assert math.isclose(depth.item(), math.exp(0.5), rel_tol=1e-6)
    with pytest.raises(ValueError, match="unknown DPT activation"):
        activate_head(raw, "softplus")


def test_uv_position_embedding_is_aspect_aware_and_bounded():
    emb = uv_position_embedding(4, 6, 16, aspect_ratio=1.5, device="cpu", dtype=torch.float32)
    assert emb.shape == (16, 4, 6)
    assert emb.abs().max() <= 1.0
    # channel 0 = sin(u·ω0) varies along width only; channel 8 = sin(v·ω0) along height only
    assert torch.allclose(emb[0], emb[0, :1].expand(4, 6)) and not torch.allclose(emb[0, :, 0], emb[0, :, 1])
    assert torch.allclose(emb[8], emb[8, :, :1].expand(4, 6))
