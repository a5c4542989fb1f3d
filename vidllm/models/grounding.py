"""Grounding heads: the `<ground>` token's hidden state → a box and proposal
scores; the Scan2Cap object prompt (box → embedding at the `<obj>` placeholder).

Boxes are `[cx, cy, cz, dx, dy, dz]` in metres in the scene frame (gravity-aligned, origin
at the first camera).
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

    def predict_box(self, ground_hidden: Tensor) -> Tensor:
        """ground_hidden `[..., D]` → boxes `[..., 6]` (centre, positive size via softplus)."""
        raw = self.box_head(ground_hidden)
        return torch.cat([raw[..., :3], F.softplus(raw[..., 3:]) + 1e-3], dim=-1)

    def match_logits(self, ground_hidden: Tensor, proposals: Tensor, proposal_mask: Tensor | None = None) -> Tensor:
        """ground_hidden `[B, D]`, proposals `[B, M, 6]`, mask `[B, M]` → logits `[B, M + 1]`.

        The last column is the "no target" option; padded proposals get −inf.
        """
        query = self.query_proj(ground_hidden)  # [B, h]
        keys = self.proposal_encoder(proposals)  # [B, M, h]
        keys = torch.cat([keys, self.null_proposal.expand(keys.shape[0], 1, -1)], dim=1)
        logits = torch.einsum("bh,bmh->bm", query, keys) / keys.shape[-1] ** 0.5
        if proposal_mask is not None:
            full = torch.cat([proposal_mask, proposal_mask.new_ones(proposal_mask.shape[0], 1)], dim=1)
            logits = logits.masked_fill(~full, float("-inf"))
        return logits

    def object_embedding(self, boxes: Tensor) -> Tensor:
        """boxes `[B, 6]` → `[B, D]` embeddings placed at the `<obj>` token (Scan2Cap prompt)."""
        return self.object_prompt(boxes)
