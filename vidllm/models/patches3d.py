"""3D patches (§3.3, eq. 3–4), the token bound, and the scene-frame rotation head.

Eq. 3 (back-projection of patch centres) is `vidllm.geometry.patch_centers_to_world`; this
module holds the learnable parts: the xyz → embedding MLP (eq. 4) and the head predicting the
rotation from the first camera to the gravity-aligned scene frame. `voxel_pool` bounds the
number of tokens handed to the LLM deterministically.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Patch3DEmbedding(nn.Module):
    """Eq. 4: T_3D = T'_lang + MLP(xyz). xyz is in metres in the scene frame."""

    def __init__(self, dim: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or dim
        self.fc1 = nn.Linear(3, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, tokens: Tensor, xyz: Tensor) -> Tensor:
        """tokens `[..., C]`, xyz `[..., 3]` → `[..., C]`."""
        return tokens + self.fc2(F.gelu(self.fc1(xyz)))


MAX_VOXEL_REFINEMENTS = 8  # halvings of the voxel size when too few voxels are occupied
MAX_VOXEL_COARSENINGS = 8  # growths by √2 when more than the cap are occupied
COARSEN_FACTOR = 2 ** 0.5  # a surface's occupied-voxel count falls about 2× per step


def _occupied_voxels(points: Tensor, voxel_size: float, min_voxels: int,
                     max_voxels: int | None = None) -> tuple[Tensor, Tensor]:
    """Voxel index per point `[N]` and point count per voxel `[V]` (voxels in key order).

    The voxel size is halved (at most MAX_VOXEL_REFINEMENTS times) while fewer than
    `min_voxels` voxels are occupied: untrained or degenerate geometry (all patches of a frame
    on one ray, a tiny scene) would otherwise reach the LLM as a handful of tokens. Otherwise it
    grows by √2 (at most MAX_VOXEL_COARSENINGS times) while more than `max_voxels` are occupied,
    so a cap keeps every part of the scene in view at a coarser grain: dropping voxels instead
    hid about a quarter of the objects of the demo's scenes from the LLM (540 occupied 0.2 m
    voxels for a cap of 256).
    """
    def voxelize(size: float) -> tuple[Tensor, Tensor]:
        cells = torch.floor(points / size).to(torch.int64)
        _, inverse, counts = torch.unique(cells, dim=0, sorted=True, return_inverse=True, return_counts=True)
        return inverse, counts

    inverse, counts = voxelize(voxel_size)
    size = voxel_size
    for _ in range(MAX_VOXEL_REFINEMENTS):
        if counts.shape[0] >= min_voxels:
            break
        size /= 2
        inverse, counts = voxelize(size)
    else:
        return inverse, counts
    if size != voxel_size or max_voxels is None:
        return inverse, counts
    for _ in range(MAX_VOXEL_COARSENINGS):
        if counts.shape[0] <= max_voxels:
            break
        size *= COARSEN_FACTOR
        coarse = voxelize(size)
        if coarse[1].shape[0] < min_voxels:  # never coarsen below the minimum
            break
        inverse, counts = coarse
    return inverse, counts


def voxel_pool(
    tokens: Tensor, xyz: Tensor, valid: Tensor, voxel_size: float, max_tokens: int, min_tokens: int = 1
) -> tuple[Tensor, Tensor, Tensor]:
    """Average tokens falling in the same voxel; keep between min(min_tokens, #points) and
    `max_tokens` voxels per scene.

    Deterministic: voxels are keyed by their integer grid coordinate; the voxel size is halved
    while fewer than `min_tokens` voxels are occupied, and grown while more than `max_tokens`
    are (`_occupied_voxels`); if still more than `max_tokens` are occupied, those holding the
    most points are kept (ties → smaller key). Kept voxels are emitted in key order. A scene
    without any valid point is pooled into one token (the mean of all its tokens, at the
    origin), so the LLM always gets vision tokens. Gradients flow to `tokens` (xyz is geometry, detached by the caller).

    Args:
        tokens `[B, N, C]`, xyz `[B, N, 3]`, valid `[B, N]` bool (patches with finite depth > 0).
    Returns:
        pooled tokens `[B, M, C]`, voxel centroids `[B, M, 3]`, mask `[B, M]` (True = real),
        with M = the largest kept count in the batch (1 ≤ M ≤ max_tokens).
    """
    batch, _, dim = tokens.shape
    out_tokens, out_xyz = [], []
    for b in range(batch):
        keep = valid[b] & torch.isfinite(xyz[b]).all(-1)
        if keep.any():
            pts, feats = xyz[b][keep], tokens[b][keep]
        else:  # no usable geometry: one scene-level token
            pts, feats = xyz.new_zeros(tokens.shape[1], 3), tokens[b]
        inverse, counts = _occupied_voxels(pts, voxel_size, min(min_tokens, pts.shape[0]), max_tokens)
        num_voxels = counts.shape[0]
        denom = counts.to(feats.dtype).unsqueeze(-1)
        pooled = feats.new_zeros(num_voxels, dim).index_add(0, inverse, feats) / denom
        centroids = pts.new_zeros(num_voxels, 3).index_add(0, inverse, pts) / denom.to(pts.dtype)
        if num_voxels > max_tokens:
            # Stable sort on -count keeps key order among ties (keys are already sorted).
            order = torch.sort(-counts, stable=True).indices[:max_tokens]
            chosen = torch.sort(order).values
            pooled, centroids = pooled[chosen], centroids[chosen]
        out_tokens.append(pooled)
        out_xyz.append(centroids)
    width = max(t.shape[0] for t in out_tokens)
    mask = torch.zeros(batch, width, dtype=torch.bool, device=tokens.device)
    padded_tokens = tokens.new_zeros(batch, width, dim)
    padded_xyz = xyz.new_zeros(batch, width, 3)
    for b, (t, p) in enumerate(zip(out_tokens, out_xyz)):
        padded_tokens[b, : t.shape[0]] = t
        padded_xyz[b, : p.shape[0]] = p
        mask[b, : t.shape[0]] = True
    return padded_tokens, padded_xyz, mask


def rotation_6d_to_matrix(d6: Tensor) -> Tensor:
    """Continuous 6D rotation representation (Zhou et al. 2019) `[..., 6]` → `[..., 3, 3]`.

    The two 3-vectors are Gram–Schmidt-orthonormalised into the first two **columns**; the
    third column is their cross product, so det = +1.
    """
    a1, a2 = d6[..., :3], d6[..., 3:]
    b1 = F.normalize(a1, dim=-1)
    b2 = F.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    b3 = torch.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-1)


class SceneFrameHead(nn.Module):
    """Predicts R `[B, 3, 3]` taking first-camera-frame vectors to the gravity-aligned scene frame.

    Gravity is seen in the first frame's content (floor, walls), so the head pools the first
    frame's geometry tokens (mean and max over patches) and regresses a 6D rotation. The bias
    starts at the rotation of a level camera (OpenCV y down → gravity z up), the typical case.
    """

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(2 * dim)
        self.fc1 = nn.Linear(2 * dim, hidden)
        self.fc2 = nn.Linear(hidden, 6)
        with torch.no_grad():
            self.fc2.weight.mul_(0.01)
            # Level camera: cam x → world x, cam y (down) → world −z; columns 1 and 2 of R.
            self.fc2.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0, -1.0]))

    def forward(self, geom_tokens: Tensor) -> Tensor:
        """geom_tokens `[B, S, P, C]` → rotation `[B, 3, 3]`."""
        first = geom_tokens[:, 0]
        pooled = torch.cat([first.mean(dim=1), first.amax(dim=1)], dim=-1)
        return rotation_6d_to_matrix(self.fc2(F.gelu(self.fc1(self.norm(pooled)))))
