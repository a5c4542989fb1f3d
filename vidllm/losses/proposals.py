"""Training signal of the proposal head (`vidllm.models.proposals`) from ground-truth boxes.

A 3D-patch token belongs to the smallest ground-truth box that contains its voxel centroid (a
margin absorbs the voxel size and geometry error); tokens inside no box are background.
Objectness is a balanced binary cross-entropy (objects cover a small share of a room's voxels);
each object token regresses its object's box: L1 on centre and log size, plus 1 − GIoU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from vidllm.losses.vl import box_iou_3d


def proposal_targets(xyz: Tensor, mask: Tensor, gt_boxes: Tensor, gt_mask: Tensor, margin: float = 0.1) -> Tensor:
    """xyz `[B, N, 3]`, mask `[B, N]`, gt_boxes `[B, T, 6]`, gt_mask `[B, T]` → `[B, N]` long:
    the index of each token's object (smallest containing box, grown by `margin` metres per
    side), −1 for background and padding."""
    half = gt_boxes[..., 3:].float() / 2 + margin
    inside = ((xyz[:, :, None].float() - gt_boxes[:, None, :, :3].float()).abs() <= half[:, None]).all(-1)
    inside &= gt_mask[:, None] & mask[..., None]  # [B, N, T]
    volume = gt_boxes[..., 3:].float().prod(-1)[:, None].expand_as(inside)
    volume = torch.where(inside, volume, float("inf"))
    best = volume.argmin(-1)
    return torch.where(inside.any(-1), best, -1)


def proposal_loss(objectness: Tensor, boxes: Tensor, xyz: Tensor, mask: Tensor, gt_boxes: Tensor,
                  gt_mask: Tensor) -> dict[str, Tensor]:
    """Objectness `[B, N]` logits and boxes `[B, N, 6]` of the tokens at `xyz` (mask `[B, N]`)
    against the scenes' ground-truth boxes `[B, T, 6]` (mask `[B, T]`) → {objectness, box}."""
    target = proposal_targets(xyz, mask, gt_boxes, gt_mask)
    positive = target >= 0
    logits = objectness.float()[mask]
    labels = positive[mask].float()
    pos = labels.sum().clamp_min(1.0)
    neg = (1 - labels).sum().clamp_min(1.0)
    weight = torch.where(labels > 0, 0.5 / pos, 0.5 / neg)  # each class half the loss
    out = {"objectness": (F.binary_cross_entropy_with_logits(logits, labels, reduction="none") * weight).sum()}
    if bool(positive.any()):
        pred = boxes[positive].float()
        gt = gt_boxes.float().gather(1, target.clamp_min(0)[..., None].expand(-1, -1, 6))[positive]
        l1 = (pred[:, :3] - gt[:, :3]).abs().mean(-1) + (pred[:, 3:].log() - gt[:, 3:].clamp_min(1e-3).log()).abs().mean(-1)
        out["box"] = l1.mean() + (1.0 - box_iou_3d(pred, gt)[1]).mean()
    else:
        out["box"] = boxes.sum() * 0.0
    return out
