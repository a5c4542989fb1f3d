"""Readers for the two exported ScanNet frame layouts.

- Official `SensReader/python/reader.py` export: `color/{i}.jpg`, `depth/{i}.png` (uint16 mm),
  `pose/{i}.txt` (4x4 camera-to-world), `intrinsic/intrinsic_{color,depth}.txt`; unpadded names.
- `posed_images/<scene>/` (EmbodiedScan / Video-3D-LLM): `%05d.jpg`, `%05d.png`, `%05d.txt`,
  `intrinsic.txt` (colour K) and `depth_intrinsic.txt` in one flat folder.

Both expose the same small interface as `SensFrameSource` in `vidllm.data.scannet.scans`: all frame ids,
their poses, intrinsics, image sizes, and per-frame colour / raw depth reads.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from vidllm.errors import DataError

EXPORT_DEPTH_SHIFT = 1000.0  # both exporters write depth in millimetres


def read_matrix_txt(path: Path, what: str) -> np.ndarray:
    """A 4x4 matrix written as whitespace-separated text (pose or intrinsic file)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise DataError(path, f"missing {what} file") from None
    except OSError as exc:
        raise DataError(path, f"cannot read {what} file ({exc.strerror})") from None
    try:
        values = [float(v) for v in text.split()]
    except ValueError:
        raise DataError(path, f"{what} file is not a list of numbers") from None
    if len(values) != 16:
        raise DataError(path, f"{what} file has {len(values)} numbers, expected 16 (4x4)")
    return np.asarray(values, np.float64).reshape(4, 4)


def _image_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as img:
            return img.size
    except OSError as exc:
        raise DataError(path, f"cannot read image ({exc})") from None


def _numbered(folder: Path, suffix: str) -> dict[int, Path]:
    """{frame id: path} for files named `<integer><suffix>` in `folder`."""
    out: dict[int, Path] = {}
    try:
        names = os.listdir(folder)
    except OSError as exc:
        raise DataError(folder, f"cannot list folder ({exc.strerror})") from None
    for name in names:
        stem, ext = os.path.splitext(name)
        if ext.lower() == suffix and stem.isdigit():
            out[int(stem)] = folder / name
    return out


class ExportedFrameSource:
    """Frames of an exported scene (either layout); poses are read eagerly, images on demand."""

    def __init__(
        self,
        root: Path,
        color: dict[int, Path],
        depth: dict[int, Path],
        pose: dict[int, Path],
        pose_path_for: Callable[[int], Path],
        depth_path_for: Callable[[int], Path],
        intrinsic_color_path: Path,
        intrinsic_depth_path: Path,
        layout: str,
        progress: bool = False,
    ):
        self.root = root
        self.layout = layout
        if not color:
            raise DataError(root, f"no colour frames found ({layout} layout)")
        self.frame_ids = np.array(sorted(color), dtype=np.int64)
        self._color, self._depth = color, depth
        for fid in self.frame_ids:
            if fid not in pose:
                raise DataError(pose_path_for(int(fid)), f"missing pose file for colour frame {fid}")
            if fid not in depth:
                raise DataError(depth_path_for(int(fid)), f"missing depth image for colour frame {fid}")
        iterator = self.frame_ids
        if progress:
            from tqdm import tqdm

            iterator = tqdm(self.frame_ids, desc="reading poses", unit="frame", leave=False)
        self.camera_to_world = np.stack([read_matrix_txt(pose[int(f)], "pose") for f in iterator])
        self.intrinsic_color = read_matrix_txt(intrinsic_color_path, "colour intrinsic")
        self.intrinsic_depth = read_matrix_txt(intrinsic_depth_path, "depth intrinsic")
        first = int(self.frame_ids[0])
        self.color_size = _image_size(color[first])
        self.depth_size = _image_size(depth[first])
        self.depth_shift = EXPORT_DEPTH_SHIFT

    @property
    def num_frames(self) -> int:
        return len(self.frame_ids)

    def read_color(self, frame_id: int) -> np.ndarray:
        path = self._color[frame_id]
        try:
            with Image.open(path) as img:
                img.load()
                if img.mode != "RGB":
                    img = img.convert("RGB")
                color = np.asarray(img)
        except OSError as exc:
            raise DataError(path, f"cannot decode colour image ({exc})") from None
        w, h = self.color_size
        if color.shape != (h, w, 3):
            raise DataError(path, f"colour image is {color.shape[1]}x{color.shape[0]}, expected {w}x{h}")
        return color

    def read_depth_raw(self, frame_id: int) -> np.ndarray:
        path = self._depth[frame_id]
        try:
            with Image.open(path) as img:
                img.load()
                if img.mode not in ("I;16", "I;16B", "I;16L", "I"):
                    raise DataError(path, f"depth PNG must be 16-bit single channel, got mode {img.mode}")
                depth = np.asarray(img)
        except OSError as exc:
            raise DataError(path, f"cannot decode depth image ({exc})") from None
        w, h = self.depth_size
        if depth.shape != (h, w):
            raise DataError(path, f"depth image is {depth.shape[1]}x{depth.shape[0]}, expected {w}x{h}")
        return depth.astype(np.uint16, copy=False)

    def close(self) -> None:
        pass


def is_official_export(folder: Path) -> bool:
    return all((folder / d).is_dir() for d in ("color", "depth", "pose"))


def is_posed_images(folder: Path) -> bool:
    return (folder / "intrinsic.txt").is_file() and any(
        n.endswith(".jpg") and n[:-4].isdigit() for n in os.listdir(folder)
    )


def open_official_export(folder: Path, progress: bool = False) -> ExportedFrameSource:
    return ExportedFrameSource(
        root=folder,
        color=_numbered(folder / "color", ".jpg"),
        depth=_numbered(folder / "depth", ".png"),
        pose=_numbered(folder / "pose", ".txt"),
        pose_path_for=lambda i: folder / "pose" / f"{i}.txt",
        depth_path_for=lambda i: folder / "depth" / f"{i}.png",
        intrinsic_color_path=folder / "intrinsic" / "intrinsic_color.txt",
        intrinsic_depth_path=folder / "intrinsic" / "intrinsic_depth.txt",
        layout="official export",
        progress=progress,
    )


def open_posed_images(folder: Path, progress: bool = False) -> ExportedFrameSource:
    return ExportedFrameSource(
        root=folder,
        color=_numbered(folder, ".jpg"),
        depth=_numbered(folder, ".png"),
        pose=_numbered(folder, ".txt"),
        pose_path_for=lambda i: folder / f"{i:05d}.txt",
        depth_path_for=lambda i: folder / f"{i:05d}.png",
        intrinsic_color_path=folder / "intrinsic.txt",
        intrinsic_depth_path=folder / "depth_intrinsic.txt",
        layout="posed_images",
        progress=progress,
    )
