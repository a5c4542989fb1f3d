"""One training clip from a synthetic ScanNet scene, built the way the shards are (frame
sampling, resize + crop, depth resampled onto the colour grid, intrinsics adjusted)."""

from __future__ import annotations

import numpy as np
import torch

from vidllm.data.frames import (
    ResizeCrop,
    adjust_intrinsics,
    plan_resize_crop,
    resample_depth,
    resize_color,
    sample_frame_ids,
)
from vidllm.data.scannet.scans import load_scene
from vidllm.losses.recon import reconstruction_targets


def load_clip(scene_path, frames: int, size: int = 56, patch: int = 14) -> dict:
    """`frames` frames of a scene at `size`×`size` → images `[1, S, 3, size, size]` in [0, 1],
    the `reconstruction_targets` (float32), and the scene's objects (axis-aligned boxes)."""
    with load_scene(scene_path) as scene:
        frame_ids = sample_frame_ids(scene.valid_frame_ids, frames)
        plan = plan_resize_crop(scene.color_size, size, patch)
        # Square crop of the resized frame, centred (the shards keep the full width instead).
        plan = ResizeCrop(plan.in_size, plan.resized_size,
                          ((plan.resized_size[0] - size) // 2, (plan.resized_size[1] - size) // 2), (size, size))
        intrinsic = adjust_intrinsics(scene.intrinsic_color, plan)
        colors = np.stack([resize_color(scene.read_color(int(f)), plan) for f in frame_ids])
        depths = np.stack([resample_depth(scene.read_depth(int(f)), scene.intrinsic_depth, intrinsic, plan.out_size)
                           for f in frame_ids])
        poses = np.stack([scene.pose(int(f)) for f in frame_ids])
        axis_alignment, objects = scene.axis_alignment, scene.objects
    images = torch.from_numpy(colors).permute(0, 3, 1, 2).float().div(255)[None]
    targets = reconstruction_targets(
        torch.from_numpy(poses)[None], torch.from_numpy(intrinsic).expand(1, frames, 3, 3),
        torch.from_numpy(depths).double()[None], torch.from_numpy(axis_alignment)[None], (size, size),
    )
    targets = {k: v.float() if v.is_floating_point() else v for k, v in targets.items()}
    return {"images": images, "targets": targets, "objects": objects}
