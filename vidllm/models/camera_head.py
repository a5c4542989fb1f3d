"""Camera head: iterative refinement of the 9-d pose encoding from the camera tokens.

Each iteration embeds the current estimate (a learned "empty pose" first, then the detached
previous estimate), modulates the normalised camera tokens with it (adaLN: shift, scale,
gate), runs a small transformer trunk across the S camera tokens and predicts a delta.
Parameter names match VGGT's `camera_head.*`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vidllm.config import HeadsConfig
from vidllm.models.attention_blocks import Block, Mlp

POSE_DIM = 9  # translation (3) + quaternion XYZW (4) + fov_h, fov_w


def activate_pose(pose_enc: Tensor) -> Tensor:
    """Translation and quaternion stay linear (not renormalised, as VGGT); FoVs go through ReLU."""
    return torch.cat([pose_enc[..., :7], F.relu(pose_enc[..., 7:])], dim=-1)


class CameraHead(nn.Module):
    def __init__(self, cfg: HeadsConfig, dim_in: int):
        super().__init__()
        self.num_iterations = cfg.camera_iters
        self.token_norm = nn.LayerNorm(dim_in)
        self.trunk = nn.Sequential(
            *[Block(dim_in, cfg.camera_num_heads, mlp_ratio=4.0, init_values=0.01)
              for _ in range(cfg.camera_trunk_depth)]
        )
        self.trunk_norm = nn.LayerNorm(dim_in)
        self.empty_pose_tokens = nn.Parameter(torch.zeros(1, 1, POSE_DIM))
        self.embed_pose = nn.Linear(POSE_DIM, dim_in)
        self.poseLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim_in, 3 * dim_in))  # noqa: N815 (VGGT name)
        self.adaln_norm = nn.LayerNorm(dim_in, elementwise_affine=False, eps=1e-6)
        self.pose_branch = Mlp(dim_in, dim_in // 2, POSE_DIM)

    def forward(self, aggregated_tokens_list: list[Tensor]) -> list[Tensor]:
        """Camera tokens (index 0) of the last aggregator output `[B, S, T, 2E]` →
        list of `camera_iters` pose encodings `[B, S, 9]`; the last is the final estimate."""
        tokens = self.token_norm(aggregated_tokens_list[-1][:, :, 0])  # [B, S, 2E]
        batch, frames, _ = tokens.shape
        pred: Tensor | None = None
        outputs: list[Tensor] = []
        for _ in range(self.num_iterations):
            if pred is None:
                cond = self.embed_pose(self.empty_pose_tokens.expand(batch, frames, -1))
            else:
                cond = self.embed_pose(pred.detach())  # refinement does not backprop through earlier stages
            shift, scale, gate = self.poseLN_modulation(cond).chunk(3, dim=-1)
            x = gate * (self.adaln_norm(tokens) * (1 + scale) + shift) + tokens
            for block in self.trunk:
                x = block(x)
            delta = self.pose_branch(self.trunk_norm(x))
            pred = delta if pred is None else pred + delta
            outputs.append(activate_pose(pred))
        return outputs
