"""Tiny Co3Dv2, RealEstate10K and NYUv2 folders in their published layouts, from analytic scenes
with known cameras and depth, so the readers' conversions can be checked against the truth.

Each writer returns what it wrote in OpenCV convention (camera-to-world, pixel intrinsics,
depth in metres), the readers' target convention.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from vidllm.data.synthetic.room_layout import look_at

PT3D_FROM_OPENCV = np.diag([-1.0, -1.0, 1.0])


def orbit(count: int, radius: float = 3.0, height: float = 1.0, start: float = 0.0, step: float = 0.4) -> np.ndarray:
    """`count` cameras `[count,4,4]` on a circle around the origin, looking at it."""
    return np.stack([look_at(np.array([radius * np.cos(a), radius * np.sin(a), height]), np.zeros(3))
                     for a in start + step * np.arange(count)])


def pattern(width: int, height: int, seed: int) -> np.ndarray:
    """A smooth colour image uint8 `[H,W,3]`, different per seed."""
    v, u = np.mgrid[0:height, 0:width]
    phase = seed * 0.7
    image = np.stack([np.sin(u / 4 + phase), np.cos(v / 3 - phase), np.sin((u + v) / 5 + 2 * phase)], axis=-1)
    return ((image + 1) * 127.5).astype(np.uint8)


def _save_rgb(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


def _save_uint16(path: Path, values: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(values, dtype=np.uint16)).save(path)


def opencv_to_pytorch3d(camera_to_world: np.ndarray, k: np.ndarray, width: int, height: int
                        ) -> dict[str, object]:
    """The Co3D viewpoint (R, T, NDC focal length and principal point, ndc_isotropic) of an OpenCV camera."""
    world_to_camera = np.linalg.inv(camera_to_world)
    r_cv, t_cv = world_to_camera[:3, :3], world_to_camera[:3, 3]
    # X_pt3d = D X_cv = D R_cv X + D t_cv; row-vector form X_pt3d = X @ (D R_cv)ᵀ + D t_cv.
    R = (PT3D_FROM_OPENCV @ r_cv).T
    T = PT3D_FROM_OPENCV @ t_cv
    s = min(width, height) / 2.0
    focal = [k[0, 0] / s, k[1, 1] / s]
    principal = [(width / 2.0 - 0.5 - k[0, 2]) / s, (height / 2.0 - 0.5 - k[1, 2]) / s]
    return {"R": R.tolist(), "T": T.tolist(), "focal_length": focal, "principal_point": principal,
            "intrinsics_format": "ndc_isotropic"}


@dataclass
class WrittenSet:
    root: Path
    camera_to_world: dict[str, np.ndarray] = field(default_factory=dict)  # clip id -> [N,4,4] OpenCV
    intrinsics: dict[str, np.ndarray] = field(default_factory=dict)  # clip id -> [3,3] pixels
    frame_ids: dict[str, list[int]] = field(default_factory=dict)
    depth: dict[str, np.ndarray] = field(default_factory=dict)  # clip id -> [N,H,W] metres
    size: tuple[int, int] = (0, 0)  # (w, h)
    raw: dict[str, object] = field(default_factory=dict)  # per-frame records as written


def write_co3d(root: Path, category: str = "apple", sequences: int = 2, frames: int = 4, width: int = 40,
               height: int = 30) -> WrittenSet:
    """`<root>/<category>/frame_annotations.jgz`, `set_lists/set_lists_fewview_dev_0.json` and
    `<sequence>/images|depths|depth_masks/frameXXXXXX.*`. Sequence 0's first frame is listed under
    "train", every other frame under "test"."""
    written = WrittenSet(root=root, size=(width, height))
    k = np.array([[36.0, 0.0, width / 2 - 0.5 + 1.5], [0.0, 34.0, height / 2 - 0.5 - 1.0], [0.0, 0.0, 1.0]])
    records, train, test = [], [], []
    for s in range(sequences):
        sequence = f"{100 + s}_{2000 + s}_{30000 + s}"
        poses = orbit(frames, start=1.1 * s)
        clip_id = f"{category}/{sequence}"
        written.camera_to_world[clip_id] = poses
        written.intrinsics[clip_id] = k
        written.frame_ids[clip_id] = [2 * f + 1 for f in range(frames)]
        depths = []
        for f, number in enumerate(written.frame_ids[clip_id]):
            base = f"{category}/{sequence}"
            image_path = f"{base}/images/frame{number:06d}.jpg"
            depth_path = f"{base}/depths/frame{number:06d}.jpg.geometric.png"
            mask_path = f"{base}/depth_masks/frame{number:06d}.png"
            _save_rgb(root / image_path, pattern(width, height, 10 * s + f))
            v, u = np.mgrid[0:height, 0:width]
            depth = (2.0 + 0.02 * u + 0.01 * v + 0.1 * f).astype(np.float32)
            scale = 0.5  # the stored values are depth / scale_adjustment, as float16 bits
            stored = (depth / scale).astype(np.float16)
            mask = np.ones((height, width), dtype=np.uint8) * 255
            mask[:2] = 0  # the top rows have no valid depth
            _save_uint16(root / depth_path, stored.view(np.uint16))
            (root / mask_path).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask).save(root / mask_path)
            depths.append(np.where(mask > 0, stored.astype(np.float32) * scale, 0.0))
            records.append({
                "sequence_name": sequence, "frame_number": number, "frame_timestamp": f * 0.1,
                "image": {"path": image_path, "size": [height, width]},
                "depth": {"path": depth_path, "scale_adjustment": scale, "mask_path": mask_path},
                "mask": {"path": f"{base}/masks/frame{number:06d}.png", "mass": 100.0},
                "viewpoint": opencv_to_pytorch3d(poses[f], k, width, height),
                "meta": {"frame_type": "test_unseen"},
            })
            (train if (s == 0 and f == 0) else test).append([sequence, number, image_path])
        written.depth[clip_id] = np.stack(depths)
    folder = root / category
    folder.mkdir(parents=True, exist_ok=True)
    with gzip.open(folder / "frame_annotations.jgz", "wt", encoding="utf-8") as f:
        json.dump(records, f)
    (folder / "set_lists").mkdir(exist_ok=True)
    (folder / "set_lists" / "set_lists_fewview_dev_0.json").write_text(json.dumps({"train": train, "val": [],
                                                                                   "test": test}))
    written.raw["records"] = records
    return written


def write_re10k(root: Path, split: str = "test", sequences: int = 2, frames: int = 4, width: int = 48,
                height: int = 27) -> WrittenSet:
    """`<root>/<split>/<sequence_id>.txt` and `<root>/frames/<sequence_id>/<timestamp_us>.png`."""
    written = WrittenSet(root=root, size=(width, height))
    k = np.array([[40.0, 0.0, 23.0], [0.0, 41.0, 13.5], [0.0, 0.0, 1.0]])
    for s in range(sequences):
        sequence = f"{s:x}a1b2c3d4e5f6{s}"
        poses = orbit(frames, radius=2.0 + s, start=0.3 * s, step=0.2)
        stamps = [1_000_000 * s + 33_366 * f for f in range(frames)]
        normalised = [k[0, 0] / width, k[1, 1] / height, (k[0, 2] + 0.5) / width, (k[1, 2] + 0.5) / height]
        lines = [f"https://www.youtube.com/watch?v=seq{s}"]
        for f, stamp in enumerate(stamps):
            w2c = np.linalg.inv(poses[f])[:3]
            lines.append(" ".join([str(stamp), *(f"{v:.10f}" for v in normalised), "0", "0",
                                   *(f"{v:.12f}" for v in w2c.reshape(-1))]))
            _save_rgb(root / "frames" / sequence / f"{stamp}.png", pattern(width, height, 5 * s + f))
        (root / split).mkdir(parents=True, exist_ok=True)
        (root / split / f"{sequence}.txt").write_text("\n".join(lines) + "\n")
        written.camera_to_world[sequence] = poses
        written.intrinsics[sequence] = k
        written.frame_ids[sequence] = stamps
    return written


def write_nyuv2(root: Path, images: int = 3, width: int = 64, height: int = 48) -> WrittenSet:
    """`<root>/rgb/<id>.png`, `<root>/depth/<id>.png` (mm; the last image as `.npy` metres) and `test.txt`."""
    written = WrittenSet(root=root, size=(width, height))
    for i in range(images):
        stem = f"{i:05d}"
        _save_rgb(root / "rgb" / f"{stem}.png", pattern(width, height, i))
        v, u = np.mgrid[0:height, 0:width]
        depth = (1.0 + 0.05 * u + 0.02 * v + 0.5 * i).astype(np.float32)  # metres, up to ~5.6 m
        depth_mm = np.round(depth * 1000).astype(np.uint16)
        depth_mm[0, 0] = 0  # one pixel without measurement
        if i == images - 1:
            (root / "depth").mkdir(parents=True, exist_ok=True)
            np.save(root / "depth" / f"{stem}.npy", depth_mm.astype(np.float32) / 1000)
        else:
            _save_uint16(root / "depth" / f"{stem}.png", depth_mm)
        written.depth[stem] = depth_mm.astype(np.float32)[None] / 1000
    (root / "test.txt").write_text("".join(f"{i:05d}\n" for i in range(1, images)))
    return written
