"""Co3Dv2 as published: `<root>/<category>/frame_annotations.jgz`, `<root>/<category>/set_lists/*.json`,
frames under `<root>/<category>/<sequence>/images/frameXXXXXX.jpg`.

`frame_annotations.jgz` is a gzipped JSON list, one object per frame:
`sequence_name`, `frame_number`, `image: {path, size: [H, W]}`, `depth: {path, scale_adjustment,
mask_path}` and `viewpoint: {R, T, focal_length, principal_point, intrinsics_format}`; paths are
relative to `<root>`. A set list maps a subset name ("train", "val", "test") to
`[sequence_name, frame_number, image_path]` rows.

Cameras are PyTorch3D's: a world point maps to the camera by the row-vector product
`X_cam = X_world @ R + T`, camera axes +X left, +Y up, +Z forward, and the intrinsics are in
NDC. `pytorch3d_to_opencv` converts them to an OpenCV camera-to-world pose and pixel intrinsics:

- Axes: OpenCV's x and y are PyTorch3D's negated, `D = diag(-1, -1, 1)`. As a column vector
  `X_cam = Rᵀ X_world + T`, so OpenCV's world-to-camera is `[D Rᵀ | D T]`, and the
  camera-to-world pose is its inverse `[R D | -R T]` (D = D⁻¹, (D Rᵀ)ᵀ = R D).
- Intrinsics: NDC spans [-1, 1] over the shorter image side for "ndc_isotropic" (each side for
  "ndc_norm_image_bounds"), so with `s = min(W, H) / 2` (resp. `W/2`, `H/2`) a PyTorch3D NDC
  coordinate `x_ndc = f_ndc · x / z + p_ndc` lies at pixel `u = W/2 − s · x_ndc` counted from
  the image's left edge (NDC +X points left). With OpenCV's `x = −x_pt3d`:
  `fx = s · f_ndc_x`, `cx = W/2 − s · p_ndc_x − 0.5` (the 0.5 puts pixel centres on integers);
  the same for y with H.

Depth maps are 16-bit PNGs holding float16 bit patterns; metres = value × `scale_adjustment`,
zero where the depth mask PNG is zero.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vidllm.data.geometry_sets.clips import GeometryClip, read_png_uint16, sample_clip_frames
from vidllm.errors import DataError

ANNOTATIONS = "frame_annotations.jgz"
SET_LISTS = "set_lists"
INTRINSICS_FORMATS = ("ndc_isotropic", "ndc_norm_image_bounds")
# PyTorch3D camera axes → OpenCV camera axes (x and y flip).
PT3D_TO_OPENCV = np.diag([-1.0, -1.0, 1.0])


def pytorch3d_to_opencv(R: np.ndarray, T: np.ndarray, focal_length: Sequence[float], principal_point: Sequence[float],
                        image_size_hw: Sequence[int], intrinsics_format: str = "ndc_isotropic",
                        ) -> tuple[np.ndarray, np.ndarray]:
    """A Co3D viewpoint → (OpenCV camera-to-world `[4,4]`, pixel intrinsics `[3,3]`); see the module docstring.

    R `[3,3]`, T `[3]` in PyTorch3D's row-vector convention; focal_length, principal_point `[2]`
    in NDC; image_size_hw `[2]` = (H, W) in pixels.
    """
    R = np.asarray(R, dtype=np.float64).reshape(3, 3)
    T = np.asarray(T, dtype=np.float64).reshape(3)
    h, w = float(image_size_hw[0]), float(image_size_hw[1])
    if intrinsics_format == "ndc_isotropic":
        sx = sy = min(w, h) / 2.0
    elif intrinsics_format == "ndc_norm_image_bounds":
        sx, sy = w / 2.0, h / 2.0
    else:
        raise ValueError(f"unknown intrinsics_format {intrinsics_format!r} (known: {', '.join(INTRINSICS_FORMATS)})")
    world_to_camera = np.eye(4)
    world_to_camera[:3, :3] = PT3D_TO_OPENCV @ R.T
    world_to_camera[:3, 3] = PT3D_TO_OPENCV @ T
    camera_to_world = np.eye(4)
    camera_to_world[:3, :3] = world_to_camera[:3, :3].T
    camera_to_world[:3, 3] = -world_to_camera[:3, :3].T @ world_to_camera[:3, 3]
    k = np.eye(3)
    k[0, 0] = sx * float(focal_length[0])
    k[1, 1] = sy * float(focal_length[1])
    k[0, 2] = w / 2.0 - sx * float(principal_point[0]) - 0.5
    k[1, 2] = h / 2.0 - sy * float(principal_point[1]) - 0.5
    return camera_to_world, k


def read_co3d_depth(path: Path, scale_adjustment: float, mask_path: Path | None = None) -> np.ndarray:
    """A Co3D depth PNG (float16 bits in uint16) → float32 metres `[H,W]`, 0 = invalid."""
    bits = read_png_uint16(path)
    depth = bits.view(np.float16).astype(np.float32) * np.float32(scale_adjustment)
    depth[~np.isfinite(depth) | (depth < 0)] = 0.0
    if mask_path is not None:
        mask = _read_mask(mask_path)
        if mask.shape != depth.shape:
            raise DataError(mask_path, f"depth mask is {mask.shape[1]}x{mask.shape[0]}, the depth map "
                                       f"{depth.shape[1]}x{depth.shape[0]}")
        depth[mask == 0] = 0.0
    return depth


def _read_mask(path: Path) -> np.ndarray:
    """A depth mask PNG (8- or 16-bit), nonzero = valid, as `[H,W]`."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return np.asarray(image if image.mode.startswith("I") else image.convert("L"))
    except FileNotFoundError:
        raise DataError(path, "depth mask file not found") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(path, f"not a readable PNG: {exc}") from None


def read_frame_annotations(path: Path) -> list[dict[str, Any]]:
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            records = json.load(f)
    except FileNotFoundError:
        raise DataError(path, "frame annotations not found") from None
    except (OSError, EOFError) as exc:
        raise DataError(path, f"not a gzip file: {exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(path, f"not valid JSON inside the gzip: {exc}") from None
    if not isinstance(records, list):
        raise DataError(path, f"must hold a JSON list of frame annotations, got {type(records).__name__}")
    return records


def read_set_lists(category_dir: Path, split: str) -> set[tuple[str, int]]:
    """(sequence_name, frame_number) of every frame any of the category's set lists puts in `split`."""
    folder = category_dir / SET_LISTS
    files = sorted(folder.glob("*.json")) if folder.is_dir() else []
    if not files:
        raise DataError(folder, f"no set list (*.json) to take split '{split}' from")
    keep: set[tuple[str, int]] = set()
    found = False
    for path in files:
        try:
            lists = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(path, f"not valid JSON: {exc}") from None
        if not isinstance(lists, dict):
            raise DataError(path, "must hold a JSON object {subset: [[sequence_name, frame_number, image_path], ...]}")
        if split not in lists:
            continue
        found = True
        for n, row in enumerate(lists[split]):
            if not isinstance(row, list) or len(row) < 2 or not isinstance(row[0], str) or not isinstance(row[1], int):
                raise DataError(path, f"{split}[{n}]: expected [sequence_name, frame_number, image_path], got {row!r}")
            keep.add((row[0], row[1]))
    if not found:
        raise DataError(folder, f"no set list has a '{split}' subset")
    return keep


def _field(path: Path, index: int, record: Any, dotted: str) -> Any:
    value = record
    for key in dotted.split("."):
        if not isinstance(value, dict) or key not in value:
            raise DataError(path, f"frame annotation {index}: missing '{dotted}'")
        value = value[key]
    return value


def _frame(path: Path, index: int, record: Any, root: Path) -> dict[str, Any]:
    """One frame annotation, checked, with its camera in OpenCV convention."""
    view = _field(path, index, record, "viewpoint")
    try:
        size = [int(v) for v in _field(path, index, record, "image.size")]
        R = np.asarray(_field(path, index, record, "viewpoint.R"), dtype=np.float64)
        T = np.asarray(_field(path, index, record, "viewpoint.T"), dtype=np.float64)
        focal = [float(v) for v in _field(path, index, record, "viewpoint.focal_length")]
        principal = [float(v) for v in _field(path, index, record, "viewpoint.principal_point")]
    except (TypeError, ValueError) as exc:
        raise DataError(path, f"frame annotation {index}: malformed camera or image size ({exc})") from None
    if R.shape != (3, 3) or T.shape != (3,) or len(focal) != 2 or len(principal) != 2 or len(size) != 2:
        raise DataError(path, f"frame annotation {index}: R must be 3x3, T, focal_length, principal_point and "
                              f"image.size of length 3, 2, 2, 2")
    if not all(np.isfinite(v).all() for v in (R, T, focal, principal)):
        raise DataError(path, f"frame annotation {index}: non-finite camera")
    fmt = view.get("intrinsics_format", "ndc_norm_image_bounds")  # Co3Dv1's, the field's default
    if fmt not in INTRINSICS_FORMATS:
        raise DataError(path, f"frame annotation {index}: unknown intrinsics_format {fmt!r} "
                              f"(known: {', '.join(INTRINSICS_FORMATS)})")
    camera_to_world, k = pytorch3d_to_opencv(R, T, focal, principal, size, fmt)
    sequence = _field(path, index, record, "sequence_name")
    number = _field(path, index, record, "frame_number")
    image = _field(path, index, record, "image.path")
    if not isinstance(sequence, str) or not isinstance(number, int) or not isinstance(image, str):
        raise DataError(path, f"frame annotation {index}: sequence_name, frame_number and image.path must be "
                              "a string, an integer and a string")
    depth = record.get("depth") or None
    return {"sequence": sequence, "number": number, "image": root / image, "size_wh": (size[1], size[0]),
            "camera_to_world": camera_to_world, "intrinsics": k, "depth": depth}


def categories(root: Path) -> list[str]:
    """Category folders of `root` holding frame annotations, sorted."""
    if not root.is_dir():
        raise DataError(root, "Co3Dv2 root folder not found")
    found = sorted(p.name for p in root.iterdir() if (p / ANNOTATIONS).is_file())
    if not found:
        raise DataError(root, f"no <category>/{ANNOTATIONS} (not a Co3Dv2 root)")
    return found


def load_co3d(root: str | Path, split: str | None = None, *, frames: int | None = 10, seed: int = 0,
              only: Sequence[str] | None = None, with_depth: bool = False, min_frames: int = 2) -> list[GeometryClip]:
    """One clip per sequence of every category (or those in `only`): `frames` of its frames
    drawn with `seed` (None = all), restricted to the set lists' `split` subset when given.
    Sequences with fewer than `min_frames` frames are left out. `with_depth` attaches
    `load_depth` (metres, masked). Clip ids are `<category>/<sequence_name>`, grouped by category.
    """
    root = Path(root)
    names = categories(root)
    if only:
        missing = sorted(set(only) - set(names))
        if missing:
            raise DataError(root, f"no category {missing[0]} (found: {', '.join(names)})")
        names = [n for n in names if n in set(only)]
    clips: list[GeometryClip] = []
    for category in names:
        path = root / category / ANNOTATIONS
        keep = read_set_lists(root / category, split) if split is not None else None
        by_sequence: dict[str, list[dict[str, Any]]] = {}
        for index, record in enumerate(read_frame_annotations(path)):
            frame = _frame(path, index, record, root)
            if keep is None or (frame["sequence"], frame["number"]) in keep:
                by_sequence.setdefault(frame["sequence"], []).append(frame)
        for sequence in sorted(by_sequence):
            found = sorted(by_sequence[sequence], key=lambda f: f["number"])
            if len(found) < min_frames:
                continue
            chosen = [found[i] for i in sample_clip_frames(len(found), frames, [seed, zlib.crc32(sequence.encode())])]
            clips.append(GeometryClip(
                id=f"{category}/{sequence}", group=category,
                image_paths=tuple(f["image"] for f in chosen),
                frame_ids=np.asarray([f["number"] for f in chosen], dtype=np.int64),
                intrinsics=np.stack([f["intrinsics"] for f in chosen]),
                image_sizes=tuple(f["size_wh"] for f in chosen),
                camera_to_world=np.stack([f["camera_to_world"] for f in chosen]),
                load_depth=_depth_loader(path, chosen, root) if with_depth else None,
            ))
    if not clips:
        raise DataError(root, "no Co3Dv2 sequence with at least "
                              f"{min_frames} frames" + (f" in split '{split}'" if split else ""))
    return clips


def _depth_loader(path: Path, chosen: list[dict[str, Any]], root: Path):
    for frame in chosen:
        depth = frame["depth"]
        if not isinstance(depth, dict) or not isinstance(depth.get("path"), str):
            raise DataError(path, f"{frame['sequence']} frame {frame['number']}: no depth.path")

    def load() -> np.ndarray:
        maps = []
        for frame in chosen:
            depth = frame["depth"]
            mask = depth.get("mask_path")
            maps.append(read_co3d_depth(root / depth["path"], float(depth.get("scale_adjustment", 1.0)),
                                        root / mask if isinstance(mask, str) else None))
        return np.stack(maps)

    return load
