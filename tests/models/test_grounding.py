import torch

from vidllm.config import GroundingConfig
from vidllm.models.grounding import GroundingHeads


def test_box_head_shapes_and_positive_size():
    heads = GroundingHeads(GroundingConfig(hidden=16), 32)
    boxes = heads.predict_box(torch.randn(5, 32) * 10)
    assert boxes.shape == (5, 6) and (boxes[:, 3:] > 0).all()


def test_match_logits_with_null_option_and_mask():
    torch.manual_seed(0)
    heads = GroundingHeads(GroundingConfig(hidden=16), 32)
    proposals = torch.rand(2, 4, 6) + 0.1
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    logits = heads.match_logits(torch.randn(2, 32), proposals, mask)
    assert logits.shape == (2, 5)
    assert torch.isinf(logits[0, 2:4]).all() and torch.isfinite(logits[0, [0, 1, 4]]).all()
    assert torch.isfinite(logits[1]).all()


def test_matching_learns_a_target_and_the_zero_target():
    """A few optimisation steps on the real heads separate target / no-target queries."""
    torch.manual_seed(0)
    heads = GroundingHeads(GroundingConfig(hidden=16), 8)
    proposals = torch.tensor([[[0, 0, 0, 1, 1, 1], [2, 0, 0, 0.5, 0.5, 0.5], [0, 3, 0, 1, 2, 1]]] * 2).float()
    queries = torch.randn(2, 8)
    target = torch.tensor([1, 3])  # row 0 → proposal 1, row 1 → "no target" column
    opt = torch.optim.Adam(heads.parameters(), lr=0.05)
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(heads.match_logits(queries, proposals), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert heads.match_logits(queries, proposals).argmax(-1).tolist() == [1, 3]


def test_object_prompt_embedding_depends_on_box():
    heads = GroundingHeads(GroundingConfig(hidden=16), 32)
    a = heads.object_embedding(torch.tensor([[0.0, 0, 0, 1, 1, 1]]))
    b = heads.object_embedding(torch.tensor([[1.0, 0, 0, 1, 1, 1]]))
    assert a.shape == (1, 32) and not torch.allclose(a, b)
