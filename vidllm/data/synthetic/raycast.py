"""Vectorised numpy ray caster for a room made of axis-aligned boxes.

The room is the inside of one box (floor, four walls, ceiling); furniture are solid boxes
inside it. Everything lives in the room's own z-up frame (ScanNet's axis-aligned frame).
Arrays are kept per axis in float32 because numpy is memory-bound here: three [P] arrays are
much faster than one [P,3] array (measured ~1 s for 32 frames at 320x240 on 2 cores).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Surface ids of the six room faces, after the furniture ids 0..M-1 (offset by M at runtime).
ROOM_FACES = ("floor", "ceiling", "wall_x0", "wall_x1", "wall_y0", "wall_y1")


@dataclass
class RayHits:
    """Per-pixel result of casting one view. Shapes are [H,W] (or [H,W,3])."""

    depth: np.ndarray  # float32 z-depth along the camera's optical axis, metres
    surface: np.ndarray  # int16: 0..M-1 furniture index, M + k for ROOM_FACES[k]
    normal: np.ndarray  # float32 [H,W,3] outward unit normal of the hit surface (room frame)
    point: np.ndarray  # float32 [H,W,3] hit point in the room frame


def pixel_rays(camera_to_room: np.ndarray, intrinsic: np.ndarray, width: int, height: int):
    """Rays through integer pixel centres (OpenCV convention: x right, y down, z forward).

    Returns origin [3] and per-axis direction arrays [P] scaled so that the ray parameter t
    equals z-depth (the camera-frame z component of each direction is 1).
    """
    fx, fy, cx, cy = intrinsic[0, 0], intrinsic[1, 1], intrinsic[0, 2], intrinsic[1, 2]
    u, v = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    x_cam = ((u - cx) / fx).ravel()
    y_cam = ((v - cy) / fy).ravel()
    rot = camera_to_room[:3, :3].astype(np.float32)
    dirs = [rot[i, 0] * x_cam + rot[i, 1] * y_cam + rot[i, 2] for i in range(3)]
    return camera_to_room[:3, 3].astype(np.float32), dirs


def cast_view(
    camera_to_room: np.ndarray,
    intrinsic: np.ndarray,
    width: int,
    height: int,
    room_lo: np.ndarray,
    room_hi: np.ndarray,
    boxes_lo: np.ndarray,
    boxes_hi: np.ndarray,
) -> RayHits:
    """Cast one pinhole view against the room interior and the furniture boxes.

    Args:
        camera_to_room: [4,4] camera-to-room pose (OpenCV camera axes); the camera must be
            inside the room and outside every furniture box.
        intrinsic: [3,3] or [4,4] pinhole K for an image of `width` x `height` pixels.
        room_lo, room_hi: [3] room corners. boxes_lo, boxes_hi: [M,3] furniture corners.
    """
    origin, dirs = pixel_rays(camera_to_room, intrinsic, width, height)
    num_pixels = dirs[0].shape[0]
    num_boxes = len(boxes_lo)
    # Rays parallel to an axis would divide by zero; nudging them (keeping the sign used for
    # the exit-plane choice consistent) changes nothing visible.
    dirs = [np.where(np.abs(d) < 1e-9, np.where(d < 0, np.float32(-1e-9), np.float32(1e-9)), d) for d in dirs]
    inv = [1.0 / d for d in dirs]

    # Leaving the room: the nearest of the three exit planes.
    best_t = np.full(num_pixels, np.inf, dtype=np.float32)
    best_surface = np.zeros(num_pixels, dtype=np.int16)
    best_axis = np.zeros(num_pixels, dtype=np.int8)
    best_sign = np.zeros(num_pixels, dtype=np.float32)
    for axis in range(3):
        positive = dirs[axis] > 0
        plane = np.where(positive, room_hi[axis], room_lo[axis]).astype(np.float32)
        t_exit = (plane - origin[axis]) * inv[axis]
        closer = t_exit < best_t
        best_t = np.where(closer, t_exit, best_t)
        # Face index: axis 2 -> floor(0)/ceiling(1), axis 0 -> walls 2/3, axis 1 -> walls 4/5.
        face = np.where(positive, 1, 0) + {2: 0, 0: 2, 1: 4}[axis]
        best_surface = np.where(closer, num_boxes + face, best_surface).astype(np.int16)
        best_axis = np.where(closer, axis, best_axis).astype(np.int8)
        # Inward-facing normal (the side the camera sees).
        best_sign = np.where(closer, np.where(positive, -1.0, 1.0), best_sign).astype(np.float32)

    # Entering a furniture box: slab test, keep the nearest positive entry.
    for index in range(num_boxes):
        t_near = np.full(num_pixels, -np.inf, dtype=np.float32)
        t_far = np.full(num_pixels, np.inf, dtype=np.float32)
        near_axis = np.zeros(num_pixels, dtype=np.int8)
        for axis in range(3):
            t1 = (boxes_lo[index, axis] - origin[axis]) * inv[axis]
            t2 = (boxes_hi[index, axis] - origin[axis]) * inv[axis]
            t_min = np.minimum(t1, t2)
            larger = t_min > t_near
            near_axis = np.where(larger, axis, near_axis).astype(np.int8)
            t_near = np.maximum(t_near, t_min)
            t_far = np.minimum(t_far, np.maximum(t1, t2))
        hit = (t_near <= t_far) & (t_near > 0) & (t_near < best_t)
        best_t = np.where(hit, t_near, best_t)
        best_surface = np.where(hit, index, best_surface).astype(np.int16)
        best_axis = np.where(hit, near_axis, best_axis).astype(np.int8)
        # Outward normal of the entered face points against the ray.
        ray_axis_dir = np.choose(near_axis, dirs)
        best_sign = np.where(hit, np.where(ray_axis_dir > 0, -1.0, 1.0), best_sign).astype(np.float32)

    normal = np.zeros((num_pixels, 3), dtype=np.float32)
    normal[np.arange(num_pixels), best_axis] = best_sign
    point = np.stack([origin[i] + best_t * dirs[i] for i in range(3)], axis=-1)
    return RayHits(
        depth=best_t.reshape(height, width),
        surface=best_surface.reshape(height, width),
        normal=normal.reshape(height, width, 3),
        point=point.reshape(height, width, 3).astype(np.float32),
    )


# Surface pattern kinds, functions of the face's in-plane coordinates (u horizontal, v up; on a
# horizontal face u = x, v = y) in units of the period: every class has its own kind at one
# common period, so the cue survives distance (which rescales a period but not a kind).
PATTERN_CHECKER, PATTERN_BANDS, PATTERN_STRIPES, PATTERN_DIAGONAL, PATTERN_ANTIDIAGONAL, PATTERN_PLAIN, \
    PATTERN_GRID, PATTERN_DOTS, PATTERN_WIDE_BANDS, PATTERN_WIDE_STRIPES, PATTERN_LINES = range(11)


def _pattern_dark(kind: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """True where a pattern of `kind` (per pixel) is dark at in-plane coordinates (u, v) / period."""
    fu, fv = u - np.floor(u), v - np.floor(v)
    iu, iv = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
    cases = {
        PATTERN_CHECKER: (iu + iv) % 2 == 1,
        PATTERN_BANDS: iv % 2 == 1,
        PATTERN_STRIPES: iu % 2 == 1,
        PATTERN_DIAGONAL: np.floor(u + v).astype(np.int64) % 2 == 1,
        PATTERN_ANTIDIAGONAL: np.floor(u - v).astype(np.int64) % 2 == 1,
        PATTERN_PLAIN: np.zeros_like(fu, dtype=bool),
        PATTERN_GRID: (fu < 0.25) | (fv < 0.25),
        PATTERN_DOTS: (np.abs(fu - 0.5) < 0.25) & (np.abs(fv - 0.5) < 0.25),
        PATTERN_WIDE_BANDS: np.floor(v / 2.5).astype(np.int64) % 2 == 1,
        PATTERN_WIDE_STRIPES: np.floor(u / 2.5).astype(np.int64) % 2 == 1,
        PATTERN_LINES: fv < 0.2,
    }
    out = np.zeros_like(fu, dtype=bool)
    for k, dark in cases.items():
        out |= (kind == k) & dark
    return out


def shade(hits: RayHits, albedo: np.ndarray, checker_size: np.ndarray, pattern: np.ndarray | None = None,
          dark: np.ndarray | None = None) -> np.ndarray:
    """Lambertian-ish shading with a surface pattern so colours stay nameable and views have texture.

    Args:
        albedo: [num_surfaces,3] float RGB in 0..1 per surface id.
        checker_size: [num_surfaces] pattern period in metres per surface id.
        pattern: [num_surfaces] pattern kind (PATTERN_*) per surface id; None = checker everywhere.
        dark: [num_surfaces] brightness of the dark cells (1 = no pattern); None = 0.9 everywhere.
    Returns uint8 [H,W,3].
    """
    light = np.array([0.35, 0.55, 0.76], dtype=np.float32)
    light /= np.linalg.norm(light)
    # Abs so every face gets a distinct but never black shade (indoor light comes from everywhere).
    lambert = np.abs(hits.normal @ light)
    period = checker_size[hits.surface]
    if pattern is None:
        # In-plane axes only: along the normal the hit coordinate sits on the plane and rounding
        # noise would flip the cell parity pixel by pixel.
        in_plane = hits.normal == 0
        cells = (np.floor(hits.point / period[..., None]).astype(np.int64) * in_plane).sum(axis=-1)
        is_dark = cells % 2 == 1
    else:
        point = hits.point / period[..., None]
        along_x = np.abs(hits.normal[..., 0]) > 0.5
        horizontal = np.abs(hits.normal[..., 2]) > 0.5
        u = np.where(along_x, point[..., 1], point[..., 0])  # the horizontal in-plane axis
        v = np.where(horizontal, point[..., 1], point[..., 2])  # up (or y on a top face)
        is_dark = _pattern_dark(pattern[hits.surface], u, v)
    dark_value = np.float32(0.9) if dark is None else dark[hits.surface].astype(np.float32)
    checker = np.where(is_dark, dark_value, np.float32(1.0)).astype(np.float32)
    rgb = albedo[hits.surface] * ((0.62 + 0.38 * lambert) * checker)[..., None]
    return np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)
