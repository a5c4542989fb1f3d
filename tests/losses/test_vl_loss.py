import pytest
import torch

from vidllm.losses.vl import VLLossWeights, box_iou_3d, giou_3d_loss, vl_loss


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


def test_vl_loss_weights_model_terms_and_adds_giou_on_assigned_grounds():
    # One row, two <ground> slots: slot 0 is assigned target 0, slot 1 none (ignored by GIoU).
    box_pred = torch.cat([box(0.5), box(9.0)])[None]  # [1, 2, 6]
    outputs = {"loss_lm": torch.tensor(2.0), "loss_box": torch.tensor(0.5), "loss_match": torch.tensor(0.25),
               "box_pred": box_pred, "assigned_targets": torch.zeros(1, 2, 6) + box(0.0),
               "assignment": torch.tensor([[0, -1]])}
    out = vl_loss(outputs, VLLossWeights(lm=1.0, box=2.0, giou=3.0, match=4.0))
    assert out["giou"].item() == pytest.approx(2 / 3)
    assert out["total"].item() == pytest.approx(2.0 + 2 * 0.5 + 3 * (2 / 3) + 4 * 0.25)
    # Nothing assigned (a zero-target row: no <ground>) → no GIoU, the LM term alone.
    lm_only = vl_loss({"loss_lm": torch.tensor(1.5), "box_pred": torch.zeros(1, 0, 6),
                       "assigned_targets": torch.zeros(1, 0, 6), "assignment": torch.zeros(1, 0, dtype=torch.long)})
    assert set(lm_only) == {"total", "lm"} and lm_only["total"].item() == 1.5
    assert vl_loss({})["total"].item() == 0.0
