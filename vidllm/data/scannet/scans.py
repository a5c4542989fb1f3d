"""One ScanNet scene, whatever layout it arrives in.

`load_scene(path)` accepts
- a raw scan folder `sceneXXXX_XX/` (`.sens`, `sceneXXXX_XX.txt`, `_vh_clean_2.ply`,
  `_vh_clean_2.0.010000.segs.json`, `.aggregation.json`),
- a `.sens` file (metadata files next to it are used when present),
- an official export folder (`color/ depth/ pose/ intrinsic/`),
- a `posed_images/<scene>/` folder.

Frames whose pose is invalid — not finite (ScanNet stores lost tracking as all `-inf`), all
zero, or singular (|det| of the rotation block < `MIN_POSE_DET`) — are reported in
`dropped_frame_ids` and never returned as valid frames (`valid_pose_mask`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from vidllm.data.scannet.exported import (
    is_official_export,
    is_posed_images,
    open_official_export,
    open_posed_images,
)
from vidllm.data.scannet.meta import (
    SceneObject,
    apply_transform,
    axis_alignment_from_info,
    build_objects,
    read_aggregation,
    read_label_map,
    read_ply_mesh,
    read_scene_info,
    read_segs,
    vertex_object_ids,
)
from vidllm.data.scannet.sens import SensReader
from vidllm.errors import DataError

__all__ = ["ScanNetScene", "SceneObject", "load_scene", "scene_files"]

log = logging.getLogger(__name__)

MIN_POSE_DET = 1e-6  # |det| of a pose's 3x3 block below this = singular (not a camera pose)


def valid_pose_mask(poses: np.ndarray) -> np.ndarray:
    """[N] bool for camera-to-world poses `[N, 4, 4]`: finite, not all zero, and with an
    invertible rotation block (|det of the 3x3| >= MIN_POSE_DET)."""
    poses = np.asarray(poses, np.float64).reshape(-1, 4, 4)
    finite = np.isfinite(poses).reshape(len(poses), -1).all(axis=1)
    nonzero = (poses != 0).reshape(len(poses), -1).any(axis=1)
    det = np.abs(np.linalg.det(np.where(finite[:, None, None], poses, 0.0)[:, :3, :3]))
    return finite & nonzero & (det >= MIN_POSE_DET)


class FrameSource(Protocol):
    frame_ids: np.ndarray  # [N] ids of all frames in the source
    camera_to_world: np.ndarray  # [N,4,4]
    intrinsic_color: np.ndarray
    intrinsic_depth: np.ndarray
    color_size: tuple[int, int]
    depth_size: tuple[int, int]
    depth_shift: float

    def read_color(self, frame_id: int) -> np.ndarray: ...
    def read_depth_raw(self, frame_id: int) -> np.ndarray: ...
    def close(self) -> None: ...


class SensFrameSource:
    """`.sens` frames behind the same interface as the exported layouts."""

    layout = "sens"

    def __init__(self, path: Path):
        self.reader = SensReader(path)
        r = self.reader
        self.root = path
        self.frame_ids = np.arange(r.num_frames, dtype=np.int64)
        self.camera_to_world = r.camera_to_world
        self.intrinsic_color = r.intrinsic_color
        self.intrinsic_depth = r.intrinsic_depth
        self.color_size = (r.color_width, r.color_height)
        self.depth_size = (r.depth_width, r.depth_height)
        self.depth_shift = r.depth_shift

    def read_color(self, frame_id: int) -> np.ndarray:
        return self.reader.read_color(frame_id)

    def read_depth_raw(self, frame_id: int) -> np.ndarray:
        return self.reader.read_depth(frame_id)

    def close(self) -> None:
        self.reader.close()


@dataclass
class ScanNetScene:
    scene_id: str
    num_frames: int  # all frames in the source, including dropped ones
    valid_frame_ids: np.ndarray  # [V] int64, frames with valid poses (`valid_pose_mask`)
    dropped_frame_ids: list[int]
    camera_to_world: np.ndarray  # [V,4,4] float64, scan world (apply axis_alignment for boxes' frame)
    intrinsic_color: np.ndarray  # [4,4]
    intrinsic_depth: np.ndarray  # [4,4]
    color_size: tuple[int, int]  # (w, h)
    depth_size: tuple[int, int]  # (w, h)
    depth_shift: float
    axis_alignment: np.ndarray  # [4,4], identity when absent
    objects: list[SceneObject]
    layout: str = "sens"  # "sens", "official export" or "posed_images"
    source_path: Path | None = None
    # Mesh data when the annotation files are present (axis-aligned world).
    mesh_vertices: np.ndarray | None = field(default=None, repr=False)  # [M,3] float32
    vertex_object_ids: np.ndarray | None = field(default=None, repr=False)  # [M] int64, -1 = none
    empty_object_ids: list[int] = field(default_factory=list)  # segGroups with no vertices
    warnings: list[str] = field(default_factory=list)
    _source: FrameSource | None = field(default=None, repr=False)

    def _check_frame(self, frame_id: int) -> int:
        frame_id = int(frame_id)
        if frame_id in self._dropped_set:
            raise DataError(
                self.source_path or self.scene_id,
                f"frame {frame_id} has an invalid camera pose (non-finite, all-zero or singular) and was dropped",
            )
        if frame_id not in self._valid_set:
            raise DataError(self.source_path or self.scene_id, f"no frame {frame_id} in this scene")
        return frame_id

    def __post_init__(self) -> None:
        self._valid_set = set(int(i) for i in self.valid_frame_ids)
        self._dropped_set = set(self.dropped_frame_ids)

    def pose(self, frame_id: int) -> np.ndarray:
        """Camera-to-world [4,4] of a valid frame."""
        index = int(np.searchsorted(self.valid_frame_ids, self._check_frame(frame_id)))
        return self.camera_to_world[index]

    def read_color(self, frame_id: int) -> np.ndarray:
        """uint8 [H,W,3] colour of a valid frame."""
        assert self._source is not None, "scene is closed"
        return self._source.read_color(self._check_frame(frame_id))

    def read_depth(self, frame_id: int) -> np.ndarray:
        """float32 [h,w] depth in metres of a valid frame (0 = invalid)."""
        assert self._source is not None, "scene is closed"
        raw = self._source.read_depth_raw(self._check_frame(frame_id))
        return raw.astype(np.float32) * np.float32(1.0 / self.depth_shift)

    def object_mask(self, object_id: int) -> np.ndarray:
        """Boolean [M] instance mask over the mesh vertices."""
        if self.vertex_object_ids is None:
            raise DataError(self.source_path or self.scene_id, "scene has no instance annotations")
        return self.vertex_object_ids == object_id

    def close(self) -> None:
        if self._source is not None:
            self._source.close()
            self._source = None

    def __enter__(self) -> ScanNetScene:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def scene_files(folder: Path, scene_id: str) -> dict[str, Path | None]:
    """Paths of the metadata files for `scene_id` in `folder` (None where absent)."""
    candidates = {
        "info": [f"{scene_id}.txt"],
        "mesh": [f"{scene_id}_vh_clean_2.ply"],
        "segs": [f"{scene_id}_vh_clean_2.0.010000.segs.json"],
        "aggregation": [f"{scene_id}.aggregation.json", f"{scene_id}_vh_clean.aggregation.json"],
    }
    out: dict[str, Path | None] = {}
    for key, names in candidates.items():
        out[key] = next((folder / n for n in names if (folder / n).is_file()), None)
    return out


def _open_source(path: Path, progress: bool) -> tuple[FrameSource, str, Path]:
    """(frame source, scene id, folder holding the metadata files)."""
    if path.is_file():
        if path.suffix != ".sens":
            raise DataError(path, "not a ScanNet scene: expected a .sens file or a scene folder")
        return SensFrameSource(path), path.stem, path.parent
    if not path.is_dir():
        raise DataError(path, "no such file or folder")
    sens_files = sorted(path.glob("*.sens"))
    if sens_files:
        preferred = path / f"{path.name}.sens"
        sens = preferred if preferred in sens_files else sens_files[0]
        if len(sens_files) > 1 and preferred not in sens_files:
            raise DataError(path, f"several .sens files and none named {preferred.name}")
        return SensFrameSource(sens), sens.stem, path
    if is_official_export(path):
        return open_official_export(path, progress=progress), path.name, path
    if is_posed_images(path):
        return open_posed_images(path, progress=progress), path.name, path
    raise DataError(
        path,
        "not a ScanNet scene: no .sens file, no color/ depth/ pose/ folders, "
        "and no posed_images files (intrinsic.txt + NNNNN.jpg)",
    )


def load_scene(
    path: str | os.PathLike,
    label_map: str | os.PathLike | None = None,
    *,
    progress: bool = False,
) -> ScanNetScene:
    """Open a ScanNet scene (see module docstring for accepted layouts).

    label_map: optional `scannetv2-labels.combined.tsv` to fill `SceneObject.nyu40_id`.
    """
    path = Path(path)
    mapping = read_label_map(label_map) if label_map is not None else None
    source, scene_id, meta_dir = _open_source(path, progress)
    try:
        poses = np.asarray(source.camera_to_world, np.float64)
        finite = valid_pose_mask(poses)
        valid_ids = source.frame_ids[finite]
        dropped = [int(i) for i in source.frame_ids[~finite]]
        if dropped:
            log.warning("%s: dropped %d frame(s) with invalid (non-finite, all-zero or singular) poses",
                        path, len(dropped))

        files = scene_files(meta_dir, scene_id)
        axis_alignment = np.eye(4)
        if files["info"] is not None:
            axis_alignment = axis_alignment_from_info(read_scene_info(files["info"]), files["info"])

        objects: list = []
        vertices_aligned = vertex_ids = None
        empty: list[int] = []
        warnings: list[str] = []
        annotation_keys = ("mesh", "segs", "aggregation")
        present = [k for k in annotation_keys if files[k] is not None]
        if len(present) == len(annotation_keys):
            mesh = read_ply_mesh(files["mesh"])
            vertices_aligned = apply_transform(axis_alignment, mesh.vertices).astype(np.float32)
            segs = read_segs(files["segs"])
            groups = read_aggregation(files["aggregation"])
            objects, empty = build_objects(vertices_aligned, segs, groups, mapping, files["segs"])
            vertex_ids = vertex_object_ids(segs, groups)
            if empty:
                warnings.append(f"segGroups with no mesh vertices (skipped): objectIds {empty}")
        elif present:
            missing = [k for k in annotation_keys if files[k] is None]
            warnings.append(f"instance annotations incomplete: missing {', '.join(missing)}; no objects")
        else:
            warnings.append("no instance annotations (no segs, aggregation or mesh file): no objects, so the "
                            "grounding and captioning benchmarks have nothing to score here")

        return ScanNetScene(
            scene_id=scene_id,
            num_frames=len(source.frame_ids),
            valid_frame_ids=valid_ids,
            dropped_frame_ids=dropped,
            camera_to_world=poses[finite],
            intrinsic_color=np.asarray(source.intrinsic_color, np.float64),
            intrinsic_depth=np.asarray(source.intrinsic_depth, np.float64),
            color_size=tuple(int(v) for v in source.color_size),
            depth_size=tuple(int(v) for v in source.depth_size),
            depth_shift=float(source.depth_shift),
            axis_alignment=axis_alignment,
            objects=objects,
            layout=getattr(source, "layout", "sens"),
            source_path=path,
            mesh_vertices=vertices_aligned,
            vertex_object_ids=vertex_ids,
            empty_object_ids=empty,
            warnings=warnings,
            _source=source,
        )
    except BaseException:
        source.close()
        raise
