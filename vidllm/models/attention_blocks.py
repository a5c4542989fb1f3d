"""Transformer building blocks of the reconstruction branch: pre-norm ViT `Block` with
qk-norm, LayerScale and 2D rotary position embeddings.

Parameter names (`norm1, attn.qkv, attn.q_norm, attn.k_norm, attn.proj, ls1.gamma, norm2,
mlp.fc1, mlp.fc2, ls2.gamma`) match VGGT's so its checkpoints load without renaming.
Attention runs through `F.scaled_dot_product_attention` (flash / memory-efficient kernels,
memory linear in sequence length).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class RotaryPositionEmbedding2D(nn.Module):
    """2D RoPE: the first half of each head's channels rotates with the row (y) position, the
    second half with the column (x) position; frequencies base^(−2i/d) per half, as VGGT."""

    def __init__(self, frequency: float = 100.0):
        super().__init__()
        self.frequency = frequency

    def _rotate(self, x: Tensor, pos: Tensor) -> Tensor:
        # x [B, heads, N, d], pos [B, N] (one coordinate)
        dim = x.shape[-1]
        inv_freq = 1.0 / (self.frequency ** (torch.arange(0, dim, 2, device=x.device, dtype=torch.float32) / dim))
        angles = pos.to(torch.float32)[..., None] * inv_freq  # [B, N, d/2]
        angles = torch.cat([angles, angles], dim=-1)[:, None]  # [B, 1, N, d]
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat([-x2, x1], dim=-1) * sin

    def forward(self, x: Tensor, positions: Tensor) -> Tensor:
        """x `[B, heads, N, D]`, positions `[B, N, 2]` (row, col) → `[B, heads, N, D]`."""
        x_rows, x_cols = x.chunk(2, dim=-1)
        return torch.cat([self._rotate(x_rows, positions[..., 0]), self._rotate(x_cols, positions[..., 1])], dim=-1)


def grid_positions(batch: int, grid_h: int, grid_w: int, num_special: int, device: torch.device) -> Tensor:
    """RoPE positions `[batch, num_special + grid_h·grid_w, 2]`: special tokens at (0, 0),
    patch (i, j) at (i + 1, j + 1) so no patch shares the special tokens' position."""
    rows, cols = torch.meshgrid(torch.arange(grid_h, device=device), torch.arange(grid_w, device=device), indexing="ij")
    patch = torch.stack([rows.reshape(-1), cols.reshape(-1)], dim=-1) + 1
    special = torch.zeros(num_special, 2, dtype=patch.dtype, device=device)
    return torch.cat([special, patch], dim=0)[None].expand(batch, -1, -1)


class Attention(nn.Module):
    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        qk_norm: bool = False,
        rope: RotaryPositionEmbedding2D | None = None,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.q_norm = nn.LayerNorm(head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.rope = rope

    def forward(self, x: Tensor, positions: Tensor | None = None) -> Tensor:
        """x `[B, N, C]`, positions `[B, N, 2]` (used only with RoPE) → `[B, N, C]`."""
        batch, tokens, channels = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, channels // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, heads, N, d]
        q, k = self.q_norm(q), self.k_norm(k)
        if self.rope is not None and positions is not None:
            q, k = self.rope(q, positions), self.rope(k, positions)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, channels))


class LayerScale(nn.Module):
    def __init__(self, dim: int, init_values: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int | None = None):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, out_dim or in_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + ls1(attn(norm1(x))), then x + ls2(mlp(norm2(x)))."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qk_norm: bool = False,
        init_values: float | None = 0.01,
        rope: RotaryPositionEmbedding2D | None = None,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qk_norm=qk_norm, rope=rope)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()

    def forward(self, x: Tensor, positions: Tensor | None = None) -> Tensor:
        """x `[B, N, C]`, positions `[B, N, 2]` or None → `[B, N, C]`."""
        x = x + self.ls1(self.attn(self.norm1(x), positions))
        return x + self.ls2(self.mlp(self.norm2(x)))
