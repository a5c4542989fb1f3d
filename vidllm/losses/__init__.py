"""Training losses: Stage-1 distillation (eq. 5–7), Stage-2 joint objective (eq. 8–9).

All are pure functions of tensors returning scalars or dicts of named scalars (`total` plus
each term, for logging); trainable pieces such as the distillation projections live with
the trainer.
"""

from vidllm.losses.distill import (
    distill_loss,
    geometry_feature_loss,
    semantic_feature_loss,
    structural_consistency_loss,
)
from vidllm.losses.metric_depth import bin_chamfer_loss, metric_depth_loss
from vidllm.losses.recon import camera_loss, depth_loss, point_loss, reconstruction_targets, scene_rotation_loss
from vidllm.losses.stage2 import Stage2LossWeights, stage2_loss
from vidllm.losses.vl import VLLossWeights, giou_3d_loss, vl_loss

__all__ = [
    "Stage2LossWeights", "VLLossWeights", "bin_chamfer_loss", "camera_loss", "depth_loss", "distill_loss",
    "geometry_feature_loss", "giou_3d_loss", "metric_depth_loss", "point_loss", "reconstruction_targets",
    "scene_rotation_loss", "semantic_feature_loss", "stage2_loss", "structural_consistency_loss", "vl_loss",
]
