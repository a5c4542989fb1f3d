"""Ground truth several benchmarks score against: object boxes, detector proposals, reference answers."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

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


@dataclass(frozen=True)
class ScoredProposals:
    boxes: np.ndarray  # [K, 6] cx, cy, cz, dx, dy, dz; metres, ScanNet axis-aligned world
    scores: np.ndarray | None = None  # [K] detector confidence, when the file gives one


def _proposal_rows(data: Any, path: Path) -> tuple[Any, Any]:
    """(boxes, scores or None) of one scene's JSON value in any of the accepted forms."""
    if isinstance(data, dict):
        return data.get("boxes"), data.get("scores")
    if isinstance(data, list) and data and all(isinstance(item, dict) for item in data):
        try:
            return [item["box"] for item in data], [item.get("score") for item in data]
        except KeyError:
            raise DataError(path, 'each proposal object needs a "box" (and may have a "score")') from None
    return data, None


def _scored_proposals(boxes: Any, scores: Any, path: Path, scene_id: str) -> ScoredProposals:
    try:
        arr = np.asarray(boxes if boxes is not None else [], dtype=np.float64)
        score_arr = None if scores is None or any(v is None for v in scores) else np.asarray(scores, np.float64)
    except (TypeError, ValueError):
        raise DataError(path, f"scene {scene_id}: proposals must be [cx,cy,cz,dx,dy,dz(,score)] rows") from None
    if arr.size and (arr.ndim != 2 or arr.shape[1] not in (6, 7)):
        raise DataError(path, f"scene {scene_id}: proposals must have shape [K,6] or [K,7], got {list(arr.shape)}")
    arr = arr.reshape(-1, arr.shape[1] if arr.size else 6)
    if arr.shape[1] == 7:  # the 7th column is the score
        arr, score_arr = arr[:, :6], arr[:, 6]
    if score_arr is not None and score_arr.shape != (len(arr),):
        raise DataError(path, f"scene {scene_id}: {len(score_arr)} scores for {len(arr)} proposals")
    if not np.isfinite(arr).all() or (score_arr is not None and not np.isfinite(score_arr).all()):
        raise DataError(path, f"scene {scene_id}: proposals hold non-finite values")
    if (arr[:, 3:] < 0).any():
        raise DataError(path, f"scene {scene_id}: a proposal has a negative size")
    return ScoredProposals(arr, score_arr)


def load_scored_proposals(proposals: str | Path, scene_ids: Sequence[str]) -> dict[str, ScoredProposals]:
    """Detector proposals (e.g. Mask3D's, as the peers ship them) per scene, with optional scores.

    `proposals` is a JSON file `{scene_id: value}` or a folder of `<scene_id>.json`, `.npy` or
    `.npz`, one per scene. Boxes are `[cx, cy, cz, dx, dy, dz]` in metres, ScanNet axis-aligned
    world. Accepted values:

    - arrays (`.npy`, or the `boxes` [+ `scores`] arrays of an `.npz`; an `.npz` with one array
      is that array): `[K, 6]`, or `[K, 7]` whose last column is the score;
    - JSON: `[[6 or 7 numbers], ...]`, `{"boxes": [...], "scores": [...]}` or
      `[{"box": [6 numbers], "score": s}, ...]` (score optional).

    A scene listed in `scene_ids` without proposals is a DataError; a scene with none is `[0, 6]`.
    """
    root = Path(proposals)
    out: dict[str, ScoredProposals] = {}
    if root.is_file():
        try:
            data = json.loads(root.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataError(root, f"not valid JSON: {exc.msg}") from None
        if not isinstance(data, dict):
            raise DataError(root, "a proposals file must hold {scene_id: proposals}")
        for scene_id in sorted(set(scene_ids)):
            if scene_id not in data:
                raise DataError(root, f"no proposals for scene {scene_id}")
            out[scene_id] = _scored_proposals(*_proposal_rows(data[scene_id], root), root, scene_id)
        return out
    if not root.is_dir():
        raise DataError(root, "proposals folder or file not found")
    for scene_id in sorted(set(scene_ids)):
        found = [root / f"{scene_id}{ext}" for ext in (".json", ".npy", ".npz") if (root / f"{scene_id}{ext}").is_file()]
        if not found:
            raise DataError(root, f"no proposals for scene {scene_id} ({scene_id}.json, .npy or .npz)")
        path = found[0]
        if path.suffix == ".json":
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise DataError(path, f"not valid JSON: {exc.msg}") from None
            boxes, scores = _proposal_rows(data, path)
        elif path.suffix == ".npy":
            boxes, scores = np.load(path, allow_pickle=False), None
        else:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
            if "boxes" in arrays:
                boxes, scores = arrays["boxes"], arrays.get("scores")
            elif len(arrays) == 1:
                boxes, scores = next(iter(arrays.values())), None
            else:
                raise DataError(path, f"needs a 'boxes' array (and optionally 'scores'), has {sorted(arrays)}")
        out[scene_id] = _scored_proposals(boxes, scores, path, scene_id)
    return out


def load_proposals(proposals: str | Path, scene_ids: Sequence[str]) -> dict[str, np.ndarray]:
    """The boxes `[K, 6]` of `load_scored_proposals` (formats there), per scene."""
    return {scene_id: p.boxes for scene_id, p in load_scored_proposals(proposals, scene_ids).items()}


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
