import itertools

import pytest
import torch

from vidllm.config import GroundingConfig, load_config
from vidllm.losses.vl import assign_targets, assignment_cost, grounding_terms, vl_loss
from vidllm.models.grounding import GroundingHeads
from vidllm.models.vidllm import VidLLM
from vidllm.tokenizer import EOS, GROUND, SpecialTokenIds, build_prompt, train_tokenizer


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


def _total_cost(cost, assignment):
    return sum(float(cost[g, t]) for g, t in enumerate(assignment) if t >= 0)


def test_assign_targets_is_the_minimum_cost_one_to_one_matching():
    # Predictions near the targets taken in another order: the k-th <ground> is not the k-th id.
    targets = torch.tensor([[[0.0, 0, 0, 1, 1, 1], [4, 0, 0, 0.5, 0.5, 0.5], [0, 3, 0, 1, 2, 1]]])
    pred = targets[:, [2, 0, 1]] + 0.05
    every = torch.ones(1, 3, dtype=torch.bool)
    assert assign_targets(pred, every, targets, every).tolist() == [[2, 0, 1]]
    # Random boxes: the total cost is the brute-force minimum over all one-to-one assignments.
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        targets = torch.rand(1, 3, 6, generator=generator) * 2 + 0.1
        pred = torch.rand(1, 3, 6, generator=generator) * 2 + 0.1
        assignment = assign_targets(pred, every, targets, every)[0].tolist()
        cost = assignment_cost(pred, targets)[0]
        assert sorted(assignment) == [0, 1, 2]
        best = min(_total_cost(cost, p) for p in itertools.permutations(range(3)))
        assert _total_cost(cost, assignment) == pytest.approx(best)


def test_assign_targets_with_padding_and_unequal_counts():
    targets = torch.tensor([[[0.0, 0, 0, 1, 1, 1], [5, 0, 0, 1, 1, 1], [9, 9, 9, 1, 1, 1]]])
    pred = torch.tensor([[[5.1, 0, 0, 1, 1, 1], [0.1, 0, 0, 1, 1, 1], [9, 9, 9, 1, 1, 1]]])
    # Slot 2 is padding and target 2 is padding: neither is ever assigned.
    out = assign_targets(pred, torch.tensor([[True, True, False]]), targets, torch.tensor([[True, True, False]]))
    assert out.tolist() == [[1, 0, -1]]
    # Fewer <ground>s than targets (an answer cut short): the closest target goes to the one slot.
    out = assign_targets(pred, torch.tensor([[True, False, False]]), targets, torch.ones(1, 3, dtype=torch.bool))
    assert out.tolist() == [[1, -1, -1]]
    # A zero-target row (no target) and a diverged prediction: no assignment, no solver error.
    nan_pred = torch.full((1, 3, 6), float("nan"))
    assert assign_targets(nan_pred, torch.ones(1, 3, dtype=torch.bool), targets,
                          torch.zeros(1, 3, dtype=torch.bool)).tolist() == [[-1, -1, -1]]
    assert sorted(assign_targets(nan_pred, torch.ones(1, 3, dtype=torch.bool), targets,
                                 torch.ones(1, 3, dtype=torch.bool))[0].tolist()) == [0, 1, 2]


@pytest.fixture(scope="module")
def tiny_model():
    tokenizer = train_tokenizer(vocab_size=512)
    torch.manual_seed(0)
    model = VidLLM(load_config("tiny").model, SpecialTokenIds.from_tokenizer(tokenizer), 512)
    for module in model.modules():  # dropout off: the shared and spliced paths must see one function
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model, tokenizer


def _rows(tokenizer, texts):
    """Rows as stage2_batch builds them: prompt up to "ASSISTANT:" unsupervised."""
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    labels = ids.masked_fill(mask == 0, -100)
    for r, text in enumerate(texts):
        start = len(tokenizer(text.rsplit("ASSISTANT:", 1)[0] + "ASSISTANT:", add_special_tokens=False)["input_ids"])
        labels[r, :start] = -100
    return ids, mask, labels


THREE_TARGETS = torch.tensor([[0.2, 0.1, 0.3, 0.6, 0.5, 0.8], [2.5, -1.0, 0.4, 1.2, 0.6, 0.9],
                              [-1.5, 2.0, 0.5, 0.4, 0.4, 1.1]])


@pytest.mark.parametrize("share", [True, False])
def test_every_ground_of_a_three_target_row_gets_its_own_box_and_match_term(tiny_model, share):
    """A 3-target row (answered with three <ground>s), a zero-target row ("none") and a QA row:
    each <ground> is assigned its own target by the minimum-cost matching (in the losses; the
    model never sees the targets), its box L1, match cross-entropy and refine L1 are computed
    against that target, and the losses are their means."""
    model, tokenizer = tiny_model
    texts = [build_prompt("all the chairs.", grounding=True) + GROUND * 3 + EOS,
             build_prompt("the purple bathtub.", grounding=True) + f" none{EOS}",
             build_prompt("What color is the sofa?") + f" red{EOS}"]
    ids, mask, labels = _rows(tokenizer, texts)
    box_targets = torch.zeros(3, 3, 6)
    box_targets[0] = THREE_TARGETS
    target_mask = torch.tensor([[True] * 3, [False] * 3, [False] * 3])
    proposals = torch.rand(3, 5, 6, generator=torch.Generator().manual_seed(2)) + 0.1
    proposals[0, [3, 0, 4]] = THREE_TARGETS  # targets 0, 1, 2 are proposals 3, 0, 4
    target_proposals = torch.tensor([[3, 0, 4], [-1] * 3, [-1] * 3])
    targets = dict(box_targets=box_targets, target_mask=target_mask, target_proposals=target_proposals)
    images = torch.rand(1, 3, 3, 56, 56, generator=torch.Generator().manual_seed(1))
    model.zero_grad(set_to_none=True)
    out = model(images, ids, mask, labels, proposals=proposals, proposal_mask=torch.ones(3, 5, dtype=torch.bool),
                scene_index=torch.zeros(3, dtype=torch.long), share_prefix=share)
    assert out["ground_mask"].tolist() == [[True] * 3, [False] * 3, [False] * 3]
    slots, losses = grounding_terms(out, targets), vl_loss(out, targets)
    assignment = slots["assignment"][0].tolist()
    assert sorted(assignment) == [0, 1, 2]
    cost = assignment_cost(out["box_pred"][0].detach(), THREE_TARGETS)
    assert _total_cost(cost, assignment) == pytest.approx(
        min(_total_cost(cost, p) for p in itertools.permutations(range(3))))
    log_probs = torch.log_softmax(out["match_logits"][0].detach().float(), -1)
    for g, t in enumerate(assignment):
        l1 = (out["box_pred"][0, g] - THREE_TARGETS[t]).abs().mean()
        assert slots["box_l1"][0, g].item() == pytest.approx(l1.item()) and l1 > 0
        assert slots["match_nll"][0, g].item() == pytest.approx(-log_probs[g, int(target_proposals[0, t])].item())
        # The refine term reads the slot's refinement of its target's proposal.
        refined = out["refined_boxes"][0, g, int(target_proposals[0, t])]
        assert slots["refine_l1"][0, g].item() == pytest.approx((refined - THREE_TARGETS[t]).abs().mean().item())
    # The zero-target and QA rows have no <ground> slot, hence no box, match or refine term.
    for key in ("box_l1", "match_nll", "refine_l1"):
        assert (slots[key][1:] == 0).all(), key
    assert (slots["assignment"][1:] == -1).all()
    assert losses["box"].item() == pytest.approx(slots["box_l1"][0].mean().item())
    assert losses["match"].item() == pytest.approx(slots["match_nll"][0].mean().item())
    assert losses["refine"].item() == pytest.approx(slots["refine_l1"][0].mean().item())
    # Each target's term reaches its own <ground> and only it; together they reach all three.
    hidden = out["ground_hidden"]
    slot_grad = torch.autograd.grad(slots["box_l1"][0, 1] + slots["match_nll"][0, 1] + slots["refine_l1"][0, 1],
                                    hidden, retain_graph=True)[0]
    assert (slot_grad[0, 1].abs() > 0).any() and slot_grad[0, [0, 2]].abs().sum() == 0
    grad = torch.autograd.grad(losses["box"] + losses["match"] + losses["refine"], hidden, retain_graph=True)[0]
    assert all((grad[0, g].abs() > 0).any() for g in range(3))
    losses["total"].backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(float(p.grad.abs().sum()) > 0 for p in model.grounding.box_head.parameters())


def test_zero_target_row_trains_the_no_target_answer(tiny_model):
    """A zero-target row is answered "none" without <ground>: its LM term is present (the
    "none" tokens and eos are supervised and carry gradient), with no box or match term."""
    model, tokenizer = tiny_model
    text = build_prompt("the purple bathtub.", grounding=True) + f" none{EOS}"
    ids, mask, labels = _rows(tokenizer, [text])
    supervised = labels[labels != -100].tolist()
    assert supervised == tokenizer(" none", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    images = torch.rand(1, 3, 3, 56, 56, generator=torch.Generator().manual_seed(1))
    model.zero_grad(set_to_none=True)
    out = model(images, ids, mask, labels, proposals=torch.rand(1, 4, 6) + 0.1)
    losses = vl_loss(out, dict(box_targets=torch.zeros(1, 1, 6), target_mask=torch.zeros(1, 1, dtype=bool),
                               target_proposals=torch.full((1, 1), -1)))
    assert out["ground_mask"].shape == (1, 0) and out["box_pred"].shape == (1, 0, 6)
    assert set(losses) == {"total", "lm"}  # no box, GIoU, match or refine term
    assert torch.isfinite(losses["lm"]) and losses["lm"] > 0 and torch.equal(losses["total"], losses["lm"])
    losses["total"].backward()
    assert float(model.llm.get_output_embeddings().weight.grad[supervised[0]].abs().sum()) > 0
    assert all(p.grad is None or float(p.grad.abs().sum()) == 0 for p in model.grounding.box_head.parameters())
