"""Small test videos: frame i is a flat grey of level `grey_level(i)`, so a decoded frame tells
which source frame it is."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vidllm.data.video import write_video


def grey_level(i: int) -> int:
    return (8 * i) % 256


def write_grey_video(path: Path, frames: int = 30, size: tuple[int, int] = (96, 64), codec: str = "libx264") -> Path:
    images = np.stack([np.full((size[1], size[0], 3), grey_level(i), np.uint8) for i in range(frames)])
    return write_video(path, images, fps=10, codec=codec)
