"""Reconstruction losses (L_recon of eq. 8, "following VGGT") and their ground truth.

Targets (`reconstruction_targets`) follow VGGT's normalisation: the world becomes the first
camera (E_i = inv(C_i)·C_0), then translations, depths and world points are divided by
s = mean distance of the valid GT points from the first camera. ScanNet depth is metric, so
s is in metres; the reconstruction branch predicts in this scale-free unit (VGGT's outputs
are defined that way), and metres come back through the metric depth model and real-scale
alignment (§3.2), which is supervised separately by L_MD against the *unnormalised* depth
(`depth_metric`). Predictions are never rescaled here, exactly as in VGGT.

Losses:
- camera: per refinement iteration k = 1..K, weight γ^(K−k) (γ = 0.6), L1 (or Huber) on
  translation, quaternion (raw difference; GT quaternions have w ≥ 0) and the two FoVs;
  summed over iterations and divided by K; total = w_T·L_T + w_R·L_R + w_FoV·L_FoV (1, 1, 0.5).
- depth / points: with e = ‖x̂ − x‖ per valid pixel and confidence c ≥ 1,
  conf = mean(c·e − α·log c), reg = mean(e), grad = multi-scale (strides 1, 2, 4, 8)
  confidence-weighted L1 of the finite-difference gradients of the masked residual;
  total = conf + reg + grad_weight·grad (VGGT adds the unweighted reg term too). The conf
  term can be negative when the prediction is good and c > 1; that is by design (VGGT #323).
  Residuals above the `valid_range` quantile are dropped (VGGT uses 0.98) to resist GT noise.
- scene rotation (ours): geodesic angle between predicted and GT rotations of
  the first camera into the gravity-aligned frame (or squared Frobenius distance).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from vidllm.geometry import (
    extri_intri_to_pose_encoding,
    extrinsics_relative_to_first,
    first_camera_center_aligned,
    first_camera_to_gravity,
    unproject_depth,
)

# ----------------------------------------------------------------------------- targets


def reconstruction_targets(
    camera_to_world: Tensor,
    intrinsics: Tensor,
    depth_gt: Tensor,
    axis_alignment: Tensor | None,
    image_hw: tuple[int, int],
    min_valid_pixels: int = 100,
) -> dict[str, Tensor]:
    """Ground truth of the reconstruction branch from ScanNet-style inputs.

    Args:
        camera_to_world: `[B, S, 4, 4]` ScanNet poses (camera → scan world, OpenCV axes).
        intrinsics: `[B, S, 3, 3]` in pixels of the `image_hw = (H, W)` network input.
        depth_gt: `[B, S, H, W]` metres; 0 / non-finite = no measurement.
        axis_alignment: `[B, 4, 4]` scan world → axis-aligned (gravity) world, None = identity.
        min_valid_pixels: a scene whose first frame has fewer valid pixels is marked invalid
            in `sequence_valid` (VGGT's rule: its scale would be meaningless).
    Returns dict:
        pose_enc `[B, S, 9]` (first camera = identity, translation / s), extrinsics `[B, S, 3, 4]`
        (same, normalised), depth `[B, S, H, W]` (/ s, 0 where invalid), points `[B, S, H, W, 3]`
        (first-camera frame, / s, 0 where invalid), valid_mask `[B, S, H, W]` bool,
        depth_metric `[B, S, H, W]` metres (0 where invalid), intrinsics (as given), scale `[B]` = s in metres,
        scene_rotation `[B, 3, 3]` (first camera → gravity frame), first_camera_center `[B, 3]`
        (axis-aligned world, metres), sequence_valid `[B]` bool.
    """
    batch, frames, height, width = depth_gt.shape
    if tuple(image_hw) != (height, width):
        raise ValueError(f"depth is {height}x{width} but image_hw is {tuple(image_hw)}")
    if camera_to_world.shape != (batch, frames, 4, 4) or intrinsics.shape != (batch, frames, 3, 3):
        raise ValueError(
            f"expected camera_to_world [{batch},{frames},4,4] and intrinsics [{batch},{frames},3,3], "
            f"got {tuple(camera_to_world.shape)} and {tuple(intrinsics.shape)}"
        )
    if not torch.isfinite(camera_to_world).all():
        raise ValueError("camera_to_world has non-finite entries (drop invalid frames before sampling)")
    if axis_alignment is None:
        axis_alignment = torch.eye(4, dtype=camera_to_world.dtype, device=camera_to_world.device).expand(batch, 4, 4)

    valid = torch.isfinite(depth_gt) & (depth_gt > 0)
    depth_metric = torch.where(valid, depth_gt, torch.zeros_like(depth_gt))
    extrinsics = extrinsics_relative_to_first(camera_to_world)  # [B, S, 3, 4], metres
    points = unproject_depth(depth_metric, extrinsics, intrinsics)  # [B, S, H, W, 3], first-camera frame
    mask = valid.to(points.dtype)
    distance_sum = (points.norm(dim=-1) * mask).flatten(1).sum(-1)
    scale = (distance_sum / (mask.flatten(1).sum(-1) + 1e-3)).clamp(1e-6, 1e6)  # [B]

    inv = (1.0 / scale).view(batch, 1, 1, 1)
    extrinsics_norm = torch.cat([extrinsics[..., :3], extrinsics[..., 3:] * inv], dim=-1)
    points_norm = points * inv[..., None] * mask[..., None]
    return {
        "pose_enc": extri_intri_to_pose_encoding(extrinsics_norm, intrinsics, (height, width)),
        "extrinsics": extrinsics_norm,
        "depth": depth_metric * inv,
        "points": points_norm,
        "valid_mask": valid,
        "depth_metric": depth_metric,
        "intrinsics": intrinsics,
        "scale": scale,
        "scene_rotation": first_camera_to_gravity(camera_to_world[:, 0], axis_alignment),
        "first_camera_center": first_camera_center_aligned(camera_to_world[:, 0], axis_alignment),
        "sequence_valid": valid[:, 0].flatten(1).sum(-1) > min_valid_pixels,
    }


# ----------------------------------------------------------------------------- camera


def _regression(diff: Tensor, loss_type: str, huber_delta: float) -> Tensor:
    if loss_type == "l1":
        return diff.abs().clamp(max=100.0)
    if loss_type == "huber":
        return F.huber_loss(diff, torch.zeros_like(diff), reduction="none", delta=huber_delta).clamp(max=100.0)
    raise ValueError(f"unknown camera loss_type '{loss_type}' (expected 'l1' or 'huber')")


def camera_loss(
    pose_enc_list: list[Tensor],
    gt_pose_enc: Tensor,
    gamma: float = 0.6,
    loss_type: str = "l1",
    weight_trans: float = 1.0,
    weight_rot: float = 1.0,
    weight_fov: float = 0.5,
    sequence_valid: Tensor | None = None,
    huber_delta: float = 1.0,
) -> dict[str, Tensor]:
    """VGGT camera loss over the refinement iterations.

    Args:
        pose_enc_list: K tensors `[B, S, 9]`, the camera head's iterations (last = final).
        gt_pose_enc: `[B, S, 9]` from `reconstruction_targets`.
        sequence_valid: `[B]` bool; invalid scenes are ignored (all invalid → zero loss).
    Returns:
        dict of scalars: total, trans, rot, fov (each the γ-weighted iteration average).
    """
    if not pose_enc_list:
        raise ValueError("camera_loss needs at least one pose encoding")
    keep = sequence_valid if sequence_valid is not None else torch.ones(gt_pose_enc.shape[0], dtype=torch.bool,
                                                                        device=gt_pose_enc.device)
    num_iters = len(pose_enc_list)
    parts = {"trans": slice(0, 3), "rot": slice(3, 7), "fov": slice(7, 9)}
    sums = {name: pose_enc_list[-1].new_zeros(()) for name in parts}
    if keep.any():
        target = gt_pose_enc[keep].to(pose_enc_list[-1].dtype)
        for k, pred in enumerate(pose_enc_list):
            weight = gamma ** (num_iters - 1 - k)
            per_elem = _regression(pred[keep] - target, loss_type, huber_delta)
            for name, cols in parts.items():
                sums[name] = sums[name] + weight * per_elem[..., cols].mean()
    else:  # keep the graph alive so every rank runs the same backward
        sums = {name: (0.0 * pose_enc_list[-1]).sum() for name in parts}
    out = {name: value / num_iters for name, value in sums.items()}
    out["total"] = weight_trans * out["trans"] + weight_rot * out["rot"] + weight_fov * out["fov"]
    return out


# ----------------------------------------------------------------------------- depth / points


def _keep_below_quantile(values: Tensor, quantile: float) -> Tensor:
    """Bool mask of `values [N]` at or below their `quantile` (kthvalue: no size limit)."""
    k = max(1, min(values.numel(), math.ceil(quantile * values.numel())))
    threshold = values.detach().kthvalue(k).values
    return values <= threshold


def _gradient_loss(residual: Tensor, conf: Tensor, mask: Tensor, scales: int) -> Tensor:
    """Multi-scale confidence-weighted L1 of the finite differences of the masked residual.

    residual `[N, H, W, D]`, conf `[N, H, W]`, mask `[N, H, W]` bool. Differences count only
    where both neighbours are valid; each scale is normalised by its number of valid pixels.
    """
    total = residual.new_zeros(())
    for level in range(scales):
        stride = 2**level
        res, c, m = residual[:, ::stride, ::stride], conf[:, ::stride, ::stride], mask[:, ::stride, ::stride]
        res = res * m[..., None]
        level_sum = residual.new_zeros(())
        for dim in (1, 2):  # rows (y), columns (x)
            n = res.shape[dim]
            if n < 2:
                continue
            a, b = res.narrow(dim, 1, n - 1), res.narrow(dim, 0, n - 1)
            both = m.narrow(dim, 1, n - 1) & m.narrow(dim, 0, n - 1)
            grad = (a - b).abs().sum(-1).clamp(max=100.0)
            pair_conf = 0.5 * (c.narrow(dim, 1, n - 1) + c.narrow(dim, 0, n - 1))
            level_sum = level_sum + (pair_conf * grad * both).sum()
        total = total + level_sum / m.sum().clamp_min(1)
    return total / scales


def _confidence_regression(
    pred: Tensor, conf: Tensor, target: Tensor, mask: Tensor, alpha: float, grad_weight: float,
    grad_scales: int, valid_range: float | None,
) -> dict[str, Tensor]:
    """Shared body of depth_loss and point_loss; pred/target `[B, S, H, W, D]`."""
    flat_pred = pred.flatten(0, 1)
    flat_conf, flat_mask = conf.flatten(0, 1), mask.flatten(0, 1)
    residual = flat_pred - target.flatten(0, 1).to(pred.dtype)
    if not flat_mask.any():
        zero = (0.0 * pred).sum() + (0.0 * conf).sum()
        return {"total": zero, "conf": zero, "reg": zero, "grad": zero}
    picked = residual[flat_mask]  # [V, D]
    # ‖·‖ for D = 3; for D = 1 |·| directly (the norm's gradient is undefined at exactly 0).
    error = picked.abs().squeeze(-1) if picked.shape[-1] == 1 else picked.norm(dim=-1)
    error = error.clamp(max=100.0)
    c = flat_conf[flat_mask]
    if valid_range is not None and 0 < valid_range < 1 and error.numel() > 1000:
        inlier = _keep_below_quantile(error, valid_range)
        error, c = error[inlier], c[inlier]
    conf_term = (c * error - alpha * torch.log(c)).mean()
    reg_term = error.mean()
    grad_term = _gradient_loss(residual, flat_conf, flat_mask, grad_scales) if grad_weight > 0 else reg_term * 0
    return {"total": conf_term + reg_term + grad_weight * grad_term, "conf": conf_term, "reg": reg_term,
            "grad": grad_term}


def depth_loss(
    depth: Tensor,
    conf: Tensor,
    gt_depth: Tensor,
    valid_mask: Tensor,
    alpha: float = 0.2,
    grad_weight: float = 1.0,
    grad_scales: int = 4,
    valid_range: float | None = 0.98,
) -> dict[str, Tensor]:
    """VGGT depth loss, `c·|d̂−d| + c·|∇d̂−∇d| − α·log c` plus the unweighted |d̂−d|.

    Args:
        depth: `[B, S, H, W]` predicted (scale-free) depth; conf `[B, S, H, W]` ≥ 1.
        gt_depth: `[B, S, H, W]` normalised GT (`reconstruction_targets(...)["depth"]`).
        valid_mask: `[B, S, H, W]` bool.
    Returns:
        dict of scalars: total, conf, reg, grad.
    """
    return _confidence_regression(depth[..., None], conf, gt_depth[..., None], valid_mask, alpha, grad_weight,
                                  grad_scales, valid_range)


def point_loss(
    points: Tensor,
    conf: Tensor,
    gt_points: Tensor,
    valid_mask: Tensor,
    alpha: float = 0.2,
    grad_weight: float = 1.0,
    grad_scales: int = 3,
    valid_range: float | None = 0.98,
) -> dict[str, Tensor]:
    """Point-map loss: as `depth_loss` with Euclidean errors on xyz; the gradient term compares
    the finite differences of the point map (local surface shape) instead of VGGT's normals.

    Args:
        points: `[B, S, H, W, 3]` predicted first-camera-frame points; conf `[B, S, H, W]` ≥ 1.
        gt_points: `[B, S, H, W, 3]` normalised GT; valid_mask `[B, S, H, W]` bool.
    """
    return _confidence_regression(points, conf, gt_points, valid_mask, alpha, grad_weight, grad_scales, valid_range)


# ----------------------------------------------------------------------------- scene rotation


def scene_rotation_loss(pred_rotation: Tensor, gt_rotation: Tensor, kind: str = "geodesic") -> Tensor:
    """Rotation of the first camera into the gravity-aligned scene frame.

    Args:
        pred_rotation, gt_rotation: `[B, 3, 3]`.
        kind: "geodesic" = mean angle (radians) of R̂ᵀR, "frobenius" = mean ‖R̂ − R‖²_F
            (= 4(1 − cos θ) for rotations; smooth everywhere).
    """
    gt_rotation = gt_rotation.to(pred_rotation.dtype)
    if kind == "frobenius":
        return (pred_rotation - gt_rotation).pow(2).sum(dim=(-1, -2)).mean()
    if kind != "geodesic":
        raise ValueError(f"unknown rotation loss kind '{kind}' (expected 'geodesic' or 'frobenius')")
    relative = pred_rotation.transpose(-1, -2) @ gt_rotation
    cos = (relative.diagonal(dim1=-2, dim2=-1).sum(-1) - 1.0) / 2.0
    skew = relative - relative.transpose(-1, -2)
    axis = torch.stack([skew[..., 2, 1], skew[..., 0, 2], skew[..., 1, 0]], dim=-1)  # 2·sin θ · unit axis
    # atan2 is accurate at every angle (acos is not near 0 and π); the tiny ε keeps the norm's
    # gradient finite at θ = 0, where the angle itself is not differentiable.
    sin = 0.5 * torch.sqrt(axis.pow(2).sum(-1) + 1e-12)
    return torch.atan2(sin, cos).mean()
