"""Reconstruction metrics: depth, camera pose and point-cloud quality (numpy/scipy only).

- Depth (NYU/ScanNet convention): per image over the valid mask `0 < gt < max_depth` and
  `pred > 0`, then averaged over images: δ1, AbsRel, RMSE, log10. The monocular protocol
  (`median_aligned_depth_metrics`) first scales each prediction by its median ratio to the GT.
- Pose (VGGT / PoseDiffusion): relative poses over all i<j pairs; rotation error = geodesic
  angle, translation error = angle between relative translation directions (sign-agnostic);
  RRA@τ / RTA@τ = fraction below τ; AUC@τ (mAA) over max(rot, trans) with 1° bins.
- Point clouds (Atlas `eval_mesh`): 2 cm voxel down-sampling of both clouds, then
  Acc (pred→GT mean distance), Comp (GT→pred), Precision/Recall at 5 cm, F-score.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree


def resize_nearest(depth: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of `[..., H, W]` to `[..., height, width]` (pixel centres)."""
    h, w = depth.shape[-2:]
    if (h, w) == (height, width):
        return depth
    rows = np.minimum(((np.arange(height) + 0.5) * h / height).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * w / width).astype(np.int64), w - 1)
    return depth[..., rows[:, None], cols[None, :]]


def depth_metrics(pred: np.ndarray, gt: np.ndarray, max_depth: float = 10.0) -> dict[str, float]:
    """Depth errors of `pred` vs `gt`, both `[N, H, W]` or `[H, W]` metres (pred is resized to gt).

    Images with no valid pixel are skipped; `num_images` says how many counted.
    """
    gt = np.asarray(gt, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    if gt.ndim == 2:
        gt, pred = gt[None], pred[None]
    pred = resize_nearest(pred, *gt.shape[-2:])
    per_image: dict[str, list[float]] = {"delta1": [], "abs_rel": [], "rmse": [], "log10": []}
    for p, g in zip(pred, gt, strict=True):
        valid = np.isfinite(g) & np.isfinite(p) & (g > 0) & (g < max_depth) & (p > 0)
        if not valid.any():
            continue
        p, g = p[valid], g[valid]
        per_image["delta1"].append(float((np.maximum(p / g, g / p) < 1.25).mean()))
        per_image["abs_rel"].append(float((np.abs(p - g) / g).mean()))
        per_image["rmse"].append(float(np.sqrt(((p - g) ** 2).mean())))
        per_image["log10"].append(float(np.abs(np.log10(p) - np.log10(g)).mean()))
    result = {k: float(np.mean(v)) if v else float("nan") for k, v in per_image.items()}
    result["num_images"] = len(per_image["delta1"])
    return result


def median_aligned_depth_metrics(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None,
                                 min_depth: float = 1e-3, max_depth: float = 10.0) -> tuple[dict[str, float], float]:
    """The monocular protocol on one image: `pred` `[h,w]` scaled by median(gt) / median(pred) over
    the valid pixels (`mask` `[H,W]`, e.g. the Eigen crop, and min_depth < gt < max_depth), clamped
    to [min_depth, max_depth], then `depth_metrics` over those pixels. Returns (metrics, scale);
    NaN metrics and scale when no pixel is valid.
    """
    gt = np.asarray(gt, dtype=np.float64)
    pred = resize_nearest(np.asarray(pred, dtype=np.float64), *gt.shape)
    valid = np.isfinite(gt) & (gt > min_depth) & (gt < max_depth) & np.isfinite(pred) & (pred > 0)
    if mask is not None:
        valid &= mask
    if not valid.any():
        return depth_metrics(np.zeros((1, 1)), np.zeros((1, 1)), max_depth), float("nan")
    scale = float(np.median(gt[valid]) / np.median(pred[valid]))
    aligned = np.where(valid, np.clip(pred * scale, min_depth, max_depth), 0.0)
    return depth_metrics(aligned, np.where(valid, gt, 0.0), max_depth), scale


def _relative_poses(camera_to_world: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All i<j pairs: relative rotation `[P, 3, 3]` and translation `[P, 3]` of world-to-camera poses."""
    world_to_camera = np.linalg.inv(camera_to_world)
    i, j = np.triu_indices(len(camera_to_world), k=1)
    # VGGT's T_ij = E_i · E_j⁻¹ (camera j → camera i); any global rigid change of the world cancels.
    relative = world_to_camera[i] @ camera_to_world[j]
    return relative[:, :3, :3], relative[:, :3, 3], i, j


def pose_errors(pred_camera_to_world: np.ndarray, gt_camera_to_world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pair rotation and translation-direction errors in degrees, `[N,4,4]` × 2 → `[P]`, `[P]`."""
    pred = np.asarray(pred_camera_to_world, dtype=np.float64)
    gt = np.asarray(gt_camera_to_world, dtype=np.float64)
    if pred.shape != gt.shape or pred.ndim != 3 or pred.shape[1:] != (4, 4):
        raise ValueError(f"pose arrays must both be [N,4,4], got {pred.shape} and {gt.shape}")
    rot_p, t_p, _, _ = _relative_poses(pred)
    rot_g, t_g, _, _ = _relative_poses(gt)
    cos_r = (np.einsum("pij,pij->p", rot_p, rot_g) - 1.0) / 2.0  # trace(R_pᵀ R_g) = Σ R_p ⊙ R_g
    rot_err = np.degrees(np.arccos(np.clip(cos_r, -1.0, 1.0)))
    norm_p, norm_g = np.linalg.norm(t_p, axis=1), np.linalg.norm(t_g, axis=1)
    eps = 1e-12
    cos_t = np.abs((t_p * t_g).sum(1)) / np.maximum(norm_p * norm_g, eps)
    trans_err = np.degrees(np.arccos(np.clip(cos_t, 0.0, 1.0)))
    # A pair without baseline in both poses has no direction to get wrong.
    trans_err = np.where((norm_p < 1e-9) & (norm_g < 1e-9), 0.0, trans_err)
    return rot_err, trans_err


def pose_auc(rot_err: np.ndarray, trans_err: np.ndarray, max_threshold: int = 30) -> float:
    """VGGT's `calculate_auc_np`: mean over t = 1..τ of the fraction of pairs with max error < t."""
    err = np.maximum(rot_err, trans_err)
    if err.size == 0:
        return float("nan")
    histogram, _ = np.histogram(err, bins=np.arange(max_threshold + 1))
    return float(np.mean(np.cumsum(histogram / err.size)))


def pose_metrics(
    pred_camera_to_world: np.ndarray, gt_camera_to_world: np.ndarray, threshold: float = 15.0, auc_max: int = 30
) -> dict[str, float]:
    rot_err, trans_err = pose_errors(pred_camera_to_world, gt_camera_to_world)
    return {
        f"RRA@{threshold:g}": float((rot_err < threshold).mean()),
        f"RTA@{threshold:g}": float((trans_err < threshold).mean()),
        f"AUC@{auc_max}": pose_auc(rot_err, trans_err, auc_max),
        "num_pairs": int(rot_err.size),
    }


def voxel_down_sample(points: np.ndarray, voxel_size: float) -> np.ndarray:
    """Mean point per occupied voxel (as open3d's `voxel_down_sample`), `[N,3]` → `[M,3]`."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    points = points[np.isfinite(points).all(1)]
    if len(points) == 0:
        return points
    keys = np.floor(points / voxel_size).astype(np.int64)
    _, inverse, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    sums = np.zeros((len(counts), 3))
    np.add.at(sums, inverse, points)
    return sums / counts[:, None]


def point_cloud_metrics(
    pred_points: np.ndarray, gt_points: np.ndarray, threshold: float = 0.05, voxel_size: float = 0.02
) -> dict[str, float]:
    """Atlas-style Acc / Comp (metres) and Precision / Recall / F-score at `threshold`."""
    pred = voxel_down_sample(pred_points, voxel_size) if voxel_size > 0 else np.asarray(pred_points, float)
    gt = voxel_down_sample(gt_points, voxel_size) if voxel_size > 0 else np.asarray(gt_points, float)
    if len(pred) == 0 or len(gt) == 0:
        raise ValueError(f"point cloud is empty (pred {len(pred)} points, gt {len(gt)} points)")
    dist_pred_to_gt, _ = cKDTree(gt).query(pred, workers=-1)
    dist_gt_to_pred, _ = cKDTree(pred).query(gt, workers=-1)
    precision = float((dist_pred_to_gt < threshold).mean())
    recall = float((dist_gt_to_pred < threshold).mean())
    fscore = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {
        "Acc": float(dist_pred_to_gt.mean()),
        "Comp": float(dist_gt_to_pred.mean()),
        "Precision": precision,
        "Recall": recall,
        "F-score": fscore,
    }


def backproject_depth(depth: np.ndarray, intrinsic: np.ndarray, camera_to_world: np.ndarray) -> np.ndarray:
    """Valid pixels of one depth map `[H, W]` (metres, 0 = invalid) → world points `[K, 3]`.

    `intrinsic` is `[3,3]` or `[4,4]` in pixels of this depth map, OpenCV axes.
    """
    h, w = depth.shape
    v, u = np.nonzero(np.isfinite(depth) & (depth > 0))
    z = depth[v, u].astype(np.float64)
    k = np.asarray(intrinsic, dtype=np.float64)
    x = (u - k[0, 2]) / k[0, 0] * z
    y = (v - k[1, 2]) / k[1, 1] * z
    camera_points = np.stack([x, y, z, np.ones_like(z)], axis=1)
    return (camera_points @ np.asarray(camera_to_world, dtype=np.float64).T)[:, :3]
