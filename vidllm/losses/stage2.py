"""Stage-2 joint objective (paper eq. 8): L_joint = L_recon + L_VL + L_MD.

L_recon = w_cam·camera + w_depth·depth + w_point·point (VGGT's multi-task loss; the point
term only when the model has a point head) + w_rot·scene rotation (our gravity-frame head,
which is geometry and trained with the reconstruction terms). L_MD is eq. 9
on the metric depth model's output (plus an optional AdaBins-style chamfer, weight 0 by
default), absent when the model has none (the 'w/o MD' ablation). L_VL comes from `vl_loss`. Which parameters each term reaches is decided by the
model (VL losses stop at the detached geometry, §3.4), not here.

Defaults: camera 5 / depth 1 as VGGT's fine-tuning recipe; the paper gives no weights.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from torch import Tensor

from vidllm.losses.metric_depth import bin_chamfer_loss, metric_depth_loss
from vidllm.losses.proposals import proposal_loss
from vidllm.losses.recon import camera_loss, depth_loss, point_loss, scene_rotation_loss
from vidllm.losses.vl import VLLossWeights, vl_loss


@dataclass(frozen=True)
class Stage2LossWeights:
    camera: float = 5.0
    depth: float = 1.0
    point: float = 1.0
    rotation: float = 1.0
    md: float = 1.0
    md_chamfer: float = 0.0
    lm: float = 1.0
    box: float = 1.0
    giou: float = 1.0
    match: float = 1.0
    refine: float = 1.0
    proposal: float = 1.0
    # Hyper-parameters of the individual terms.
    camera_gamma: float = 0.6
    camera_loss_type: str = "l1"
    conf_alpha: float = 0.2
    grad_weight: float = 1.0
    valid_range: float = 0.98
    md_alpha: float = 1.0
    rotation_kind: str = "geodesic"

    @classmethod
    def from_mapping(cls, values: dict) -> Stage2LossWeights:
        """Build from a config mapping; unknown keys are an error naming the key."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown stage-2 loss weight(s) {unknown} (known: {sorted(known)})")
        return cls(**values)


def stage2_loss(model_outputs: dict, batch: dict, weights: Stage2LossWeights | None = None) -> dict[str, Tensor]:
    """Eq. 8 on one batch.

    Args:
        model_outputs: `VidLLM.forward(...)` result (needs `recon` and `scene_rotation`; the
            VL terms are used when present). `{"recon": vision.recon, "scene_rotation":
            vision.scene_rotation}` from `encode_video` gives a reconstruction-only step.
        batch: `reconstruction_targets(...)` output (pose_enc, depth, points, valid_mask,
            depth_metric, scene_rotation, sequence_valid), plus for the `<ground>` terms the
            rows' box_targets, target_mask and target_proposals (see `vl_loss`; without
            box_targets only the LM term of L_VL is computed).
    Returns:
        dict of scalars: total, recon, md, vl and every individual term (camera, camera_trans,
        camera_rot, camera_fov, depth, depth_conf, depth_reg, depth_grad, point*, rotation,
        md_log, md_chamfer, lm, box, giou, match, refine, proposal_objectness, proposal_box — those
        that apply). The proposal terms need `proposal_votes` (objectness, boxes, xyz, voxel_mask
        of `VisionOutput`) in the outputs and `scene_boxes` / `scene_box_mask` in the batch.
    """
    w = weights or Stage2LossWeights()
    recon = model_outputs["recon"]
    depth_pred = recon["depth"]
    dtype = depth_pred.dtype
    valid = batch["valid_mask"]
    sequence_valid = batch.get("sequence_valid")
    recon_mask = valid if sequence_valid is None else valid & sequence_valid.view(-1, 1, 1, 1)
    out: dict[str, Tensor] = {}

    cam = camera_loss(recon["pose_enc_list"], batch["pose_enc"].to(dtype), gamma=w.camera_gamma,
                      loss_type=w.camera_loss_type, sequence_valid=sequence_valid)
    out.update({"camera": cam["total"], "camera_trans": cam["trans"], "camera_rot": cam["rot"],
                "camera_fov": cam["fov"]})
    dep = depth_loss(depth_pred, recon["depth_conf"], batch["depth"].to(dtype), recon_mask, alpha=w.conf_alpha,
                     grad_weight=w.grad_weight, valid_range=w.valid_range)
    out.update({"depth": dep["total"], "depth_conf": dep["conf"], "depth_reg": dep["reg"], "depth_grad": dep["grad"]})
    total_recon = w.camera * out["camera"] + w.depth * out["depth"]
    if "world_points" in recon and w.point > 0:
        pts = point_loss(recon["world_points"], recon["world_points_conf"], batch["points"].to(dtype), recon_mask,
                         alpha=w.conf_alpha, grad_weight=w.grad_weight, valid_range=w.valid_range)
        out.update({"point": pts["total"], "point_conf": pts["conf"], "point_reg": pts["reg"],
                    "point_grad": pts["grad"]})
        total_recon = total_recon + w.point * out["point"]
    if model_outputs.get("scene_rotation") is not None and w.rotation > 0:
        rotation = model_outputs["scene_rotation"]
        out["rotation"] = scene_rotation_loss(rotation, batch["scene_rotation"].to(rotation.dtype), w.rotation_kind)
        total_recon = total_recon + w.rotation * out["rotation"]

    total_md = depth_pred.new_zeros(())
    metric = recon.get("metric_depth")
    if metric is not None:  # absent in the 'w/o MD' ablation
        out["md_log"] = metric_depth_loss(metric, batch["depth_metric"].to(metric.dtype), valid, alpha=w.md_alpha)
        total_md = w.md * out["md_log"]
        if w.md_chamfer > 0:
            gt_metric = batch["depth_metric"].to(metric.dtype)
            out["md_chamfer"] = bin_chamfer_loss(recon["metric"]["bin_edges"], gt_metric, valid)
            total_md = total_md + w.md_chamfer * out["md_chamfer"]

    vl_weights = VLLossWeights(lm=w.lm, box=w.box, giou=w.giou, match=w.match, refine=w.refine)
    vl = vl_loss(model_outputs, batch, vl_weights)
    out.update({k: v for k, v in vl.items() if k != "total"})
    out["recon"], out["md"], out["vl"] = total_recon, total_md, vl["total"].to(total_recon.device)
    votes = model_outputs.get("proposal_votes")
    if votes is not None and w.proposal > 0 and batch.get("scene_boxes") is not None:
        prop = proposal_loss(*votes, batch["scene_boxes"], batch["scene_box_mask"])
        out["proposal_objectness"], out["proposal_box"] = prop["objectness"], prop["box"]
        out["vl"] = out["vl"] + w.proposal * (prop["objectness"] + prop["box"])
    out["total"] = total_recon + total_md + out["vl"]
    return out

