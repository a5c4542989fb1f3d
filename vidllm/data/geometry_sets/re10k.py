"""RealEstate10K as published: `<root>/<split>/<sequence_id>.txt` camera files, plus the frames
extracted from each sequence's video.

A camera file's first line is the video's URL; every further line is one frame:
`timestamp_us fx fy cx cy k1 k2 p00 p01 ... p23` — intrinsics normalised by the image width
(fx, cx) and height (fy, cy), distortion k1 k2 (zero in the release), and the 3×4 world-to-camera
matrix row-major, OpenCV axes (x right, y down, z forward).

Frames are accepted as `<root>/frames/<split>/<sequence_id>/<timestamp_us>.{png,jpg,jpeg}` or
`<root>/frames/<sequence_id>/<timestamp_us>.{png,jpg,jpeg}` (the first found). A timestamp
without an image is left out (downloads miss frames); a sequence without a frame folder is
skipped with a warning, as many release videos are no longer online.

Pixel intrinsics: `fx_px = fx · W`, `cx_px = cx · W − 0.5` (normalised coordinates count from the
image edge; pixel centres are integers here), the same for y with H.
"""

from __future__ import annotations

import logging
import zlib
from pathlib import Path

import numpy as np

from vidllm.data.geometry_sets.clips import GeometryClip, image_size, sample_clip_frames
from vidllm.errors import DataError

log = logging.getLogger(__name__)

FRAMES_DIR = "frames"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
FIELDS = 19  # timestamp, 4 intrinsics, 2 distortion, 12 pose values


def read_camera_file(path: Path) -> tuple[str, np.ndarray, np.ndarray, np.ndarray]:
    """(URL, timestamps int64 `[N]`, normalised intrinsics `[N,4]` fx fy cx cy, world-to-camera `[N,4,4]`)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(path, "camera file not found") from None
    except UnicodeDecodeError as exc:
        raise DataError(path, f"not UTF-8 text: {exc}") from None
    if not lines or not lines[0].strip():
        raise DataError(path, "empty camera file (line 1 must be the video URL)")
    url = lines[0].strip()
    if len(url.split()) != 1 or url.replace(".", "").isdigit():
        raise DataError(path, f"line 1 must be the video URL, got {url[:60]!r}")
    stamps, intrinsics, poses = [], [], []
    for line_no, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != FIELDS:
            raise DataError(path, f"line {line_no}: expected {FIELDS} values (timestamp fx fy cx cy k1 k2 and a 3x4 "
                                  f"pose), got {len(parts)}")
        try:
            stamp = int(parts[0])
            values = np.asarray([float(v) for v in parts[1:]], dtype=np.float64)
        except ValueError:
            raise DataError(path, f"line {line_no}: not numbers") from None
        if not np.isfinite(values).all() or (values[:2] <= 0).any():
            raise DataError(path, f"line {line_no}: non-finite values or non-positive focal length")
        world_to_camera = np.eye(4)
        world_to_camera[:3] = values[6:].reshape(3, 4)
        if abs(np.linalg.det(world_to_camera[:3, :3]) - 1.0) > 1e-3:
            raise DataError(path, f"line {line_no}: the pose's rotation is not a rotation (det "
                                  f"{np.linalg.det(world_to_camera[:3, :3]):.4f})")
        stamps.append(stamp)
        intrinsics.append(values[:4])
        poses.append(world_to_camera)
    if not stamps:
        raise DataError(path, "no frame lines after the URL")
    return url, np.asarray(stamps, dtype=np.int64), np.stack(intrinsics), np.stack(poses)


def pixel_intrinsics(normalised: np.ndarray, width: int, height: int) -> np.ndarray:
    """fx fy cx cy normalised `[4]` → `[3,3]` pixels, pixel centres at integers."""
    fx, fy, cx, cy = np.asarray(normalised, dtype=np.float64)
    return np.array([[fx * width, 0.0, cx * width - 0.5], [0.0, fy * height, cy * height - 0.5], [0.0, 0.0, 1.0]])


def _frame_folder(root: Path, split: str, sequence: str) -> Path | None:
    for folder in (root / FRAMES_DIR / split / sequence, root / FRAMES_DIR / sequence):
        if folder.is_dir():
            return folder
    return None


def load_re10k(root: str | Path, split: str = "test", *, frames: int | None = 10, seed: int = 0,
               min_frames: int = 2) -> list[GeometryClip]:
    """One clip per sequence of `split` with a frame folder: `frames` of the frames that have an
    image, drawn with `seed` (None = all). Clip ids are the sequence ids."""
    root = Path(root)
    split_dir = root / split
    if not split_dir.is_dir():
        raise DataError(split_dir, f"RealEstate10K split folder not found (expected <root>/{split}/<sequence_id>.txt)")
    files = sorted(split_dir.glob("*.txt"))
    if not files:
        raise DataError(split_dir, "no <sequence_id>.txt camera files")
    clips: list[GeometryClip] = []
    skipped = []
    for path in files:
        sequence = path.stem
        _, stamps, normalised, world_to_camera = read_camera_file(path)
        folder = _frame_folder(root, split, sequence)
        if folder is None:
            skipped.append(sequence)
            continue
        images = {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
        present = [i for i, stamp in enumerate(stamps) if str(stamp) in images]
        if len(present) < min_frames:
            skipped.append(sequence)
            continue
        chosen = [present[i] for i in sample_clip_frames(len(present), frames, [seed, zlib.crc32(sequence.encode())])]
        paths = tuple(images[str(stamps[i])] for i in chosen)
        sizes = tuple(image_size(p) for p in paths)
        clips.append(GeometryClip(
            id=sequence, group="", image_paths=paths, frame_ids=stamps[chosen].copy(),
            intrinsics=np.stack([pixel_intrinsics(normalised[i], *wh) for i, wh in zip(chosen, sizes, strict=True)]),
            image_sizes=sizes, camera_to_world=np.linalg.inv(world_to_camera[chosen]),
        ))
    if skipped:
        log.warning("re10k: %d of %d sequences have no frame folder or fewer than %d frames with images, skipped "
                    "(first: %s)", len(skipped), len(files), min_frames, skipped[0])
    if not clips:
        raise DataError(root / FRAMES_DIR, f"no sequence of split '{split}' has at least {min_frames} extracted frames "
                                           f"(expected {FRAMES_DIR}/<sequence_id>/<timestamp_us>.png)")
    return clips
