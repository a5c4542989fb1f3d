"""Reconstruction branch (§3.2): Global-Frame Attention aggregator on the geometry tokens,
camera head, DPT depth (and optional point) head, the metric depth model on the base tokens,
and real-scale alignment of the relative reconstruction to metres.

Outputs follow VGGT's conventions (`vidllm.geometry`): world = first camera, OpenCV axes.
Relative depth, points and translations share one (arbitrary) scale; `scale [B]` maps them to
metres. `extrinsics` already carry the scaled translations, `depth_metric_aligned` = scale ·
depth. The scale is a statistic (computed under no_grad), so the aligned outputs still
backpropagate into the relative predictions but not through the alignment itself.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vidllm.config import ModelConfig
from vidllm.geometry import align_scale, pose_encoding_to_extri_intri
from vidllm.models.aggregator import Aggregator
from vidllm.models.camera_head import CameraHead
from vidllm.models.dpt_head import DPTHead
from vidllm.models.metric_depth import MetricDepthModel


class ReconstructionBranch(nn.Module):
    def __init__(self, cfg: ModelConfig, in_dim: int):
        super().__init__()
        patch_size = cfg.encoder.patch_size
        self.patch_size = patch_size
        self.alignment = cfg.alignment
        self.aggregator = Aggregator(cfg.aggregator, in_dim, patch_size)
        dim = 2 * cfg.aggregator.embed_dim  # frame ‖ global outputs
        heads = cfg.heads
        # The aggregator keeps only the layers the heads read; map layer ids to list positions.
        dpt_idx = [self.aggregator.output_index(i) for i in cfg.aggregator.intermediate_layers]
        dpt_args = dict(patch_size=patch_size, features=heads.dpt_features, out_channels=heads.dpt_out_channels,
                        intermediate_layer_idx=dpt_idx, frames_chunk_size=heads.dpt_frames_chunk)
        self.camera_head = CameraHead(heads, dim)
        self.depth_head = DPTHead(dim, output_dim=2, activation="exp", **dpt_args)
        self.point_head = DPTHead(dim, output_dim=4, activation="inv_log", **dpt_args) if heads.point_head else None
        # Ablation 'w/o MD' (model.metric_depth.enabled = false): no metric depth model at all.
        self.metric_depth = (MetricDepthModel(cfg.metric_depth, in_dim, patch_size, heads.dpt_frames_chunk)
                             if cfg.metric_depth.enabled else None)

    def forward(self, geom_tokens: Tensor, images: Tensor, base_tokens: Tensor, with_points: bool = True,
                depth_levels: list[Tensor] | None = None, alignment_seeds: list[int] | None = None) -> dict:
        """
        Args:
            geom_tokens: `[B, S, P, C]` geometry-stream tokens from the Cross-Task Adapter.
            images: `[B, S, 3, H, W]` in [0, 1] (H, W multiples of the patch size).
            base_tokens: `[B, S, P, C]` shared-encoder tokens (input of the metric depth model).
            with_points: run the point head (if the model has one); nothing downstream of the
                branch reads world points, so a step that does not train them skips the head.
            depth_levels: four `[B, S, P, C]` encoder layers for the metric depth decoder (None:
                `base_tokens` at every level).
            alignment_seeds: one seed per scene for the images real-scale alignment draws
                (training); None = evenly spaced images (evaluation, deterministic).
        Returns dict:
            pose_enc `[B, S, 9]`, pose_enc_list (list of `[B, S, 9]`), depth `[B, S, H, W]`
            (relative), depth_conf `[B, S, H, W]`, world_points `[B, S, H, W, 3]` and
            world_points_conf `[B, S, H, W]` (with the point head), metric_depth `[B, S, H, W]`
            and metric (MetricDepthModel outputs; absent without the model), scale `[B]`,
            extrinsics `[B, S, 3, 4]` (translations × scale), intrinsics `[B, S, 3, 3]`, and
            depth_metric_aligned `[B, S, H, W]`: the depth the 3D patches are built from — the
            aligned relative depth; the metric depth model's own depth under 'MD w/o alignment'
            (cameras then keep VGGT's relative scale: there is no scale estimate); the relative
            depth under 'w/o MD' (scale 1).
        """
        batch, frames, _, height, width = images.shape
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"image size {height}x{width} is not a multiple of patch size {self.patch_size}")
        patch_hw = (height // self.patch_size, width // self.patch_size)
        tokens_list, patch_start_idx = self.aggregator(geom_tokens, patch_hw)

        # Heads run in fp32 even under mixed precision (exp activations and pose decoding), as VGGT.
        with torch.autocast(device_type=images.device.type, enabled=False):
            tokens_list = [t.float() for t in tokens_list]
            images = images.float()
            pose_enc_list = self.camera_head(tokens_list)
            pose_enc = pose_enc_list[-1]
            depth, depth_conf = self.depth_head(tokens_list, images, patch_start_idx)
            depth = depth.squeeze(-1)
            out: dict = {"pose_enc": pose_enc, "pose_enc_list": pose_enc_list, "depth": depth, "depth_conf": depth_conf}
            if self.point_head is not None and with_points:
                out["world_points"], out["world_points_conf"] = self.point_head(tokens_list, images, patch_start_idx)
            if self.metric_depth is not None:
                out["metric"] = self.metric_depth(base_tokens.float(), (height, width),
                                                  None if depth_levels is None else [t.float() for t in depth_levels])
                out["metric_depth"] = out["metric"]["depth"]

        scale = torch.ones(batch, dtype=depth.dtype, device=depth.device)
        patch_depth = depth
        if self.metric_depth is not None and self.alignment.enabled:
            generators = None if alignment_seeds is None else [
                torch.Generator().manual_seed(self.alignment.seed * 1_000_003 + int(seed)) for seed in alignment_seeds]
            with torch.no_grad():
                scale = align_scale(depth, out["metric_depth"], depth_conf, self.alignment.images_per_scene, generators)
            patch_depth = depth * scale.view(batch, 1, 1, 1)
        elif self.metric_depth is not None:  # 'MD w/o alignment'
            patch_depth = out["metric_depth"]
        out["scale"] = scale

        extrinsics, intrinsics = pose_encoding_to_extri_intri(pose_enc, (height, width))
        rotation, translation = extrinsics[..., :3], extrinsics[..., 3:]
        out["extrinsics"] = torch.cat([rotation, translation * scale.view(batch, 1, 1, 1)], dim=-1)
        out["intrinsics"] = intrinsics
        out["depth_metric_aligned"] = patch_depth
        return out
