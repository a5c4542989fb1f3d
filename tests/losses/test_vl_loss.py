import math

import pytest
import torch

from vidllm.losses.vl import VLLossWeights, box_iou_3d, giou_3d_loss, grounding_terms, vl_loss


def box(cx, cy=0.0, cz=0.0, dx=1.0, dy=1.0, dz=1.0):
    return torch.tensor([[cx, cy, cz, dx, dy, dz]])


def test_giou_hand_values():
    assert giou_3d_loss(box(0.3, 1, 2, 0.5, 2, 1), box(0.3, 1, 2, 0.5, 2, 1)).item() == pytest.approx(0.0, abs=1e-7)
    # Half overlap: inter 0.5, union 1.5, hull 1.5 → IoU = GIoU = 1/3.
    iou, giou = box_iou_3d(box(0.5), box(0.0))
    assert iou.item() == pytest.approx(1 / 3) and giou.item() == pytest.approx(1 / 3)
    # Disjoint unit boxes 2 m apart: IoU 0, hull 3 → GIoU = −(3 − 2)/3; the loss still has a gradient.
    pred = box(2.0).requires_grad_()
    loss = giou_3d_loss(pred, box(0.0))
    assert loss.item() == pytest.approx(4 / 3)
    loss.backward()
    assert pred.grad[0, 0] > 0  # moving the box towards the target lowers the loss


def test_vl_loss_terms_from_predictions_and_targets():
    """Hand values: one row, two <ground> slots and two proposals; slot 0 lies near target 0 and
    is assigned it, slot 1 (near nothing: one target only) gets no term."""
    box_pred = torch.cat([box(0.5), box(9.0)])[None]  # [1, 2, 6]
    # Uniform match logits over 2 proposals + "not among them": NLL = log 3.
    match_logits = torch.zeros(1, 2, 3)
    # Slot 0 refines proposal 1 (the target's) to box(0.25): L1 = 0.25 / 6.
    refined_boxes = torch.stack([torch.cat([box(7.0), box(0.25)]), torch.cat([box(7.0), box(7.0)])])[None]
    logits = torch.tensor([[0.0, 0.0], [2.0, 0.0]])  # [N = 2, V = 2]
    outputs = {"supervised_logits": logits, "supervised_targets": torch.tensor([0, 1]), "box_pred": box_pred,
               "ground_mask": torch.tensor([[True, True]]), "match_logits": match_logits, "refined_boxes": refined_boxes}
    targets = {"box_targets": box(0.0), "target_proposals": torch.tensor([[1]])}  # [B, 6]: one target per row
    slots = grounding_terms(outputs, targets)
    assert slots["assignment"].tolist() == [[0, -1]] and slots["proposed"].tolist() == [[True, False]]
    assert slots["box_l1"][0].tolist() == pytest.approx([0.5 / 6, 0.0])
    assert slots["match_nll"][0].tolist() == pytest.approx([math.log(3), 0.0])
    assert slots["refine_l1"][0].tolist() == pytest.approx([0.25 / 6, 0.0])
    out = vl_loss(outputs, targets, VLLossWeights(lm=1.0, box=2.0, giou=3.0, match=4.0, refine=5.0))
    lm = (math.log(2) + math.log(1 + math.exp(2))) / 2
    assert out["lm"].item() == pytest.approx(lm)
    assert out["giou"].item() == pytest.approx(2 / 3)
    assert out["total"].item() == pytest.approx(lm + 2 * 0.5 / 6 + 3 * (2 / 3) + 4 * math.log(3) + 5 * 0.25 / 6)
    # The target not among the proposals: the match term reads the last column, and no refine term.
    outside = vl_loss(outputs, {"box_targets": box(0.0), "target_proposals": torch.tensor([[-1]])})
    assert outside["match"].item() == pytest.approx(math.log(3)) and "refine" not in outside
    # Nothing assigned (a zero-target row: no <ground>) → the LM term alone.
    no_slots = {"supervised_logits": logits, "supervised_targets": torch.tensor([0, 1]),
                "box_pred": torch.zeros(1, 0, 6), "ground_mask": torch.zeros(1, 0, dtype=torch.bool)}
    lm_only = vl_loss(no_slots, {"box_targets": torch.zeros(1, 1, 6), "target_mask": torch.zeros(1, 1, dtype=torch.bool)})
    assert set(lm_only) == {"total", "lm"} and lm_only["total"].item() == pytest.approx(lm)
    assert set(vl_loss(no_slots)) == {"total", "lm"}  # no box targets: no <ground> terms
    assert vl_loss({})["total"].item() == 0.0
    with pytest.raises(ValueError, match="target_proposals needs box_targets"):
        vl_loss(outputs, {"target_proposals": torch.tensor([[1]])})
