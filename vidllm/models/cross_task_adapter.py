"""Cross-Task Adapter (§3.1, eq. 1–2) and its ablation variants (Tab. 6).

`bridge` (the paper's CTA): φ_geom, φ_lang (2-layer MLPs, ×mlp_ratio, GELU) split T_base
into two streams; K learnable bridge tokens attend to each stream (multi-head attention),
the two results are summed (eq. 2); each stream then cross-attends to the updated bridge
tokens and adds the result residually, giving T'_geom and T'_lang.

Ablations: `none` (both streams = T_base), `concat_sa` (self-attention over the
concatenation [T_geom; T_lang]), `cross_attn` (each stream cross-attends directly to the
other, no bridge). Attention is over all S·P tokens of a scene, so bridge tokens are
scene-level memory; cost is O(K·S·P) for `bridge`, and O((S·P)²) for the ablations.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vidllm.config import CTAConfig


class ProjectionMLP(nn.Module):
    """φ(·): Linear(C, r·C) → GELU → Linear(r·C, C)."""

    def __init__(self, dim: int, mlp_ratio: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, dim * mlp_ratio)
        self.fc2 = nn.Linear(dim * mlp_ratio, dim)

    def forward(self, x: Tensor) -> Tensor:
        """x `[..., C]` → `[..., C]`."""
        return self.fc2(F.gelu(self.fc1(x)))


class MultiHeadAttention(nn.Module):
    """Standard multi-head attention (separate q/kv inputs) via `scaled_dot_product_attention`."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"CTA dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def _heads(self, x: Tensor) -> Tensor:
        batch, tokens, dim = x.shape
        return x.reshape(batch, tokens, self.num_heads, dim // self.num_heads).transpose(1, 2)

    def forward(self, query: Tensor, context: Tensor) -> Tensor:
        """query `[B, Nq, C]`, context `[B, Nk, C]` → `[B, Nq, C]`."""
        q, k, v = self._heads(self.q_proj(query)), self._heads(self.k_proj(context)), self._heads(self.v_proj(context))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(out.transpose(1, 2).reshape(query.shape))


class CrossTaskAdapter(nn.Module):
    def __init__(self, cfg: CTAConfig, dim: int):
        super().__init__()
        self.variant = cfg.variant
        self.num_bridge_tokens = cfg.num_bridge_tokens
        if self.variant == "none":
            return
        self.phi_geom = ProjectionMLP(dim, cfg.mlp_ratio)
        self.phi_lang = ProjectionMLP(dim, cfg.mlp_ratio)
        self.norm_geom = nn.LayerNorm(dim)
        self.norm_lang = nn.LayerNorm(dim)
        if self.variant == "bridge":
            self.bridge_tokens = nn.Parameter(torch.randn(1, cfg.num_bridge_tokens, dim) * 0.02)
            self.norm_bridge = nn.LayerNorm(dim)
            self.bridge_from_geom = MultiHeadAttention(dim, cfg.num_heads)
            self.bridge_from_lang = MultiHeadAttention(dim, cfg.num_heads)
            self.geom_from_bridge = MultiHeadAttention(dim, cfg.num_heads)
            self.lang_from_bridge = MultiHeadAttention(dim, cfg.num_heads)
        elif self.variant == "concat_sa":
            self.self_attn = MultiHeadAttention(dim, cfg.num_heads)
        elif self.variant == "cross_attn":
            self.geom_from_lang = MultiHeadAttention(dim, cfg.num_heads)
            self.lang_from_geom = MultiHeadAttention(dim, cfg.num_heads)

    def forward(self, t_base: Tensor) -> tuple[Tensor, Tensor]:
        """t_base `[B, S, P, C]` → (T'_geom, T'_lang), both `[B, S, P, C]`."""
        if self.variant == "none":
            return t_base, t_base
        batch, frames, patches, dim = t_base.shape
        t_geom = self.phi_geom(t_base).reshape(batch, frames * patches, dim)  # eq. 1
        t_lang = self.phi_lang(t_base).reshape(batch, frames * patches, dim)
        geom_n, lang_n = self.norm_geom(t_geom), self.norm_lang(t_lang)
        if self.variant == "bridge":
            bridge = self.bridge_tokens.expand(batch, -1, -1)
            # eq. 2 exactly (no residual): T'_bridge = Attn(T_bridge, T_geom) + Attn(T_bridge, T_lang);
            # the learnable bridge tokens act as the queries.
            bridge = self.bridge_from_geom(bridge, geom_n) + self.bridge_from_lang(bridge, lang_n)
            bridge = self.norm_bridge(bridge)
            t_geom = t_geom + self.geom_from_bridge(geom_n, bridge)
            t_lang = t_lang + self.lang_from_bridge(lang_n, bridge)
        elif self.variant == "concat_sa":
            joint = torch.cat([geom_n, lang_n], dim=1)
            update = self.self_attn(joint, joint)
            t_geom = t_geom + update[:, : frames * patches]
            t_lang = t_lang + update[:, frames * patches :]
        else:  # cross_attn
            t_geom, t_lang = t_geom + self.geom_from_lang(geom_n, lang_n), t_lang + self.lang_from_geom(lang_n, geom_n)
        shape = (batch, frames, patches, dim)
        return t_geom.reshape(shape), t_lang.reshape(shape)
