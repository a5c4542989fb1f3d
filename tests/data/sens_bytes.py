"""A `.sens` v4 file assembled field by field with `struct`, independent of vidllm's writer,
following the published layout (ScanNet `SensReader/c++/src/sensorData.h`)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def jpeg_bytes(color: np.ndarray, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(color).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def build_sens(
    colors: list[np.ndarray],
    depths: list[np.ndarray],
    poses: np.ndarray,
    intrinsic_color: np.ndarray,
    intrinsic_depth: np.ndarray,
    *,
    extrinsic_color: np.ndarray | None = None,
    extrinsic_depth: np.ndarray | None = None,
    version: int = 4,
    sensor_name: bytes = b"StructureSDK",
    depth_shift: float = 1000.0,
    color_compression: int = 2,
    depth_compression: int = 1,
    num_imu_frames: int | None = 2,
    depth_payload_override: dict[int, bytes] | None = None,
    timestamps: list[tuple[int, int]] | None = None,
) -> bytes:
    """num_imu_frames=None writes no IMU block at all (as the Python exporters' files)."""
    color_h, color_w = colors[0].shape[:2]
    depth_h, depth_w = depths[0].shape
    eye = np.eye(4)
    out = bytearray()
    out += struct.pack("<I", version)
    out += struct.pack("<Q", len(sensor_name)) + sensor_name
    for m in (
        intrinsic_color,
        eye if extrinsic_color is None else extrinsic_color,
        intrinsic_depth,
        eye if extrinsic_depth is None else extrinsic_depth,
    ):
        out += struct.pack("<16f", *np.asarray(m, np.float64).ravel())
    out += struct.pack("<i", color_compression) + struct.pack("<i", depth_compression)
    out += struct.pack("<IIII", color_w, color_h, depth_w, depth_h)
    out += struct.pack("<f", depth_shift)
    out += struct.pack("<Q", len(colors))
    for i, (color, depth) in enumerate(zip(colors, depths)):
        if color_compression == 2:
            color_payload = jpeg_bytes(color)
        elif color_compression == 0:
            color_payload = color.tobytes()
        else:
            raise ValueError(color_compression)
        depth_raw = depth.astype("<u2").tobytes()
        depth_payload = zlib.compress(depth_raw) if depth_compression == 1 else depth_raw
        if depth_payload_override and i in depth_payload_override:
            depth_payload = depth_payload_override[i]
        ts_color, ts_depth = timestamps[i] if timestamps else (1000 * i, 1000 * i + 7)
        out += struct.pack("<16f", *np.asarray(poses[i], np.float64).ravel())
        out += struct.pack("<QQ", ts_color, ts_depth)
        out += struct.pack("<QQ", len(color_payload), len(depth_payload))
        out += color_payload + depth_payload
    if num_imu_frames is not None:
        out += struct.pack("<Q", num_imu_frames)
        for k in range(num_imu_frames):
            out += struct.pack("<15d", *np.linspace(0, 1, 15) + k)  # 5 x vec3d
            out += struct.pack("<Q", 5000 + k)
    return bytes(out)


def smooth_image(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth colour gradient (JPEG-friendly, so decoded values are close to the input)."""
    yy, xx = np.mgrid[0:h, 0:w]
    phase = seed * 0.7
    img = np.stack(
        [
            127 + 100 * np.sin(xx / w * 3 + phase),
            127 + 100 * np.cos(yy / h * 2 + phase),
            np.full(xx.shape, 60.0 + 20 * (seed % 8)),
        ],
        axis=-1,
    )
    return np.clip(img, 0, 255).astype(np.uint8)


def ramp_depth(h: int, w: int, seed: int) -> np.ndarray:
    """uint16 millimetres with some zero (invalid) pixels."""
    yy, xx = np.mgrid[0:h, 0:w]
    depth = (500 + 10 * xx + 7 * yy + 100 * seed).astype(np.uint16)
    depth[: h // 8, : w // 8] = 0
    return depth


def pose(tx: float, ty: float, tz: float, yaw: float = 0.0) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    m = np.eye(4)
    m[:3, :3] = [[c, -s, 0], [s, c, 0], [0, 0, 1]]
    m[:3, 3] = (tx, ty, tz)
    return m


def intrinsic(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    k = np.eye(4)
    k[0, 0], k[1, 1], k[0, 2], k[1, 2] = fx, fy, cx, cy
    return k
