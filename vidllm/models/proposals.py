"""Object proposals from the model's own 3D patches: grounding from video alone.

ScanRefer-style benchmarks score a box, and peers take the candidate boxes from a separate
detector run on the ground-truth mesh (Mask3D) or from the ground-truth instances. Here a small
head votes from every pooled 3D-patch token (voxel centroid `xyz` in the scene frame): an
objectness logit, and the box of the object the voxel belongs to as an offset from `xyz` plus a
size. `decode_proposals` keeps confident votes and merges those that agree with 3D NMS; the
`<ground>` token then selects one of these boxes and refines it (`GroundingHeads.refine_box`).
Trained on ground-truth boxes by `vidllm.losses.proposals.proposal_loss`.

Boxes are `[cx, cy, cz, dx, dy, dz]` in metres in the scene frame.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vidllm.losses.vl import box_iou_3d


class ProposalHead(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim + 3, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, 7))

    def forward(self, tokens: Tensor, xyz: Tensor) -> tuple[Tensor, Tensor]:
        """tokens `[B, N, D]`, xyz `[B, N, 3]` voxel centroids → (objectness logits `[B, N]`,
        boxes `[B, N, 6]`: centre = xyz + predicted offset, size > 0)."""
        raw = self.mlp(torch.cat([tokens, xyz.to(tokens.dtype)], dim=-1)).float()
        centre = xyz.float() + raw[..., 1:4]
        size = F.softplus(raw[..., 4:7] + 0.5) + 0.02  # starts near 1 m, never degenerate
        return raw[..., 0], torch.cat([centre, size], dim=-1)


@torch.no_grad()
def decode_proposals(objectness: Tensor, boxes: Tensor, mask: Tensor, max_proposals: int,
                     score_threshold: float = 0.3, nms_iou: float = 0.25) -> tuple[Tensor, Tensor]:
    """Votes → each scene's proposals.

    Args:
        objectness: `[B, N]` logits; boxes `[B, N, 6]`; mask `[B, N]` real tokens.
        max_proposals: proposals kept per scene (the best-scored after NMS).
        score_threshold: minimum objectness probability (the best vote is kept regardless, so
            every scene has at least one proposal).
        nms_iou: a vote overlapping a kept one by more than this is merged into it.
    Returns:
        proposals `[B, M, 6]` (zero padding) and proposal_mask `[B, M]`, best first.
    """
    scenes = objectness.shape[0]
    kept: list[Tensor] = []
    for b in range(scenes):
        scores = torch.sigmoid(objectness[b].float()).masked_fill(~mask[b], -1.0)
        order = scores.argsort(descending=True)
        order = order[(scores[order] >= score_threshold) | (torch.arange(len(order), device=order.device) == 0)]
        order = order[scores[order] >= 0]  # padding never
        candidates = boxes[b, order].float()
        chosen: list[int] = []
        for i in range(len(candidates)):
            if chosen and bool((box_iou_3d(candidates[i][None], candidates[chosen])[0] > nms_iou).any()):
                continue
            chosen.append(i)
            if len(chosen) == max_proposals:
                break
        kept.append(candidates[chosen])
    width = max(1, max(len(k) for k in kept))
    proposals = boxes.new_zeros(scenes, width, 6, dtype=torch.float32)
    proposal_mask = torch.zeros(scenes, width, dtype=torch.bool, device=boxes.device)
    for b, k in enumerate(kept):
        proposals[b, : len(k)] = k
        proposal_mask[b, : len(k)] = True
    return proposals, proposal_mask


def recall_at_iou(proposals: Tensor, proposal_mask: Tensor, gt_boxes: Tensor, gt_mask: Tensor,
                  threshold: float = 0.25) -> float:
    """Share of ground-truth boxes (`[B, T, 6]`, mask `[B, T]`) overlapped by some proposal with
    IoU ≥ threshold."""
    iou = box_iou_3d(gt_boxes[:, :, None].float(), proposals[:, None].float())[0]  # [B, T, M]
    iou = iou.masked_fill(~proposal_mask[:, None], 0.0)
    hit = (iou.max(-1).values >= threshold) & gt_mask
    return float(hit.sum()) / max(1, int(gt_mask.sum()))
