"""Writers for the ScanNet v2 per-scan metadata files, in their published formats.

- `sceneXXXX_XX.txt`: `key = value` lines, `axisAlignment` as 16 row-major floats.
- `sceneXXXX_XX_vh_clean_2.ply`: binary little-endian mesh, vertex float x,y,z + uchar
  red,green,blue,alpha; face list uchar int vertex_indices.
- `sceneXXXX_XX_vh_clean_2.0.010000.segs.json`: `segIndices`, one segment id per vertex.
- `sceneXXXX_XX.aggregation.json`: `segGroups[{id, objectId, segments, label}]`.
- `scannetv2-labels.combined.tsv`: raw category -> nyu40 mapping.

Every writer is atomic (vidllm.artifacts.files).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vidllm.artifacts.files import atomic_write_bytes, atomic_write_json, atomic_write_text


def write_scene_info(
    path: str | Path,
    *,
    axis_alignment: np.ndarray | None,
    intrinsic_color: np.ndarray,
    intrinsic_depth: np.ndarray,
    color_size: tuple[int, int],
    depth_size: tuple[int, int],
    num_frames: int,
    scene_type: str = "Living room / Lounge",
) -> None:
    """`sceneXXXX_XX.txt`. `axis_alignment=None` omits the line, as in ScanNet test scans."""
    lines = []
    if axis_alignment is not None:
        values = " ".join(repr(float(v)) for v in np.asarray(axis_alignment, dtype=np.float64).reshape(16))
        lines.append(f"axisAlignment = {values}")
    lines += [
        f"colorHeight = {color_size[1]}",
        f"colorToDepthExtrinsics = {' '.join(['1', '0', '0', '0', '0', '1', '0', '0', '0', '0', '1', '0', '0', '0', '0', '1'])}",
        f"colorWidth = {color_size[0]}",
        f"depthHeight = {depth_size[1]}",
        f"depthWidth = {depth_size[0]}",
        f"fx_color = {float(intrinsic_color[0, 0])!r}",
        f"fx_depth = {float(intrinsic_depth[0, 0])!r}",
        f"fy_color = {float(intrinsic_color[1, 1])!r}",
        f"fy_depth = {float(intrinsic_depth[1, 1])!r}",
        f"mx_color = {float(intrinsic_color[0, 2])!r}",
        f"mx_depth = {float(intrinsic_depth[0, 2])!r}",
        f"my_color = {float(intrinsic_color[1, 2])!r}",
        f"my_depth = {float(intrinsic_depth[1, 2])!r}",
        f"numColorFrames = {num_frames}",
        f"numDepthFrames = {num_frames}",
        "numIMUMeasurements = 0",
        f"sceneType = {scene_type}",
    ]
    atomic_write_text(path, "\n".join(lines) + "\n")


def write_ply_mesh(path: str | Path, vertices: np.ndarray, colors: np.ndarray, faces: np.ndarray) -> None:
    """Binary little-endian PLY exactly as ScanNet's `_vh_clean_2.ply`.

    Args:
        vertices: [V,3] float positions (stored float32).
        colors: [V,3] or [V,4] uint8 RGB(A); alpha defaults to 255.
        faces: [F,3] int triangle vertex indices.
    """
    vertices = np.asarray(vertices, dtype=np.float32)
    colors = np.asarray(colors, dtype=np.uint8)
    faces = np.asarray(faces, dtype=np.int32)
    if colors.shape[1] == 3:
        colors = np.concatenate([colors, np.full((len(colors), 1), 255, dtype=np.uint8)], axis=1)
    header = (
        "ply\nformat binary_little_endian 1.0\n"
        f"element vertex {len(vertices)}\n"
        "property float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\nproperty uchar alpha\n"
        f"element face {len(faces)}\n"
        "property list uchar int vertex_indices\nend_header\n"
    )
    vertex_dtype = np.dtype([("xyz", "<f4", 3), ("rgba", "u1", 4)])
    vertex_rows = np.empty(len(vertices), dtype=vertex_dtype)
    vertex_rows["xyz"] = vertices
    vertex_rows["rgba"] = colors
    face_dtype = np.dtype([("n", "u1"), ("idx", "<i4", 3)])
    face_rows = np.empty(len(faces), dtype=face_dtype)
    face_rows["n"] = 3
    face_rows["idx"] = faces
    atomic_write_bytes(path, header.encode("ascii") + vertex_rows.tobytes() + face_rows.tobytes())


def write_segs(path: str | Path, scene_id: str, seg_indices: np.ndarray) -> None:
    """`_vh_clean_2.0.010000.segs.json` (the Felzenszwalb parameters ScanNet records)."""
    payload = {
        "params": {"kThresh": "0.0001", "segMinVerts": "20", "minPoints": "750",
                   "maxPoints": "5000", "thinThresh": "0.05", "flatThresh": "0.001",
                   "minLength": "0.02", "maxLength": "1"},
        "sceneId": scene_id,
        "segIndices": [int(s) for s in np.asarray(seg_indices).ravel()],
    }
    atomic_write_json(path, payload)


def write_aggregation(path: str | Path, scene_id: str, groups: Sequence[tuple[int, str, Sequence[int]]]) -> None:
    """`.aggregation.json` from `(object_id, label, segment ids)` triples (object_id is 0-based)."""
    payload = {
        "sceneId": f"scannet.{scene_id}",
        "appId": "Aggregator.v2",
        "segGroups": [
            {"id": int(oid), "objectId": int(oid), "segments": [int(s) for s in segs], "label": label}
            for oid, label, segs in groups
        ],
        "segmentsFile": f"scannet.{scene_id}_vh_clean_2.0.010000.segs.json",
    }
    atomic_write_json(path, payload)


LABEL_MAP_COLUMNS = (
    "id", "raw_category", "category", "count", "nyu40id", "eigen13id", "nyu40class",
    "eigen13class", "ModelNet40", "ModelNet10", "ShapeNetCore55", "synsetoffset",
    "wnsynsetid", "wnsynsetkey", "mpcat40index", "mpcat40",
)


def write_label_map(path: str | Path, rows: Sequence[dict[str, Any]]) -> None:
    """`scannetv2-labels.combined.tsv`; each row needs raw_category, category, nyu40id, nyu40class."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=LABEL_MAP_COLUMNS, delimiter="\t", lineterminator="\n")
    writer.writeheader()
    for index, row in enumerate(rows, start=1):
        full = {key: "" for key in LABEL_MAP_COLUMNS}
        full.update({"id": index, "count": 1, **row})
        writer.writerow(full)
    atomic_write_text(path, buffer.getvalue())
