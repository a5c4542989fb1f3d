"""Readers for ScanNet v2 per-scan metadata, in the published formats.

- `sceneXXXX_XX.txt`: `key = value` lines; `axisAlignment` is 16 row-major floats (absent on
  test scans -> identity).
- `sceneXXXX_XX_vh_clean_2.ply`: mesh; binary (little/big endian) or ASCII PLY, read with numpy.
- `sceneXXXX_XX_vh_clean_2.0.010000.segs.json`: `segIndices`, one over-segment id per vertex.
- `sceneXXXX_XX.aggregation.json`: `segGroups[{id, objectId, segments, label}]`; `objectId` is the
  0-based id that ScanRefer, ScanQA and Multi3DRefer call `object_id`.
- `scannetv2-labels.combined.tsv`: raw category -> nyu40 id.

Per-object boxes follow the ScanRefer/M3DRef-CLIP convention: mesh vertices are moved into the
axis-aligned world (`A @ [x,y,z,1]`), an object's vertices are those whose segment is in its
segGroup, and its box is the min/max of those vertices, stored as (cx,cy,cz,dx,dy,dz).
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vidllm.errors import DataError


@dataclass
class SceneObject:
    object_id: int  # aggregation `objectId`, 0-based
    label: str  # raw category as annotated
    nyu40_id: int | None
    box: np.ndarray  # [6] cx,cy,cz,dx,dy,dz in metres, axis-aligned world
    num_vertices: int


@dataclass
class Mesh:
    vertices: np.ndarray  # [V,3] float32 (scan coordinates, not axis-aligned)
    colors: np.ndarray | None  # [V,3] uint8
    num_faces: int


# ---------------------------------------------------------------------------- scene .txt
def read_scene_info(path: str | os.PathLike) -> dict[str, str]:
    """`key = value` lines of `sceneXXXX_XX.txt` as strings."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise DataError(path, f"cannot read scene info ({exc.strerror})") from None
    info: dict[str, str] = {}
    for line_no, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise DataError(path, f"line {line_no}: expected 'key = value', got {line[:60]!r}")
        info[key.strip()] = value.strip()
    return info


def axis_alignment_from_info(info: dict[str, str], path: str | os.PathLike) -> np.ndarray:
    """The 4x4 `axisAlignment` matrix, identity when the line is absent (test scans)."""
    value = info.get("axisAlignment")
    if value is None:
        return np.eye(4)
    try:
        numbers = [float(v) for v in value.split()]
    except ValueError:
        raise DataError(path, f"axisAlignment is not a list of numbers: {value[:80]!r}") from None
    if len(numbers) != 16:
        raise DataError(path, f"axisAlignment has {len(numbers)} values, expected 16 (4x4 row-major)")
    matrix = np.asarray(numbers, np.float64).reshape(4, 4)
    if not np.isfinite(matrix).all():
        raise DataError(path, "axisAlignment contains non-finite values")
    return matrix


# ---------------------------------------------------------------------------- PLY
_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}


def _ply_header(path: Path, f: Any) -> tuple[str, list[tuple[str, int, list[tuple]]]]:
    if f.readline().strip() != b"ply":
        raise DataError(path, "not a PLY file (missing 'ply' magic line)")
    fmt = ""
    elements: list[tuple[str, int, list[tuple]]] = []
    while True:
        raw = f.readline()
        if not raw:
            raise DataError(path, "PLY header has no 'end_header' line")
        parts = raw.decode("ascii", "replace").split()
        if not parts or parts[0] in ("comment", "obj_info"):
            continue
        if parts[0] == "end_header":
            break
        try:
            if parts[0] == "format":
                fmt = parts[1]
            elif parts[0] == "element":
                elements.append((parts[1], int(parts[2]), []))
            elif parts[0] == "property":
                if not elements:
                    raise ValueError
                if parts[1] == "list":
                    elements[-1][2].append(("list", parts[4], _PLY_TYPES[parts[2]], _PLY_TYPES[parts[3]]))
                else:
                    elements[-1][2].append(("scalar", parts[2], _PLY_TYPES[parts[1]]))
        except (IndexError, KeyError, ValueError):
            raise DataError(path, f"malformed PLY header line {raw.decode('ascii', 'replace').strip()!r}") from None
    if fmt not in ("ascii", "binary_little_endian", "binary_big_endian"):
        raise DataError(path, f"unsupported PLY format {fmt!r}")
    return fmt, elements


def read_ply_mesh(path: str | os.PathLike) -> Mesh:
    """Vertex positions (and colours if present) of a PLY mesh such as `_vh_clean_2.ply`."""
    path = Path(path)
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise DataError(path, f"cannot open mesh ({exc.strerror})") from None
    with f:
        fmt, elements = _ply_header(path, f)
        names = [e[0] for e in elements]
        if "vertex" not in names:
            raise DataError(path, "PLY has no 'vertex' element")
        endian = ">" if fmt == "binary_big_endian" else "<"
        vertex_table = None
        num_faces = 0
        for name, count, props in elements:
            if name == "face":
                num_faces = count
            if vertex_table is not None:
                break  # everything needed is read; faces are only counted
            if fmt == "ascii":
                table = _read_ascii_element(path, f, name, count, props)
            else:
                table = _read_binary_element(path, f, name, count, props, endian)
            if name == "vertex":
                vertex_table = table
    assert vertex_table is not None
    for axis in ("x", "y", "z"):
        if axis not in vertex_table:
            raise DataError(path, f"PLY vertex element has no '{axis}' property")
    vertices = np.stack([vertex_table[a] for a in ("x", "y", "z")], axis=1).astype(np.float32)
    colors = None
    if all(c in vertex_table for c in ("red", "green", "blue")):
        colors = np.stack([vertex_table[c] for c in ("red", "green", "blue")], axis=1).astype(np.uint8)
    return Mesh(vertices=vertices, colors=colors, num_faces=num_faces)


def _read_binary_element(
    path: Path, f: Any, name: str, count: int, props: list[tuple], endian: str
) -> dict[str, np.ndarray]:
    if all(p[0] == "scalar" for p in props):
        dtype = np.dtype([(p[1], endian + p[2]) for p in props])
        data = f.read(dtype.itemsize * count)
        if len(data) != dtype.itemsize * count:
            raise DataError(
                path, f"truncated PLY: element '{name}' needs {dtype.itemsize * count} bytes, got {len(data)}"
            )
        table = np.frombuffer(data, dtype=dtype)
        return {p[1]: table[p[1]] for p in props}
    # Elements with list properties (faces) before the vertices: walk them row by row.
    for row in range(count):
        for prop in props:
            if prop[0] == "scalar":
                size = np.dtype(prop[2]).itemsize
                if len(f.read(size)) != size:
                    raise DataError(path, f"truncated PLY in element '{name}' row {row}")
            else:
                count_dtype = np.dtype(endian + prop[2])
                head = f.read(count_dtype.itemsize)
                if len(head) != count_dtype.itemsize:
                    raise DataError(path, f"truncated PLY in element '{name}' row {row}")
                n = int(np.frombuffer(head, count_dtype)[0])
                size = n * np.dtype(prop[3]).itemsize
                if len(f.read(size)) != size:
                    raise DataError(path, f"truncated PLY in element '{name}' row {row}")
    return {}


def _read_ascii_element(
    path: Path, f: Any, name: str, count: int, props: list[tuple]
) -> dict[str, np.ndarray]:
    lines = [f.readline() for _ in range(count)]
    if count and not lines[-1]:
        raise DataError(path, f"truncated PLY: element '{name}' declares {count} rows")
    if any(p[0] == "list" for p in props):
        return {}
    try:
        table = np.loadtxt(lines, dtype=np.float64, ndmin=2) if count else np.zeros((0, len(props)))
    except ValueError as exc:
        raise DataError(path, f"malformed ASCII PLY element '{name}': {exc}") from None
    if table.shape[1] != len(props):
        raise DataError(
            path, f"ASCII PLY element '{name}' rows have {table.shape[1]} values, expected {len(props)}"
        )
    return {p[1]: table[:, i] for i, p in enumerate(props)}


# ---------------------------------------------------------------------------- segs / aggregation
def _load_json(path: Path, what: str) -> Any:
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except OSError as exc:
        raise DataError(path, f"cannot read {what} ({exc.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(path, f"malformed {what} JSON: {exc}") from None


def read_segs(path: str | os.PathLike) -> np.ndarray:
    """`segIndices` of a `*segs.json`: [V] int64, one segment id per mesh vertex."""
    path = Path(path)
    payload = _load_json(path, "segments")
    if not isinstance(payload, dict) or not isinstance(payload.get("segIndices"), list):
        raise DataError(path, "segments JSON has no 'segIndices' list")
    try:
        return np.asarray(payload["segIndices"], dtype=np.int64).reshape(-1)
    except (TypeError, ValueError):
        raise DataError(path, "'segIndices' must be a list of integers") from None


@dataclass
class SegGroup:
    object_id: int
    label: str
    segments: list[int]


def read_aggregation(path: str | os.PathLike) -> list[SegGroup]:
    """`segGroups` of a `.aggregation.json`, validated."""
    path = Path(path)
    payload = _load_json(path, "aggregation")
    if not isinstance(payload, dict) or not isinstance(payload.get("segGroups"), list):
        raise DataError(path, "aggregation JSON has no 'segGroups' list")
    groups: list[SegGroup] = []
    seen: set[int] = set()
    for i, group in enumerate(payload["segGroups"]):
        if not isinstance(group, dict):
            raise DataError(path, f"segGroups[{i}] is not an object")
        object_id = group.get("objectId", group.get("id"))
        if isinstance(object_id, bool) or not isinstance(object_id, int) or object_id < 0:
            raise DataError(path, f"segGroups[{i}] has no valid non-negative integer 'objectId'")
        if object_id in seen:
            raise DataError(path, f"segGroups[{i}] repeats objectId {object_id}")
        seen.add(object_id)
        label = group.get("label")
        if not isinstance(label, str):
            raise DataError(path, f"segGroups[{i}] (objectId {object_id}) has no string 'label'")
        segments = group.get("segments")
        if not isinstance(segments, list) or not all(
            isinstance(s, int) and not isinstance(s, bool) for s in segments
        ):
            raise DataError(path, f"segGroups[{i}] (objectId {object_id}) 'segments' must be a list of integers")
        groups.append(SegGroup(object_id=object_id, label=label, segments=segments))
    return groups


# ---------------------------------------------------------------------------- label map
def read_label_map(path: str | os.PathLike) -> dict[str, int]:
    """raw_category -> nyu40id from `scannetv2-labels.combined.tsv` (rows without an id skipped)."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter="\t")
            fields = reader.fieldnames or []
            if "raw_category" not in fields or "nyu40id" not in fields:
                raise DataError(path, f"label map needs 'raw_category' and 'nyu40id' columns, has {fields}")
            mapping: dict[str, int] = {}
            for line_no, row in enumerate(reader, start=2):
                raw, nyu = row.get("raw_category"), (row.get("nyu40id") or "").strip()
                if not raw or not nyu:
                    continue
                try:
                    mapping[raw] = int(nyu)
                except ValueError:
                    raise DataError(path, f"line {line_no}: nyu40id {nyu!r} is not an integer") from None
    except OSError as exc:
        raise DataError(path, f"cannot read label map ({exc.strerror})") from None
    return mapping


# ---------------------------------------------------------------------------- objects
def apply_transform(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """[4,4] rigid/affine transform of [N,3] points."""
    points = np.asarray(points, np.float64)
    return points @ matrix[:3, :3].T + matrix[:3, 3]


def vertex_object_ids(seg_indices: np.ndarray, groups: list[SegGroup]) -> np.ndarray:
    """[V] objectId per vertex (-1 = unannotated). A vertex whose segment is claimed by several
    groups keeps the first group's id; boxes are computed per group so they are unaffected."""
    unique_segs, inverse = np.unique(seg_indices, return_inverse=True)
    seg_object = np.full(len(unique_segs), -1, np.int64)
    for group in reversed(groups):
        seg_object[np.isin(unique_segs, group.segments)] = group.object_id
    return seg_object[inverse]


def build_objects(
    vertices_aligned: np.ndarray,
    seg_indices: np.ndarray,
    groups: list[SegGroup],
    label_map: dict[str, int] | None,
    segs_path: str | os.PathLike,
) -> tuple[list[SceneObject], list[int]]:
    """Axis-aligned boxes per segGroup. Returns (objects sorted by object_id, ids with no vertices)."""
    if len(seg_indices) != len(vertices_aligned):
        raise DataError(
            segs_path,
            f"segIndices has {len(seg_indices)} entries but the mesh has {len(vertices_aligned)} vertices",
        )
    unique_segs, inverse = np.unique(seg_indices, return_inverse=True)
    objects: list[SceneObject] = []
    empty: list[int] = []
    for group in sorted(groups, key=lambda g: g.object_id):
        mask = np.isin(unique_segs, group.segments)[inverse]
        count = int(mask.sum())
        if count == 0:
            empty.append(group.object_id)
            continue
        pts = vertices_aligned[mask]
        lo, hi = pts.min(axis=0), pts.max(axis=0)
        objects.append(
            SceneObject(
                object_id=group.object_id,
                label=group.label,
                nyu40_id=None if label_map is None else label_map.get(group.label),
                box=np.concatenate([(lo + hi) / 2, hi - lo]),
                num_vertices=count,
            )
        )
    return objects, empty
