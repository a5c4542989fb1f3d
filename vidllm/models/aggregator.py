"""Global-Frame Attention backbone (VGGT's aggregator, without its patch embed).

Every frame's tokens are laid out as `[camera, register × R, patches × P]`. Frame 0 gets its
own camera/register tokens (index 0 of the learned `[1, 2, ...]` parameters), all other frames
share index 1 — this alone tells the network which frame defines the world. The backbone
alternates a frame block (attention within each frame) and a global block (attention over all
frames' tokens), both with 2D RoPE on the patch grid and qk-norm. Parameter names match
VGGT's `aggregator.*` except `patch_embed` (it lives in the shared encoder) and `input_proj`
(ours: only present when the encoder width differs from `embed_dim`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from vidllm.config import AggregatorConfig
from vidllm.models.attention_blocks import Block, RotaryPositionEmbedding2D, grid_positions


class Aggregator(nn.Module):
    def __init__(self, cfg: AggregatorConfig, in_dim: int, patch_size: int = 14):
        super().__init__()
        depth, dim = cfg.depth, cfg.embed_dim
        layers = [i % depth for i in cfg.intermediate_layers]
        if any(not -depth <= i < depth for i in cfg.intermediate_layers):
            raise ValueError(f"aggregator.intermediate_layers {cfg.intermediate_layers} out of range for depth {depth}")
        # Only these layers' outputs are kept (VGGT keeps all `depth`; the heads read 5).
        self.output_layers: list[int] = sorted(set(layers) | {depth - 1})
        self.patch_size = patch_size
        self.num_register_tokens = cfg.num_register_tokens
        self.patch_start_idx = 1 + cfg.num_register_tokens
        self.gradient_checkpointing = cfg.gradient_checkpointing

        self.input_proj = nn.Linear(in_dim, dim) if in_dim != dim else nn.Identity()
        self.rope = RotaryPositionEmbedding2D(cfg.rope_freq) if cfg.rope_freq > 0 else None
        block_args = dict(num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio, qk_norm=cfg.qk_norm,
                          init_values=cfg.init_values, rope=self.rope)
        self.frame_blocks = nn.ModuleList([Block(dim, **block_args) for _ in range(depth)])
        self.global_blocks = nn.ModuleList([Block(dim, **block_args) for _ in range(depth)])
        # Index 0: first frame, index 1: every other frame.
        self.camera_token = nn.Parameter(torch.randn(1, 2, 1, dim) * 1e-6)
        self.register_token = nn.Parameter(torch.randn(1, 2, cfg.num_register_tokens, dim) * 1e-6)

    def _special_tokens(self, batch: int, frames: int) -> Tensor:
        """`[B, S, 1 + R, E]`: first-frame tokens for frame 0, shared tokens for frames 1..S-1."""
        special = torch.cat([self.camera_token, self.register_token], dim=2)  # [1, 2, 1+R, E]
        first = special[:, :1]
        others = special[:, 1:].expand(1, frames - 1, -1, -1)
        return torch.cat([first, others], dim=1).expand(batch, -1, -1, -1)

    def _run(self, block: Block, x: Tensor, positions: Tensor) -> Tensor:
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, x, positions, use_reentrant=False)
        return block(x, positions)

    def forward(self, patch_tokens: Tensor, patch_hw: tuple[int, int]) -> tuple[list[Tensor], int]:
        """Alternating frame/global attention.

        Args:
            patch_tokens: `[B, S, P, C_in]` encoder patch tokens, P = patch_hw[0]·patch_hw[1] (row-major).
            patch_hw: patch grid (H // p, W // p).
        Returns:
            (outputs, patch_start_idx): outputs is a list over `self.output_layers`, each
            `[B, S, T, 2E]` (frame-block output ‖ global-block output of that layer),
            T = 1 + R + P; patch tokens start at `patch_start_idx = 1 + R`.
        """
        batch, frames, num_patches, _ = patch_tokens.shape
        if patch_hw[0] * patch_hw[1] != num_patches:
            raise ValueError(f"patch grid {patch_hw} does not match {num_patches} patch tokens")
        x = self.input_proj(patch_tokens)
        x = torch.cat([self._special_tokens(batch, frames).to(x.dtype), x], dim=2)  # [B, S, T, E]
        tokens, dim = x.shape[2], x.shape[3]
        frame_pos = grid_positions(batch * frames, patch_hw[0], patch_hw[1], self.patch_start_idx, x.device)
        # Global attention reuses each frame's grid positions: no frame index is embedded.
        global_pos = frame_pos.reshape(batch, frames * tokens, 2)

        outputs: list[Tensor] = []
        for layer, (frame_block, global_block) in enumerate(zip(self.frame_blocks, self.global_blocks)):
            x = self._run(frame_block, x.reshape(batch * frames, tokens, dim), frame_pos)
            frame_out = x.reshape(batch, frames, tokens, dim)
            x = self._run(global_block, x.reshape(batch, frames * tokens, dim), global_pos)
            global_out = x.reshape(batch, frames, tokens, dim)
            if layer in self.output_layers:
                outputs.append(torch.cat([frame_out, global_out], dim=-1))
            x = global_out
        return outputs, self.patch_start_idx

    def output_index(self, layer: int) -> int:
        """Position in `forward`'s output list of aggregator layer `layer` (negative allowed)."""
        return self.output_layers.index(layer % len(self.frame_blocks))
