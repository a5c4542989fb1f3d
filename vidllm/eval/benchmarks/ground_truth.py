"""Ground truth several benchmarks score against: object boxes, detector proposals, reference answers."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vidllm.errors import DataError

if TYPE_CHECKING:
    from vidllm.data.scannet.annotations import Instruction

SceneBoxes = dict[str, dict[int, np.ndarray]]  # scene_id -> object_id -> [6]


def load_boxes_json(path: str | Path) -> SceneBoxes:
    """`{scene_id: {object_id: [cx,cy,cz,dx,dy,dz]}}` → SceneBoxes, validated."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(path, "boxes file not found") from None
    except json.JSONDecodeError as exc:
        raise DataError(path, f"not valid JSON: {exc.msg}") from None
    if not isinstance(data, dict):
        raise DataError(path, "must hold {scene_id: {object_id: [cx,cy,cz,dx,dy,dz]}}")
    out: SceneBoxes = {}
    for scene_id, objects in data.items():
        if not isinstance(objects, dict):
            raise DataError(path, f"scene {scene_id}: must map object ids to boxes")
        out[scene_id] = {}
        for object_id, box in objects.items():
            try:
                arr = np.asarray(box, dtype=np.float64)
                key = int(object_id)
            except (TypeError, ValueError):
                raise DataError(path, f"scene {scene_id}, object {object_id}: not an integer id with a numeric box") from None
            if arr.shape != (6,) or not np.isfinite(arr).all():
                raise DataError(path, f"scene {scene_id}, object {object_id}: box must be 6 finite numbers, got {box!r}")
            out[scene_id][key] = arr
    return out


def load_boxes_from_scans(scans_dir: str | Path, scene_ids: Sequence[str]) -> SceneBoxes:
    """GT object boxes (axis-aligned world) of each scene folder `scans_dir/<scene_id>`."""
    from vidllm.data.scannet.scans import load_scene

    out: SceneBoxes = {}
    for scene_id in sorted(set(scene_ids)):
        folder = Path(scans_dir) / scene_id
        if not folder.exists():
            raise DataError(folder, "scene folder not found (needed for its ground-truth boxes)")
        scene = load_scene(folder)
        try:
            out[scene_id] = {obj.object_id: np.asarray(obj.box, dtype=np.float64) for obj in scene.objects}
        finally:
            scene.close()
    return out


def load_proposals(proposals_dir: str | Path, scene_ids: Sequence[str]) -> dict[str, np.ndarray]:
    """Detector proposals per scene: `<dir>/<scene_id>.json` (`[[6], ...]` or `{"boxes": [...]}`) or `.npy` `[K,6]`."""
    root = Path(proposals_dir)
    out: dict[str, np.ndarray] = {}
    for scene_id in sorted(set(scene_ids)):
        json_path, npy_path = root / f"{scene_id}.json", root / f"{scene_id}.npy"
        if json_path.is_file():
            try:
                data = json.loads(json_path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise DataError(json_path, f"not valid JSON: {exc.msg}") from None
            boxes, path = (data.get("boxes") if isinstance(data, dict) else data), json_path
        elif npy_path.is_file():
            boxes, path = np.load(npy_path, allow_pickle=False), npy_path
        else:
            raise DataError(root, f"no proposals for scene {scene_id} ({scene_id}.json or {scene_id}.npy)")
        try:
            arr = np.asarray(boxes, dtype=np.float64)
        except (TypeError, ValueError):
            raise DataError(path, "proposals must be a list of [cx,cy,cz,dx,dy,dz] boxes") from None
        if arr.size and (arr.ndim != 2 or arr.shape[1] != 6):
            raise DataError(path, f"proposals must have shape [K,6], got {list(arr.shape)}")
        if not np.isfinite(arr).all():
            raise DataError(path, "proposals hold non-finite values")
        out[scene_id] = arr.reshape(-1, 6)
    return out


def target_boxes(boxes: SceneBoxes, inst: Instruction, source: str) -> np.ndarray:
    """The instruction's target boxes `[T, 6]`; DataError naming `source` when the scene lacks one."""
    from vidllm.eval.grounding import as_boxes

    scene = boxes.get(inst.scene_id)
    if scene is None:
        raise DataError(source, f"no ground-truth boxes for scene {inst.scene_id} (needed by {inst.id!r})")
    missing = [o for o in inst.target_object_ids if o not in scene]
    if missing:
        raise DataError(source, f"scene {inst.scene_id} has no object {missing[0]} (needed by {inst.id!r})")
    return as_boxes([scene[o] for o in inst.target_object_ids])


def require_answers(instructions: Sequence[Instruction], source: str) -> None:
    for inst in instructions:
        if not inst.answers:
            raise DataError(source, f"{inst.id!r} has no answers (a test split cannot be scored offline)")
