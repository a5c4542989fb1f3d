"""Grounding heads: each `<ground>` token's hidden state → a box, proposal scores and
refined proposals; the Scan2Cap object prompt (box → embedding at the `<obj>` placeholder).
Which target each `<ground>` is supervised with is the losses' business
(`vidllm.losses.vl.assign_targets`).

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
from torch import Tensor, nn

from vidllm.config import GroundingConfig


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
        """The `<ground>` query's correction of a proposal: ground_hidden `[..., D]`, proposal
        `[..., 6]` → box `[..., 6]` (centre shifted, size scaled by at most e^±1). Leading dims
        broadcast: `[B, G, 1, D]` with `[B, 1, M, 6]` refines every proposal for every query
        (`[B, G, M, 6]`), each side encoded once."""
        query, key = torch.broadcast_tensors(self.query_proj(ground_hidden), self.proposal_encoder(proposal))
        delta = self.refine(torch.cat([query, key], dim=-1))
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
