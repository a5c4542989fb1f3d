"""Frame sampling and the resize/crop that goes with it (paper §4.1).

Per scene: N frames uniformly over the valid (finite, invertible pose) frames; the shorter side resized
to `short_side`, then a centre crop so that H and W are multiples of the patch size. Depth
is resampled onto the same output grid with nearest neighbour, and the intrinsics are
rescaled and shifted so that projecting a 3D point with the new intrinsics lands on the
same image content.

Pixel convention: OpenCV, pixel centres at integer coordinates. Resizing by a factor s maps
a continuous coordinate x to (x + 0.5) * s - 0.5, so fx' = s fx and cx' = (cx + 0.5) s - 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image


def sample_frame_ids(valid_frame_ids: np.ndarray, num_frames: int) -> np.ndarray:
    """`num_frames` ids spread uniformly over `valid_frame_ids` (first and last included).

    A scene with fewer valid frames than `num_frames` repeats frames, so every clip has
    exactly `num_frames` frames and batches stack.
    """
    valid = np.asarray(valid_frame_ids, dtype=np.int64)
    if valid.size == 0:
        raise ValueError("scene has no valid frames")
    positions = np.linspace(0, valid.size - 1, num_frames)
    return valid[np.round(positions).astype(np.int64)]


@dataclass(frozen=True)
class ResizeCrop:
    """Resize (in_w, in_h) → (resized_w, resized_h), then crop a (out_w, out_h) window at (crop_x, crop_y)."""

    in_size: tuple[int, int]  # (w, h)
    resized_size: tuple[int, int]
    crop_xy: tuple[int, int]
    out_size: tuple[int, int]

    @property
    def scale_xy(self) -> tuple[float, float]:
        return self.resized_size[0] / self.in_size[0], self.resized_size[1] / self.in_size[1]


def plan_resize_crop(in_size: tuple[int, int], short_side: int, multiple: int) -> ResizeCrop:
    """Shorter side → `short_side` (aspect kept), centre crop to multiples of `multiple`."""
    w, h = in_size
    scale = short_side / min(w, h)
    resized = (max(1, round(w * scale)), max(1, round(h * scale)))
    out = ((resized[0] // multiple) * multiple, (resized[1] // multiple) * multiple)
    if out[0] == 0 or out[1] == 0:
        raise ValueError(f"short_side {short_side} is smaller than the patch multiple {multiple}")
    crop = ((resized[0] - out[0]) // 2, (resized[1] - out[1]) // 2)
    return ResizeCrop(in_size=(w, h), resized_size=resized, crop_xy=crop, out_size=out)


def adjust_intrinsics(intrinsic: np.ndarray, plan: ResizeCrop) -> np.ndarray:
    """[3,3] or [4,4] colour intrinsics → [3,3] intrinsics of the resized and cropped image."""
    k = np.asarray(intrinsic, dtype=np.float64)[:3, :3]
    sx, sy = plan.scale_xy
    out = np.eye(3)
    out[0, 0] = k[0, 0] * sx
    out[1, 1] = k[1, 1] * sy
    out[0, 1] = k[0, 1] * sx
    out[0, 2] = (k[0, 2] + 0.5) * sx - 0.5 - plan.crop_xy[0]
    out[1, 2] = (k[1, 2] + 0.5) * sy - 0.5 - plan.crop_xy[1]
    return out


def resize_color(color: np.ndarray, plan: ResizeCrop) -> np.ndarray:
    """uint8 [H,W,3] → uint8 [out_h,out_w,3] (antialiased resize, then crop)."""
    if color.shape[1] != plan.in_size[0] or color.shape[0] != plan.in_size[1]:
        raise ValueError(f"colour image is {color.shape[1]}x{color.shape[0]}, expected "
                         f"{plan.in_size[0]}x{plan.in_size[1]}")
    image = Image.fromarray(color)
    if plan.resized_size != plan.in_size:
        # Box-filtered when shrinking (no aliasing), bicubic when enlarging.
        shrinking = plan.resized_size[0] < plan.in_size[0]
        image = image.resize(plan.resized_size, Image.Resampling.BOX if shrinking else Image.Resampling.BICUBIC)
    x, y = plan.crop_xy
    image = image.crop((x, y, x + plan.out_size[0], y + plan.out_size[1]))
    return np.asarray(image)


def resample_depth(depth: np.ndarray, intrinsic_depth: np.ndarray, intrinsic_out: np.ndarray,
                   out_size: tuple[int, int]) -> np.ndarray:
    """Depth [h,w] (any dtype) → [out_h,out_w] on the output camera's grid, nearest neighbour.

    The depth camera may have its own resolution and intrinsics (ScanNet: 640x480 depth vs
    1296x968 colour, registered to the same viewpoint). Each output pixel looks up the depth
    pixel seen along the same ray, so the depth lines up with the resampled colour exactly.
    """
    k_d = np.asarray(intrinsic_depth, dtype=np.float64)[:3, :3]
    k_o = np.asarray(intrinsic_out, dtype=np.float64)[:3, :3]
    out_w, out_h = out_size
    u = np.arange(out_w, dtype=np.float64)
    v = np.arange(out_h, dtype=np.float64)
    # Normalised ray coordinates of the output pixel centres (skew ignored: ScanNet has none).
    x = (u - k_o[0, 2]) / k_o[0, 0]
    y = (v - k_o[1, 2]) / k_o[1, 1]
    src_u = np.rint(k_d[0, 0] * x + k_d[0, 2]).astype(np.int64)
    src_v = np.rint(k_d[1, 1] * y + k_d[1, 2]).astype(np.int64)
    h, w = depth.shape
    inside_u = (src_u >= 0) & (src_u < w)
    inside_v = (src_v >= 0) & (src_v < h)
    out = depth[np.clip(src_v, 0, h - 1)[:, None], np.clip(src_u, 0, w - 1)[None, :]]
    # Rays that leave the depth image get 0 = "no measurement", as ScanNet marks invalid depth.
    out = np.where(inside_v[:, None] & inside_u[None, :], out, 0).astype(depth.dtype)
    return out
