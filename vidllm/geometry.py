"""Camera and scene-frame conventions, as pure tensor functions (no nn.Modules).

Conventions (VGGT's, used by the whole reconstruction branch):

- Extrinsics are **camera-from-world** (world-to-camera) `[..., 3, 4]` in OpenCV axes
  (x right, y down, z forward). The reconstruction world frame is the **first camera**.
- Intrinsics `[..., 3, 3]` are in pixels of the network input; pixel `(u, v)` = column, row,
  with integer coordinates at pixel centres (so the image spans u ∈ [-0.5, W-0.5]).
- Pose encoding "absT_quaR_FoV" `[..., 9]` = translation of the extrinsic (3), rotation of
  the extrinsic as quaternion **XYZW** (scalar last, 4), fov_h, fov_w (radians). The inverse
  assumes the principal point at (W/2, H/2) and zero skew, exactly like VGGT.
- Scene frame: gravity-aligned axes (ScanNet's axis-aligned frame, z up) with
  its origin at the first camera centre. `first_camera_to_gravity` gives the rotation from the
  first camera frame to it; benchmarks add only the ground-truth first camera centre
  (`scene_to_scannet_world`) so that rotation and metric-scale errors still count.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

# ----------------------------------------------------------------------------- rotations


def quat_to_mat(quat: Tensor) -> Tensor:
    """Unit quaternions XYZW `[..., 4]` → rotation matrices `[..., 3, 3]` (input need not be normalised)."""
    x, y, z, w = F.normalize(quat, dim=-1).unbind(-1)
    xx, yy, zz = x * x, y * y, z * z
    xy, xz, yz = x * y, x * z, y * z
    wx, wy, wz = w * x, w * y, w * z
    rows = (
        1 - 2 * (yy + zz), 2 * (xy - wz), 2 * (xz + wy),
        2 * (xy + wz), 1 - 2 * (xx + zz), 2 * (yz - wx),
        2 * (xz - wy), 2 * (yz + wx), 1 - 2 * (xx + yy),
    )  # fmt: skip
    return torch.stack(rows, dim=-1).reshape(quat.shape[:-1] + (3, 3))


def mat_to_quat(mat: Tensor) -> Tensor:
    """Rotation matrices `[..., 3, 3]` → quaternions XYZW `[..., 4]` with w ≥ 0 (standardised).

    Computes all four candidate quaternions (each divided by its largest, well-conditioned
    component) and keeps, per matrix, the one whose pivot is largest — stable for any angle.
    """
    m = mat
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    # 4·q_i² for i = w, x, y, z from the trace identities.
    four_sq = torch.stack(
        [1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], dim=-1
    )
    pivot = torch.sqrt(four_sq.clamp_min(0.0))  # 2·|q_i|
    d21, d02, d10 = m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]
    s21, s02, s10 = m[..., 2, 1] + m[..., 1, 2], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 0] + m[..., 0, 1]
    # Candidates in WXYZ order, each scaled by 2·q_pivot (so divide by 2·pivot below).
    cand = torch.stack(
        [
            torch.stack([pivot[..., 0] ** 2, d21, d02, d10], dim=-1),
            torch.stack([d21, pivot[..., 1] ** 2, s10, s02], dim=-1),
            torch.stack([d02, s10, pivot[..., 2] ** 2, s21], dim=-1),
            torch.stack([d10, s02, s21, pivot[..., 3] ** 2], dim=-1),
        ],
        dim=-2,
    )  # [..., 4 candidates, 4 (wxyz)]
    cand = cand / (2.0 * pivot.clamp_min(0.1))[..., None]
    best = pivot.argmax(dim=-1)
    wxyz = torch.gather(cand, -2, best[..., None, None].expand(best.shape + (1, 4))).squeeze(-2)
    wxyz = F.normalize(wxyz, dim=-1)
    xyzw = torch.cat([wxyz[..., 1:], wxyz[..., :1]], dim=-1)
    return torch.where(xyzw[..., 3:] < 0, -xyzw, xyzw)


# ----------------------------------------------------------------------------- SE(3)


def se3_inverse(transform: Tensor) -> Tensor:
    """Closed-form inverse of rigid transforms `[..., 4, 4]` or `[..., 3, 4]` → `[..., 4, 4]`."""
    rot = transform[..., :3, :3]
    trans = transform[..., :3, 3:]
    rot_t = rot.transpose(-1, -2)
    top = torch.cat([rot_t, -rot_t @ trans], dim=-1)
    bottom = torch.zeros_like(top[..., :1, :])
    bottom[..., 0, 3] = 1.0
    return torch.cat([top, bottom], dim=-2)


def to_homogeneous(transform: Tensor) -> Tensor:
    """`[..., 3, 4]` → `[..., 4, 4]` by appending the row (0, 0, 0, 1)."""
    bottom = torch.zeros_like(transform[..., :1, :])
    bottom[..., 0, 3] = 1.0
    return torch.cat([transform[..., :3, :], bottom], dim=-2)


def extrinsics_relative_to_first(camera_to_world: Tensor) -> Tensor:
    """Camera-to-world poses `[..., S, 4, 4]` (e.g. ScanNet) → VGGT extrinsics `[..., S, 3, 4]`.

    The new world is the first camera: E_i = inv(C_i) · C_0, so E_0 is the identity.
    """
    world_to_cam = se3_inverse(camera_to_world)
    return (world_to_cam @ camera_to_world[..., :1, :, :])[..., :3, :]


# ----------------------------------------------------------------------------- pose encoding

MIN_FOV = 0.01  # radians (≈0.6°); decoded focal lengths stay finite


def extri_intri_to_pose_encoding(extrinsics: Tensor, intrinsics: Tensor, image_hw: tuple[int, int]) -> Tensor:
    """Cameras → VGGT "absT_quaR_FoV" encoding.

    Args:
        extrinsics: `[B, S, 3, 4]` camera-from-world, OpenCV axes.
        intrinsics: `[B, S, 3, 3]` pixels of an `image_hw = (H, W)` image.
    Returns:
        `[B, S, 9]`: t (3), quaternion XYZW (4), fov_h, fov_w (radians).
    """
    height, width = image_hw
    quat = mat_to_quat(extrinsics[..., :3, :3])
    fov_h = 2 * torch.atan((height / 2) / intrinsics[..., 1, 1])
    fov_w = 2 * torch.atan((width / 2) / intrinsics[..., 0, 0])
    return torch.cat([extrinsics[..., :3, 3], quat, fov_h[..., None], fov_w[..., None]], dim=-1)


def pose_encoding_to_extri_intri(pose_enc: Tensor, image_hw: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Inverse of `extri_intri_to_pose_encoding`.

    Args:
        pose_enc: `[B, S, 9]`.
        image_hw: (H, W) of the network input.
    Returns:
        extrinsics `[B, S, 3, 4]` (camera-from-world), intrinsics `[B, S, 3, 3]` with the
        principal point at (W/2, H/2). FoVs are clamped to [MIN_FOV, π − MIN_FOV]: the camera
        head's ReLU gives FoV 0 (an infinite focal length) when untrained, which would collapse
        every back-projected ray onto the optical axis.
    """
    height, width = image_hw
    trans, quat = pose_enc[..., :3], pose_enc[..., 3:7]
    fov_h, fov_w = pose_enc[..., 7:9].clamp(MIN_FOV, math.pi - MIN_FOV).unbind(-1)
    extrinsics = torch.cat([quat_to_mat(quat), trans[..., None]], dim=-1)
    fy = (height / 2) / torch.tan(fov_h / 2)
    fx = (width / 2) / torch.tan(fov_w / 2)
    intrinsics = torch.zeros(pose_enc.shape[:-1] + (3, 3), dtype=pose_enc.dtype, device=pose_enc.device)
    intrinsics[..., 0, 0] = fx
    intrinsics[..., 1, 1] = fy
    intrinsics[..., 0, 2] = width / 2
    intrinsics[..., 1, 2] = height / 2
    intrinsics[..., 2, 2] = 1.0
    return extrinsics, intrinsics


# ----------------------------------------------------------------------------- back-projection


def _pixels_to_world(
    u: Tensor, v: Tensor, depth: Tensor, extrinsics: Tensor, intrinsics: Tensor
) -> Tensor:
    """Pixels `u, v` (broadcastable to depth `[B, S, N]`) → world points `[B, S, N, 3]`."""
    fx, fy = intrinsics[..., 0, 0, None], intrinsics[..., 1, 1, None]
    cx, cy = intrinsics[..., 0, 2, None], intrinsics[..., 1, 2, None]
    cam = torch.stack([(u - cx) / fx * depth, (v - cy) / fy * depth, depth], dim=-1)  # [B,S,N,3]
    rot, trans = extrinsics[..., :3, :3], extrinsics[..., :3, 3]
    # x_world = Rᵀ (x_cam − t); row-vector form: (x_cam − t) @ R.
    return (cam - trans[..., None, :]) @ rot


def unproject_depth(depth: Tensor, extrinsics: Tensor, intrinsics: Tensor) -> Tensor:
    """Depth maps → world points (world = whatever the extrinsics map from).

    Args:
        depth: `[B, S, H, W]` z-depth along the optical axis.
        extrinsics: `[B, S, 3, 4]` camera-from-world.
        intrinsics: `[B, S, 3, 3]`.
    Returns:
        `[B, S, H, W, 3]` world points; pixel (u, v) is taken at integer coordinates.
    """
    batch, frames, height, width = depth.shape
    v, u = torch.meshgrid(
        torch.arange(height, dtype=depth.dtype, device=depth.device),
        torch.arange(width, dtype=depth.dtype, device=depth.device),
        indexing="ij",
    )
    points = _pixels_to_world(u.reshape(-1), v.reshape(-1), depth.reshape(batch, frames, -1), extrinsics, intrinsics)
    return points.reshape(batch, frames, height, width, 3)


def patch_depth(depth: Tensor, patch_size: int) -> Tensor:
    """Median of the valid (finite, > 0) depths in each patch: `[B, S, H, W]` → `[B, S, P]`.

    The median (rather than the centre pixel) is robust to depth edges and holes inside the
    patch; patches without any valid depth get 0. P = (H // p) · (W // p), row-major.
    """
    batch, frames, height, width = depth.shape
    grid_h, grid_w = height // patch_size, width // patch_size
    crop = depth[..., : grid_h * patch_size, : grid_w * patch_size]
    blocks = crop.reshape(batch, frames, grid_h, patch_size, grid_w, patch_size)
    blocks = blocks.permute(0, 1, 2, 4, 3, 5).reshape(batch, frames, grid_h * grid_w, patch_size * patch_size)
    valid = torch.isfinite(blocks) & (blocks > 0)
    med = torch.nanmedian(torch.where(valid, blocks, torch.nan), dim=-1).values
    return torch.nan_to_num(med, nan=0.0)


def patch_centers_to_world(depth: Tensor, extrinsics: Tensor, intrinsics: Tensor, patch_size: int) -> Tensor:
    """Eq. 3: back-project every patch centre with its depth, pose and intrinsics.

    Args:
        depth: `[B, S, H, W]`; extrinsics `[B, S, 3, 4]` camera-from-world; intrinsics `[B, S, 3, 3]`.
    Returns:
        `[B, S, P, 3]` world points, P = (H // p)·(W // p) in row-major patch order. Patch (i, j)
        has its centre at pixel u = (j + 0.5)·p − 0.5, v = (i + 0.5)·p − 0.5 and uses the
        median valid depth of the patch (`patch_depth`). Patches without valid depth get depth
        0 and therefore land on the camera centre; mask them with `patch_depth(...) > 0`.
    """
    grid_h, grid_w = depth.shape[-2] // patch_size, depth.shape[-1] // patch_size
    rows = (torch.arange(grid_h, dtype=depth.dtype, device=depth.device) + 0.5) * patch_size - 0.5
    cols = (torch.arange(grid_w, dtype=depth.dtype, device=depth.device) + 0.5) * patch_size - 0.5
    v, u = torch.meshgrid(rows, cols, indexing="ij")
    return _pixels_to_world(u.reshape(-1), v.reshape(-1), patch_depth(depth, patch_size), extrinsics, intrinsics)


# ----------------------------------------------------------------------------- alignment


def umeyama_sim3(src: Tensor, dst: Tensor, with_scale: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """Least-squares similarity `dst ≈ s · R @ src + t` (Umeyama 1991).

    Args:
        src, dst: `[N, 3]` corresponding points, N ≥ 3 and not collinear.
    Returns:
        s (scalar tensor; 1 if `with_scale` is False), R `[3, 3]` (det +1), t `[3]`.
    """
    mu_src, mu_dst = src.mean(0), dst.mean(0)
    src_c, dst_c = src - mu_src, dst - mu_dst
    cov = dst_c.T @ src_c / src.shape[0]
    u, sing, vh = torch.linalg.svd(cov)
    sign = torch.ones(3, dtype=src.dtype, device=src.device)
    if torch.det(u) * torch.det(vh) < 0:
        sign[-1] = -1.0  # reflection → closest proper rotation
    rot = u @ torch.diag(sign) @ vh
    if with_scale:
        var_src = (src_c**2).sum() / src.shape[0]
        scale = (sing * sign).sum() / var_src
    else:
        scale = torch.ones((), dtype=src.dtype, device=src.device)
    trans = mu_dst - scale * rot @ mu_src
    return scale, rot, trans


def weighted_lstsq_scale(rel: Tensor, metric: Tensor, weight: Tensor) -> Tensor:
    """Closed-form s = argmin Σ w (s·rel − metric)² = Σ w·rel·metric / Σ w·rel². Inputs `[N]`."""
    return (weight * rel * metric).sum() / (weight * rel * rel).sum().clamp_min(1e-12)


def _robust_image_scale(rel: Tensor, metric: Tensor, weight: Tensor, rounds: int = 2, k: float = 3.0) -> Tensor:
    """WLS scale for one image, then `rounds` re-fits dropping pixels whose residual exceeds
    k·1.4826·MAD — metric-depth outliers would otherwise pull the per-image estimate."""
    scale = weighted_lstsq_scale(rel, metric, weight)
    for _ in range(rounds):
        resid = (scale * rel - metric).abs()
        mad = resid.median() * 1.4826
        keep = resid <= k * mad.clamp_min(1e-6 * metric.abs().median())
        if keep.sum() < 3:
            break
        scale = weighted_lstsq_scale(rel[keep], metric[keep], weight[keep])
    return scale


def true_median(values: Tensor) -> Tensor:
    """Median of a 1-D tensor; the mean of the two middle values for an even count (torch.median
    returns the lower one)."""
    ordered = values.sort().values
    n = ordered.shape[0]
    return ordered[n // 2] if n % 2 else 0.5 * (ordered[n // 2 - 1] + ordered[n // 2])


def alignment_frames(frames: int, images_per_scene: int, generator: torch.Generator | None = None) -> list[int]:
    """The frames real-scale alignment reads: all when there are few enough, else
    `images_per_scene` drawn without replacement by `generator` (training), or evenly spaced
    over the clip when no generator is given (evaluation: deterministic)."""
    if frames <= images_per_scene:
        return list(range(frames))
    if generator is None:
        return torch.linspace(0, frames - 1, images_per_scene).round().long().tolist()
    return sorted(torch.randperm(frames, generator=generator)[:images_per_scene].tolist())


def align_scale(
    rel_depth: Tensor,
    metric_depth: Tensor,
    conf: Tensor,
    images_per_scene: int = 16,
    generators: list[torch.Generator] | None = None,
) -> Tensor:
    """Real-scale alignment (§3.2): one scale per scene mapping relative → metric depth.

    Per sampled image: weighted least squares (weights = confidence) on pixels where both
    depths are finite and > 0, with a robust re-fit (`_robust_image_scale`). The images are
    `alignment_frames(S, images_per_scene, generators[b])`: a random draw per scene in training
    (one generator per scene, seeded by step and scene, so a resumed run draws the same), evenly
    spaced when `generators` is None. The scene scale is the true median of the per-image scales.
    A scene with no valid pixel gets 1.

    Args:
        rel_depth, metric_depth, conf: `[B, S, H, W]`.
        generators: None, or one CPU generator per scene.
    Returns:
        `[B]` scales (no gradient is intended: call under `torch.no_grad`).
    """
    batch, frames = rel_depth.shape[:2]
    if generators is not None and len(generators) != batch:
        raise ValueError(f"align_scale: {len(generators)} generators for {batch} scenes")
    scales = []
    for b in range(batch):
        per_image = []
        for s in alignment_frames(frames, images_per_scene, None if generators is None else generators[b]):
            rel, met, w = rel_depth[b, s].reshape(-1), metric_depth[b, s].reshape(-1), conf[b, s].reshape(-1)
            valid = torch.isfinite(rel) & torch.isfinite(met) & torch.isfinite(w) & (rel > 0) & (met > 0) & (w > 0)
            if valid.sum() >= 3:
                per_image.append(_robust_image_scale(rel[valid], met[valid], w[valid]))
        if per_image:
            scales.append(true_median(torch.stack(per_image)))
        else:
            scales.append(torch.ones((), dtype=rel_depth.dtype, device=rel_depth.device))
    return torch.stack(scales)


# ----------------------------------------------------------------------------- scene frame


def first_camera_to_gravity(cam0_to_world: Tensor, axis_alignment: Tensor) -> Tensor:
    """Rotation `[3, 3]` taking first-camera-frame vectors to the axis-aligned (gravity) frame.

    ScanNet: x_aligned = A · C_0 · x_cam0, so the rotation is A[:3,:3] · C_0[:3,:3]
    (`cam0_to_world` = C_0 `[4, 4]`, `axis_alignment` = A `[4, 4]`, identity if absent).
    """
    return axis_alignment[..., :3, :3] @ cam0_to_world[..., :3, :3]


def first_camera_center_aligned(cam0_to_world: Tensor, axis_alignment: Tensor) -> Tensor:
    """The first camera centre in the axis-aligned ScanNet world `[3]` (= (A · C_0)[:3, 3])."""
    return (axis_alignment @ cam0_to_world)[..., :3, 3]


def scene_to_scannet_world(points_scene: Tensor, first_camera_center_aligned: Tensor) -> Tensor:
    """Scene frame (gravity-aligned, origin at the first camera) → axis-aligned ScanNet world.

    Only a translation: the rotation and the metric scale were predicted, so their errors count.
    `points_scene [..., 3]`, `first_camera_center_aligned [3]` → `[..., 3]`.
    """
    return points_scene + first_camera_center_aligned


def scannet_world_to_scene(points_aligned: Tensor, first_camera_center_aligned: Tensor) -> Tensor:
    """Inverse of `scene_to_scannet_world` (for building ground truth in the scene frame)."""
    return points_aligned - first_camera_center_aligned


def fov_to_focal(fov: Tensor | float, size: int) -> Tensor | float:
    """Field of view (radians) across `size` pixels → focal length in pixels."""
    if isinstance(fov, Tensor):
        return (size / 2) / torch.tan(fov / 2)
    return (size / 2) / math.tan(fov / 2)


def ground_truth_geometry(targets: dict[str, Tensor]) -> dict[str, Tensor]:
    """The geometry that places the 3D patches, from ground truth instead of the reconstruction
    (`VidLLM.encode_video(geometry=...)`, the upper bound of the ablations): from
    `vidllm.losses.reconstruction_targets` output → depth `[B, S, H, W]` (metres), extrinsics
    `[B, S, 3, 4]` (first camera = identity, metres), intrinsics `[B, S, 3, 3]`, scene_rotation
    `[B, 3, 3]`."""
    scale = targets["scale"].view(-1, 1, 1, 1)
    extrinsics = targets["extrinsics"]
    return {"depth": targets["depth_metric"],
            "extrinsics": torch.cat([extrinsics[..., :3], extrinsics[..., 3:] * scale], dim=-1),
            "intrinsics": targets["intrinsics"], "scene_rotation": targets["scene_rotation"]}
