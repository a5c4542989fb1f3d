"""NYUv2's labelled set (1449 RGB-D images, 640×480) in its exported layout:

    <root>/rgb/<id>.png|.jpg        colour image
    <root>/depth/<id>.png           16-bit depth in millimetres, 0 = no measurement
    <root>/depth/<id>.npy           or float depth in metres [H, W]
    <root>/<split>.txt              optional: the ids of a split, one per line (e.g. test.txt, the 654 of Eigen et al.)

The release's `nyu_depth_v2_labeled.mat` is a MATLAB v7.3 (HDF5) file; reading it needs h5py,
which this environment does not ship, so it must be exported to the layout above first.
Each image is a one-frame clip with the Kinect's colour intrinsics (scaled to the image size).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vidllm.data.geometry_sets.clips import GeometryClip, image_size, read_depth_png_mm
from vidllm.errors import DataError

RGB_DIR, DEPTH_DIR = "rgb", "depth"
LABELED_MAT = "nyu_depth_v2_labeled.mat"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SIZE = (640, 480)  # (w, h) of the release
# The Kinect colour camera's intrinsics from the NYU toolbox, pixels of 640×480.
KINECT_COLOR = np.array([[518.8579, 0.0, 325.5824], [0.0, 519.4696, 253.7362], [0.0, 0.0, 1.0]])
# Eigen et al.'s evaluation crop of 480×640 images: rows 45:471, columns 41:601.
EIGEN_CROP = (45, 471, 41, 601)


def eigen_crop_mask(height: int, width: int) -> np.ndarray:
    """bool `[H,W]`, True inside the Eigen crop (scaled proportionally from 480×640 for other sizes)."""
    top, bottom, left, right = EIGEN_CROP
    mask = np.zeros((height, width), dtype=bool)
    mask[round(top * height / SIZE[1]):round(bottom * height / SIZE[1]),
         round(left * width / SIZE[0]):round(right * width / SIZE[0])] = True
    return mask


def read_depth(path: Path) -> np.ndarray:
    """float32 metres `[H,W]`, 0 = invalid, from a millimetre PNG or a metre `.npy`."""
    if path.suffix == ".npy":
        try:
            depth = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise DataError(path, "depth file not found") from None
        except (ValueError, OSError) as exc:
            raise DataError(path, f"not a readable .npy: {exc}") from None
        if depth.ndim != 2 or not np.issubdtype(depth.dtype, np.floating):
            raise DataError(path, f"depth must be a float [H,W] array in metres, got {depth.dtype} {list(depth.shape)}")
        depth = depth.astype(np.float32)
        depth[~np.isfinite(depth) | (depth < 0)] = 0.0
        return depth
    return read_depth_png_mm(path)


def _depth_path(root: Path, stem: str) -> Path:
    for suffix in (".png", ".npy"):
        path = root / DEPTH_DIR / f"{stem}{suffix}"
        if path.is_file():
            return path
    raise DataError(root / DEPTH_DIR / f"{stem}.png", "no depth for this image (expected .png in mm or .npy in m)")


def load_nyuv2(root: str | Path, split: str | None = None) -> list[GeometryClip]:
    """One single-frame clip per image (id = the file stem), in id order; `split` keeps the ids
    listed in `<root>/<split>.txt`."""
    root = Path(root)
    rgb = root / RGB_DIR
    if not rgb.is_dir():
        if (root / LABELED_MAT).is_file():
            raise DataError(root / LABELED_MAT, "a MATLAB v7.3 (HDF5) file, which needs h5py (not installed): export "
                                                f"it to {RGB_DIR}/<id>.png and {DEPTH_DIR}/<id>.png (mm) first")
        raise DataError(rgb, f"NYUv2 colour folder not found (expected <root>/{RGB_DIR}/<id>.png)")
    images = {p.stem: p for p in sorted(rgb.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    if not images:
        raise DataError(rgb, "no images (.png/.jpg)")
    stems = sorted(images)
    if split is not None:
        listing = root / f"{split}.txt"
        if not listing.is_file():
            raise DataError(listing, f"split list not found (ids of split '{split}', one per line)")
        wanted = [line.strip() for line in listing.read_text(encoding="utf-8").splitlines() if line.strip()]
        unknown = [s for s in wanted if s not in images]
        if unknown:
            raise DataError(listing, f"id {unknown[0]!r} has no image in {RGB_DIR}/")
        stems = wanted
    clips = []
    for index, stem in enumerate(stems):
        image, depth = images[stem], _depth_path(root, stem)
        w, h = image_size(image)
        sx, sy = w / SIZE[0], h / SIZE[1]  # as `vidllm.data.frames.adjust_intrinsics` rescales
        k = np.array([[KINECT_COLOR[0, 0] * sx, 0.0, (KINECT_COLOR[0, 2] + 0.5) * sx - 0.5],
                      [0.0, KINECT_COLOR[1, 1] * sy, (KINECT_COLOR[1, 2] + 0.5) * sy - 0.5], [0.0, 0.0, 1.0]])
        clips.append(GeometryClip(
            id=stem, group="", image_paths=(image,),
            frame_ids=np.asarray([int(stem) if stem.isdigit() else index], dtype=np.int64),
            intrinsics=k[None], image_sizes=((w, h),),
            load_depth=lambda depth=depth: read_depth(depth)[None],
        ))
    return clips
