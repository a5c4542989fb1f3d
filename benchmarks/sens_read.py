"""Benchmark: decoding every frame of a `.sens` file through SensReader versus decoding the same
JPEG/zlib payloads already in memory (the floor set by PIL + zlib). Prints one JSON object.

    python benchmarks/sens_read.py [--frames 300] [--color 640x480] [--depth 320x240] [--repeats 3]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from vidllm.data.scannet.sens import SensReader, write_sens


def _size(text: str) -> tuple[int, int]:
    w, h = text.lower().split("x")
    return int(w), int(h)


def make_frames(n: int, color_wh: tuple[int, int], depth_wh: tuple[int, int]):
    """Textured colour (smooth shading + checker + noise, so JPEG sizes are camera-like) and a
    slanted-plane depth map with a moving box, in millimetres."""
    rng = np.random.default_rng(0)
    (cw, ch), (dw, dh) = color_wh, depth_wh
    yy, xx = np.mgrid[0:ch, 0:cw].astype(np.float32)
    dy, dx = np.mgrid[0:dh, 0:dw].astype(np.float32)
    colors, depths = [], []
    for i in range(n):
        shift = 3.0 * i
        checker = (((xx + shift) // 32 + yy // 32) % 2) * 40
        base = np.stack([
            90 + 60 * np.sin((xx + shift) / 70), 110 + 50 * np.cos(yy / 55 + i / 40), 80 + 0 * xx,
        ], axis=-1) + checker[..., None]
        noise = rng.normal(0, 6, base.shape).astype(np.float32)
        colors.append(np.clip(base + noise, 0, 255).astype(np.uint8))
        depth = 1500 + 4 * dx + 6 * dy + 20 * np.sin(dx / 15 + i / 10)
        x0 = int((i * 2) % (dw - 60))
        depth[dh // 3: dh // 3 + 60, x0: x0 + 60] -= 600
        depth[:8] = 0  # invalid rows as in real sensors
        depths.append(depth.astype(np.uint16))
    return colors, depths


def decode_from_memory(payloads: list[tuple[bytes, bytes]], depth_wh: tuple[int, int]) -> None:
    dw, dh = depth_wh
    for color_bytes, depth_bytes in payloads:
        with Image.open(io.BytesIO(color_bytes)) as img:
            np.asarray(img)
        np.frombuffer(zlib.decompress(depth_bytes), dtype="<u2").reshape(dh, dw)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=300, help="frames in the file (default 300)")
    parser.add_argument("--color", default="640x480", help="colour WxH (default 640x480)")
    parser.add_argument("--depth", default="320x240", help="depth WxH (default 320x240)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats, best kept (default 3)")
    args = parser.parse_args()
    color_wh, depth_wh = _size(args.color), _size(args.depth)
    colors, depths = make_frames(args.frames, color_wh, depth_wh)
    poses = np.tile(np.eye(4), (args.frames, 1, 1))
    k = np.eye(4)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.sens"
        t0 = time.perf_counter()
        write_sens(path, colors=colors, depths=depths, camera_to_world=poses,
                   intrinsic_color=k, intrinsic_depth=k)
        write_s = time.perf_counter() - t0
        file_mb = os.path.getsize(path) / 1e6
        with SensReader(path) as reader:
            payloads = [(f.color_bytes, f.depth_bytes) for f in map(reader.raw_frame, range(len(reader)))]

        open_times, reader_times, memory_times = [], [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            with SensReader(path) as reader:
                t1 = time.perf_counter()
                for frame in reader:
                    pass
            t2 = time.perf_counter()
            open_times.append(t1 - t0)
            reader_times.append(t2 - t0)
            t0 = time.perf_counter()
            decode_from_memory(payloads, depth_wh)
            memory_times.append(time.perf_counter() - t0)

    reader_fps = args.frames / min(reader_times)
    memory_fps = args.frames / min(memory_times)
    print(json.dumps({
        "benchmark": "sens_read",
        "frames": args.frames,
        "color_size": list(color_wh),
        "depth_size": list(depth_wh),
        "file_mb": round(file_mb, 2),
        "write_s": round(write_s, 3),
        "open_index_ms": round(1000 * min(open_times), 2),
        "reader_frames_per_s": round(reader_fps, 1),
        "memory_decode_frames_per_s": round(memory_fps, 1),
        "ratio": round(reader_fps / memory_fps, 3),
        "repeats": args.repeats,
        "machine": f"{platform.machine()}, {os.cpu_count()} cpu",
    }))


if __name__ == "__main__":
    main()
