"""Metric depth loss L_MD (paper eq. 9) and an optional bin-centre chamfer term.

Per image, over its K valid pixels:

    e_i  = log(d̂_i + ε) − log(d_i + ε)          log-depth error
    b    = (1/K) Σ_i e_i                         global (scale) bias: a wrong scale shifts every e_i
    L_MD = b² + (1/K) Σ_i (e_i − b)² / (1 + α·|e_i − b|)

b² penalises the global scale error; the second term is a robust local refinement: quadratic
for small de-biased residuals, growing only linearly (≈ |e−b|/α) for large ones, so depth
edges and GT holes do not dominate. The paper gives neither α nor ε; we use α = 1 and
ε = 1e-6 m (predictions are ≥ metric_depth.min_depth anyway). Images without valid pixels
are skipped; the loss is the mean over the remaining images.

The paper's bins follow the AdaBins family, which adds a chamfer loss between the adaptive
bin centres and the GT depths of the image; `bin_chamfer_loss` provides it, but eq. 9 does
not include it, so its weight defaults to 0 in `stage2_loss`.
"""

from __future__ import annotations

import torch
from torch import Tensor


def metric_depth_loss(pred: Tensor, gt: Tensor, valid_mask: Tensor, alpha: float = 1.0, eps: float = 1e-6) -> Tensor:
    """Eq. 9.

    Args:
        pred: `[B, S, H, W]` predicted metric depth (metres, > 0).
        gt: `[B, S, H, W]` metric GT (metres); valid_mask `[B, S, H, W]` bool.
        alpha: robustness of the local term (> 0).
    Returns:
        scalar, ≥ 0; zero iff the prediction equals the GT on every valid pixel.
    """
    if alpha <= 0:
        raise ValueError(f"metric depth alpha must be > 0, got {alpha}")
    mask = valid_mask.flatten(2).to(pred.dtype)  # [B, S, HW]
    safe_gt = torch.where(valid_mask, gt.to(pred.dtype), torch.ones_like(pred))
    error = (torch.log(pred.clamp_min(0) + eps) - torch.log(safe_gt + eps)).flatten(2) * mask
    count = mask.sum(-1)  # [B, S]
    bias = error.sum(-1) / count.clamp_min(1)
    centred = (error - bias[..., None]) * mask
    robust = (centred.pow(2) / (1.0 + alpha * centred.abs())).sum(-1) / count.clamp_min(1)
    per_image = bias.pow(2) + robust
    has_pixels = count > 0
    if not has_pixels.any():
        return (0.0 * pred).sum()
    return per_image[has_pixels].mean()


def bin_chamfer_loss(bin_edges: Tensor, gt: Tensor, valid_mask: Tensor) -> Tensor:
    """Symmetric chamfer distance between each image's bin centres and its valid GT depths.

    Args:
        bin_edges: `[B, S, N+1]` adaptive bin edges (metres) from the metric depth model.
        gt: `[B, S, H, W]` metres; valid_mask `[B, S, H, W]` bool.
    Returns:
        scalar: mean over images with valid pixels of (mean_c min_d (c−d)² + mean_d min_c (c−d)²).
    """
    centers = 0.5 * (bin_edges[..., 1:] + bin_edges[..., :-1])  # [B, S, N]
    centers = centers.flatten(0, 1)
    depths, mask = gt.flatten(0, 1).flatten(1).to(centers.dtype), valid_mask.flatten(0, 1).flatten(1)
    sq = (centers[:, :, None] - depths[:, None, :]).pow(2)  # [I, N, HW]
    big = torch.finfo(sq.dtype).max
    has_pixels = mask.any(-1)
    nearest_gt = sq.masked_fill(~mask[:, None, :], big).amin(dim=-1)  # [I, N] centre → nearest GT depth
    to_gt = torch.where(has_pixels[:, None], nearest_gt, torch.zeros_like(nearest_gt)).mean(-1)
    to_center = (sq.amin(dim=1) * mask).sum(-1) / mask.sum(-1).clamp_min(1)  # GT depth → nearest centre
    if not has_pixels.any():
        return (0.0 * bin_edges).sum()
    return (to_gt + to_center)[has_pixels].mean()
