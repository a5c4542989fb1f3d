"""Grounding heads: each `<ground>` token's hidden state → a box and proposal
scores; the Scan2Cap object prompt (box → embedding at the `<obj>` placeholder); which target
each `<ground>` is supervised with (`assign_targets`).

Boxes are `[cx, cy, cz, dx, dy, dz]` in metres in the scene frame (gravity-aligned, origin
at the first camera).

Conventions: an answer holds one `<ground>` per referred object; a query that refers to no
object (Multi3DRefer zero-target) is answered without any `<ground>` (the text "none"), so "no
target" is the language model's decision, trained by its cross-entropy and read the same way by
`vidllm predict` / `vidllm ground` (no `<ground>` → no box). The match head's extra last column
means "this `<ground>`'s referent is not among the given proposals".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from vidllm.config import GroundingConfig
from vidllm.losses.vl import box_iou_3d


class BoxEncoder(nn.Module):
    """Box `[..., 6]` → embedding `[..., out_dim]`; sizes enter as log so scale is symmetric."""

    def __init__(self, hidden: int, out_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(6, hidden)
        self.fc2 = nn.Linear(hidden, out_dim)

    def forward(self, boxes: Tensor) -> Tensor:
        """boxes `[..., 6]` → `[..., out_dim]`."""
        feats = torch.cat([boxes[..., :3], boxes[..., 3:].clamp_min(1e-3).log()], dim=-1)
        return self.fc2(F.gelu(self.fc1(feats)))


class GroundingHeads(nn.Module):
    def __init__(self, cfg: GroundingConfig, llm_dim: int):
        super().__init__()
        hidden = cfg.hidden
        self.box_head = nn.Sequential(nn.Linear(llm_dim, hidden), nn.GELU(), nn.Linear(hidden, 6))
        self.query_proj = nn.Sequential(nn.Linear(llm_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.proposal_encoder = BoxEncoder(hidden, hidden)
        # Score of "no matching object" (Multi3DRefer zero-target): a learned extra proposal.
        self.null_proposal = nn.Parameter(torch.zeros(hidden))
        self.object_prompt = BoxEncoder(hidden, llm_dim)
        # Refinement of a selected proposal; zero-initialised, so it starts as the identity.
        self.refine = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.GELU(), nn.Linear(hidden, 6))
        nn.init.zeros_(self.refine[-1].weight)
        nn.init.zeros_(self.refine[-1].bias)

    def refine_box(self, ground_hidden: Tensor, proposal: Tensor) -> Tensor:
        """The `<ground>` query's correction of the proposal it selected: ground_hidden `[..., D]`,
        proposal `[..., 6]` → box `[..., 6]` (centre shifted, size scaled by at most e^±1)."""
        delta = self.refine(torch.cat([self.query_proj(ground_hidden), self.proposal_encoder(proposal)], dim=-1))
        return torch.cat([proposal[..., :3] + delta[..., :3],
                          proposal[..., 3:] * torch.exp(torch.tanh(delta[..., 3:]))], dim=-1)

    def predict_box(self, ground_hidden: Tensor) -> Tensor:
        """ground_hidden `[..., D]` → boxes `[..., 6]` (centre, positive size via softplus)."""
        raw = self.box_head(ground_hidden)
        return torch.cat([raw[..., :3], F.softplus(raw[..., 3:]) + 1e-3], dim=-1)

    def match_logits(self, ground_hidden: Tensor, proposals: Tensor, proposal_mask: Tensor | None = None) -> Tensor:
        """ground_hidden `[B, D]` (or `[B, G, D]`: G queries scoring the same proposals), proposals
        `[B, M, 6]`, mask `[B, M]` → logits `[B, M + 1]` (or `[B, G, M + 1]`).

        The last column is the "referent not among the proposals" option; padded proposals get −inf.
        """
        single = ground_hidden.dim() == 2
        query = self.query_proj(ground_hidden[:, None] if single else ground_hidden)  # [B, G, h]
        keys = self.proposal_encoder(proposals)  # [B, M, h], once for all G queries
        keys = torch.cat([keys, self.null_proposal.expand(keys.shape[0], 1, -1)], dim=1)
        logits = torch.einsum("bgh,bmh->bgm", query, keys) / keys.shape[-1] ** 0.5
        if proposal_mask is not None:
            full = torch.cat([proposal_mask, proposal_mask.new_ones(proposal_mask.shape[0], 1)], dim=1)
            logits = logits.masked_fill(~full[:, None], float("-inf"))
        return logits[:, 0] if single else logits

    def object_embedding(self, boxes: Tensor) -> Tensor:
        """boxes `[B, 6]` → `[B, D]` embeddings placed at the `<obj>` token (Scan2Cap prompt)."""
        return self.object_prompt(boxes)


def assignment_cost(pred: Tensor, targets: Tensor) -> Tensor:
    """Cost of supervising each predicted box with each target: pred `[..., G, 6]`, targets
    `[..., T, 6]` → `[..., G, T]` = L1 over centre and size (mean of the 6) + (1 − GIoU), the
    two box terms of the loss with unit weights."""
    pred, targets = pred[..., :, None, :].float(), targets[..., None, :, :].float()
    return (pred - targets).abs().mean(-1) + 1.0 - box_iou_3d(pred, targets)[1]


@torch.no_grad()
def assign_targets(pred: Tensor, pred_mask: Tensor, targets: Tensor, target_mask: Tensor) -> Tensor:
    """Which target each `<ground>` of a row is supervised with (box and match).

    The targets of a row are a set: no benchmark fixes an order for them in the text
    (Multi3DRefer lists object ids, "all the chairs" has no first chair), so the k-th `<ground>`
    is not tied to the k-th id. Instead each row's `<ground>`s and targets are matched
    one-to-one by the Hungarian algorithm on `assignment_cost` of the current predictions
    (DETR-style; computed without gradient). With fewer `<ground>`s than targets (an answer cut
    by the token budget) the extra targets go unsupervised, and vice versa; a single target
    goes to the single `<ground>`.

    Args:
        pred: `[B, G, 6]` predicted boxes, one per `<ground>` slot; pred_mask `[B, G]` real slots.
        targets: `[B, T, 6]` target boxes; target_mask `[B, T]` real targets.
    Returns:
        `[B, G]` long: index into the row's targets, −1 for a slot without a target.
    """
    rows, slots = pred_mask.shape
    out = torch.full((rows, slots), -1, dtype=torch.long)
    if slots and targets.shape[1]:
        # Non-finite costs (a diverged prediction) would make the solver raise: make them maximal.
        cost = torch.nan_to_num(assignment_cost(pred, targets), nan=1e6, posinf=1e6, neginf=1e6).cpu()
        pred_mask, target_mask = pred_mask.cpu(), target_mask.cpu()
        for b in range(rows):
            g = pred_mask[b].nonzero().flatten()
            t = target_mask[b].nonzero().flatten()
            if len(g) and len(t):
                chosen_g, chosen_t = linear_sum_assignment(cost[b][g][:, t].numpy())
                out[b, g[chosen_g]] = t[chosen_t]
    return out.to(pred.device)
