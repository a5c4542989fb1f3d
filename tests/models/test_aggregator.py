import pytest
import torch

from vidllm.config import load_config
from vidllm.models.aggregator import Aggregator
from vidllm.models.attention_blocks import RotaryPositionEmbedding2D, grid_positions


def _tiny_aggregator(**overrides) -> Aggregator:
    cfg = load_config("tiny").model.aggregator.model_copy(update=overrides)
    torch.manual_seed(0)
    agg = Aggregator(cfg, in_dim=24, patch_size=14)
    # Make the first-frame/other-frame tokens clearly different (init std is 1e-6).
    with torch.no_grad():
        agg.camera_token.normal_()
        agg.register_token.normal_()
    return agg


def test_output_shapes_and_kept_layers():
    agg = _tiny_aggregator()
    cfg = load_config("tiny").model.aggregator
    tokens = torch.randn(2, 3, 12, 24)
    outputs, start = agg(tokens, (3, 4))
    assert start == 1 + cfg.num_register_tokens
    assert agg.output_layers == sorted(set(cfg.intermediate_layers) | {cfg.depth - 1})
    assert len(outputs) == len(agg.output_layers)
    for out in outputs:
        assert out.shape == (2, 3, start + 12, 2 * cfg.embed_dim)
    assert agg.output_index(-1) == len(outputs) - 1


def test_first_frame_is_special_and_other_frames_are_permutation_equivariant():
    agg = _tiny_aggregator().eval()
    tokens = torch.randn(1, 4, 12, 24)
    outputs, _ = agg(tokens, (3, 4))
    perm = torch.tensor([0, 2, 3, 1])
    outputs_perm, _ = agg(tokens[:, perm], (3, 4))
    assert torch.allclose(outputs_perm[-1], outputs[-1][:, perm], atol=1e-5)
    # Moving a different frame to position 0 changes which frame defines the world.
    swapped, _ = agg(tokens[:, [1, 0, 2, 3]], (3, 4))
    assert not torch.allclose(swapped[-1][:, 1], outputs[-1][:, 0], atol=1e-3)


def test_rope_scores_depend_only_on_relative_position():
    rope = RotaryPositionEmbedding2D(100.0)
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(pq, pk):
        qr = rope(q, torch.tensor([[pq]]))
        kr = rope(k, torch.tensor([[pk]]))
        return (qr * kr).sum()

    assert torch.allclose(score([2, 3], [5, 1]), score([4, 6], [7, 4]), atol=1e-5)
    assert not torch.allclose(score([2, 3], [5, 1]), score([2, 3], [5, 2]), atol=1e-4)
    pos = grid_positions(2, 2, 3, num_special=3, device=torch.device("cpu"))
    assert pos.shape == (2, 9, 2)
    assert pos[0, :3].abs().sum() == 0 and pos[0, 3].tolist() == [1, 1] and pos[0, -1].tolist() == [2, 3]


def test_gradient_checkpointing_matches_plain_forward_and_backward():
    plain = _tiny_aggregator()
    ckpt = _tiny_aggregator(gradient_checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    tokens = torch.randn(1, 2, 12, 24, requires_grad=True)
    out_a, _ = plain(tokens, (3, 4))
    out_a[-1].square().mean().backward()
    grad_a = tokens.grad.clone()
    tokens.grad = None
    out_b, _ = ckpt.train()(tokens, (3, 4))
    out_b[-1].square().mean().backward()
    assert torch.allclose(out_a[-1], out_b[-1], atol=1e-6)
    assert torch.allclose(grad_a, tokens.grad, atol=1e-6)
    assert grad_a.abs().sum() > 0


def test_bad_patch_grid_is_rejected():
    with pytest.raises(ValueError, match="patch grid"):
        _tiny_aggregator()(torch.randn(1, 2, 12, 24), (3, 3))
