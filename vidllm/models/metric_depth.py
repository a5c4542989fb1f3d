"""Metric Depth Model (§3.2): a DPT-style decoder on the shared DINOv2 features with N
adaptive depth bins, per-pixel refined bin centres and ordinal bin probabilities.

As in DPT, the decoder's four levels read four depths of the encoder (shallow layers feed the
fine levels); the bin widths come from the final tokens.

Per image (b, s) and pixel x:

- Adaptive bins: widths w = (d_max − d_min) · softmax(MLP(mean patch feature)) `[N]`,
  edges e_0 = d_min, e_k = d_min + Σ_{j≤k} w_j, centres c_k = (e_{k−1} + e_k) / 2.
- Per-pixel refinement: c_k(x) = c_k + Δc_k(x), Δc_k(x) = ½ w_k · tanh(r_k(x)), so every
  refined centre stays inside its own bin and the centres stay ordered.
- Ordinal probabilities (cumulative / continuation-ratio link): from N−1 logits a_k(x),
  q_k = P(depth beyond edge k) = Π_{j≤k} σ(a_j) (q_0 = 1, q_N = 0, non-increasing by
  construction), and p_k = q_k − q_{k+1} = q_k · σ(−a_{k+1}) (p_{N−1} = q_{N−1}). The p_k
  are ≥ 0 and sum to 1 exactly; probability mass moves between neighbouring bins monotonically,
  which respects the order of the bins (unlike an unconstrained softmax).
- depth(x) = Σ_k p_k(x) · c_k(x), always within [d_min, d_max].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vidllm.config import MetricDepthConfig
from vidllm.models.attention_blocks import Mlp
from vidllm.models.dpt_head import DPTHead


def ordinal_bin_probabilities(logits: Tensor, dim: int = 1) -> Tensor:
    """N−1 ordinal logits → N bin probabilities along `dim` (formula in the module docstring)."""
    log_continue = F.logsigmoid(logits)  # log σ(a_k): passing edge k given edge k−1 was passed
    zeros = torch.zeros_like(logits.narrow(dim, 0, 1))
    log_q = torch.cat([zeros, torch.cumsum(log_continue, dim=dim)], dim=dim)  # log q_0..q_{N−1}
    log_stop = torch.cat([F.logsigmoid(-logits), zeros], dim=dim)  # log σ(−a_{k+1}); last bin: log 1
    return torch.exp(log_q + log_stop)


def adaptive_bin_centers(width_logits: Tensor, min_depth: float, max_depth: float) -> tuple[Tensor, Tensor, Tensor]:
    """Width logits `[..., N]` → (centres `[..., N]`, widths `[..., N]`, edges `[..., N+1]`)."""
    widths = (max_depth - min_depth) * torch.softmax(width_logits, dim=-1)
    edges = torch.cat([torch.zeros_like(widths[..., :1]), torch.cumsum(widths, dim=-1)], dim=-1) + min_depth
    centers = 0.5 * (edges[..., :-1] + edges[..., 1:])
    return centers, widths, edges


class MetricDepthModel(nn.Module):
    def __init__(self, cfg: MetricDepthConfig, in_dim: int, patch_size: int, frames_chunk_size: int = 8):
        super().__init__()
        if cfg.max_depth <= cfg.min_depth:
            raise ValueError(f"metric_depth.max_depth {cfg.max_depth} must exceed min_depth {cfg.min_depth}")
        self.num_bins = cfg.num_bins
        self.min_depth, self.max_depth = cfg.min_depth, cfg.max_depth
        self.patch_size = patch_size
        self.frames_chunk_size = frames_chunk_size
        f = cfg.features
        # Level k reads the k-th of four encoder layers; output_conv2 predicts N−1 ordinal logits
        # and N centre refinements per pixel.
        self.decoder = DPTHead(
            in_dim, patch_size, output_dim=2 * cfg.num_bins - 1, features=f,
            out_channels=[f, f, 2 * f, 2 * f], intermediate_layer_idx=[0, 1, 2, 3], activation="linear",
        )  # fmt: skip
        self.bin_width_mlp = Mlp(in_dim, f, cfg.num_bins)

    def forward(self, features: Tensor, image_hw: tuple[int, int], levels: list[Tensor] | None = None
                ) -> dict[str, Tensor]:
        """
        Args:
            features: `[B, S, P, C]` final DINOv2 patch tokens (row-major grid of H//p × W//p).
            image_hw: (H, W).
            levels: four `[B, S, P, C]` encoder layers for the decoder's levels, shallow to deep
                (`SharedEncoder(images, layers)`); None = `features` at every level.
        Returns:
            depth `[B, S, H, W]` metres, probs `[B, S, N, H, W]`, centers `[B, S, N, H, W]`
            (refined), bin_edges `[B, S, N+1]` (per image, before refinement).
        """
        batch, frames, num_patches, channels = features.shape
        height, width = image_hw
        if (height // self.patch_size) * (width // self.patch_size) != num_patches:
            raise ValueError(
                f"{num_patches} feature tokens do not tile a {height}x{width} image with patch {self.patch_size}"
            )
        levels = [features] * 4 if levels is None else list(levels)
        if len(levels) != 4 or any(level.shape != features.shape for level in levels):
            raise ValueError(f"metric depth needs 4 encoder layers shaped like the features {tuple(features.shape)}")
        n = self.num_bins
        base_centers, widths, edges = adaptive_bin_centers(
            self.bin_width_mlp(features.mean(dim=2)), self.min_depth, self.max_depth
        )  # [B, S, N], [B, S, N], [B, S, N+1]
        depths, probs, centers = [], [], []
        for start in range(0, frames, self.frames_chunk_size):
            stop = min(start + self.frames_chunk_size, frames)
            count = batch * (stop - start)
            tokens = [level[:, start:stop].reshape(count, num_patches, channels) for level in levels]
            raw = self.decoder.scratch.output_conv2(self.decoder.decode(tokens, image_hw, 0))  # [n, 2N−1, H, W]
            prob = ordinal_bin_probabilities(raw[:, : n - 1], dim=1)  # [n, N, H, W]
            w = widths[:, start:stop].reshape(count, n, 1, 1)
            center = base_centers[:, start:stop].reshape(count, n, 1, 1) + 0.5 * w * torch.tanh(raw[:, n - 1 :])
            depths.append((prob * center).sum(dim=1).reshape(batch, stop - start, height, width))
            probs.append(prob.reshape(batch, stop - start, n, height, width))
            centers.append(center.reshape(batch, stop - start, n, height, width))
        return {
            "depth": torch.cat(depths, dim=1),
            "probs": torch.cat(probs, dim=1),
            "centers": torch.cat(centers, dim=1),
            "bin_edges": edges,
        }
