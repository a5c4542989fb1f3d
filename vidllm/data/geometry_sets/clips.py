"""The clip every geometry-set reader returns, and the image/depth file readers they share."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from vidllm.errors import DataError


@dataclass
class GeometryClip:
    """Frames of one sequence (or one image) with their ground truth, OpenCV convention.

    `camera_to_world` `[N,4,4]` maps OpenCV camera coordinates (x right, y down, z forward) to
    the dataset's world; None when the set has no poses (NYUv2). `intrinsics` `[N,3,3]` are in
    pixels of the image file as stored, pixel centres at integer coordinates. `load_depth()`
    gives `[N,H,W]` float32 metres at the image's resolution, 0 = invalid; None when the set
    has no depth (RealEstate10K).
    """

    id: str  # unique within the set: "<category>/<sequence>", "<sequence_id>", "<image stem>"
    group: str  # what the set reports by: the Co3D category; "" elsewhere
    image_paths: tuple[Path, ...]
    frame_ids: np.ndarray  # int64 [N]: Co3D frame_number, RE10K timestamp (µs), NYUv2 image index
    intrinsics: np.ndarray  # float64 [N,3,3]
    image_sizes: tuple[tuple[int, int], ...]  # (w, h) per frame, as the annotations declare them
    camera_to_world: np.ndarray | None = None  # float64 [N,4,4]
    load_depth: Callable[[], np.ndarray] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.image_paths)

    def load_images(self) -> list[np.ndarray]:
        """uint8 `[H,W,3]` per frame; a file whose size differs from the annotated one is an error."""
        images = []
        for path, (w, h) in zip(self.image_paths, self.image_sizes, strict=True):
            image = read_rgb(path)
            if image.shape[:2] != (h, w):
                raise DataError(path, f"image is {image.shape[1]}x{image.shape[0]}, the annotations say {w}x{h}")
            images.append(image)
        return images


def read_rgb(path: Path) -> np.ndarray:
    """An image file as uint8 `[H,W,3]`."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except FileNotFoundError:
        raise DataError(path, "image file not found") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(path, f"not a readable image: {exc}") from None


def image_size(path: Path) -> tuple[int, int]:
    """(w, h) of an image file, from its header."""
    try:
        with Image.open(path) as image:
            return image.size
    except FileNotFoundError:
        raise DataError(path, "image file not found") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(path, f"not a readable image: {exc}") from None


def read_png_uint16(path: Path) -> np.ndarray:
    """A 16-bit single-channel PNG as uint16 `[H,W]`."""
    try:
        with Image.open(path) as image:
            if image.mode not in ("I;16", "I;16B", "I;16L", "I"):
                raise DataError(path, f"expected a 16-bit single-channel PNG, got mode {image.mode}")
            return np.asarray(image).astype(np.uint16)
    except FileNotFoundError:
        raise DataError(path, "depth file not found") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(path, f"not a readable PNG: {exc}") from None


def read_depth_png_mm(path: Path) -> np.ndarray:
    """A 16-bit depth PNG in millimetres (0 = no measurement) → float32 metres `[H,W]`."""
    return read_png_uint16(path).astype(np.float32) / 1000.0


def sample_clip_frames(available: int, frames: int | None, seed: int | Sequence[int]) -> np.ndarray:
    """Indices of the frames a clip keeps: `frames` drawn without replacement with `seed` (VGGT's
    pose protocol draws 10 at random per sequence), sorted; all of them when there are fewer or
    `frames` is None."""
    if frames is None or available <= frames:
        return np.arange(available)
    return np.sort(np.random.default_rng(seed).choice(available, size=frames, replace=False))
