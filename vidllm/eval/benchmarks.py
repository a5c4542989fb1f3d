"""Score predictions against benchmark ground truth (the engine behind `vidllm score`).

Each `score_*` takes the ground-truth `Instruction`s and validated `Prediction`s and returns a
JSON-ready dict: `{"metrics": {...}, "subgroups": {group: {...}}, "count": N, ...}`. Values are
fractions (not ×100); subgroups with no member are null.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vidllm.data.scannet.annotations import Instruction
from vidllm.errors import DataError
from vidllm.eval.captions import TokenizePreset, exact_match, raw_exact_match, score_captions
from vidllm.eval.geometry_metrics import depth_metrics, point_cloud_metrics, pose_metrics
from vidllm.eval.grounding import (
    as_boxes,
    box_iou_matrix,
    is_view_dependent,
    mean_or_none,
    multi3drefer_f1,
    select_gt_instance,
)
from vidllm.eval.predictions import Prediction
from vidllm.eval.run_dir import read_geometry

SceneBoxes = dict[str, dict[int, np.ndarray]]  # scene_id -> object_id -> [6]

MULTI3DREFER_EVAL_TYPES = ("zt_w_d", "zt_wo_d", "st_w_d", "st_wo_d", "mt")
SQA3D_QUESTION_TYPES = ("what", "is", "how", "can", "which", "others")


# ----------------------------------------------------------------------------- GT boxes


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


def _target_boxes(boxes: SceneBoxes, inst: Instruction, source: str) -> np.ndarray:
    scene = boxes.get(inst.scene_id)
    if scene is None:
        raise DataError(source, f"no ground-truth boxes for scene {inst.scene_id} (needed by {inst.id!r})")
    missing = [o for o in inst.target_object_ids if o not in scene]
    if missing:
        raise DataError(source, f"scene {inst.scene_id} has no object {missing[0]} (needed by {inst.id!r})")
    return as_boxes([scene[o] for o in inst.target_object_ids])


# ----------------------------------------------------------------------------- QA


def _require_answers(instructions: Sequence[Instruction], gt_path: str) -> None:
    for inst in instructions:
        if not inst.answers:
            raise DataError(gt_path, f"{inst.id!r} has no answers (a test split cannot be scored offline)")


def score_scanqa(
    instructions: Sequence[Instruction], preds: Mapping[str, Prediction], gt_path: str,
    preset: TokenizePreset = "coco_ptb", meteor: bool = True,
) -> dict[str, Any]:
    _require_answers(instructions, gt_path)
    em, refined, raw = [], [], []
    for inst in instructions:
        text = preds[inst.id].text or ""
        match, refined_match = exact_match(text, inst.answers)
        em.append(match)
        refined.append(refined_match)
        raw.append(raw_exact_match(text, inst.answers))
    captions = score_captions({i.id: preds[i.id].text or "" for i in instructions},
                              {i.id: i.answers for i in instructions}, preset=preset, meteor=meteor)
    metrics = {name: captions.corpus[name] for name in ("CIDEr", "BLEU-4", "METEOR", "ROUGE-L") if name in captions.corpus}
    metrics.update({"EM@1": float(np.mean(em)), "EM@1-refined": float(np.mean(refined)), "EM@1-raw": float(np.mean(raw))})
    families = np.asarray([scanqa_family(inst.text) for inst in instructions])
    em_arr = np.asarray(em, float)
    subgroups = {f: {"EM@1": mean_or_none(em_arr[families == f]), "count": int((families == f).sum())}
                 for f in SCANQA_FAMILIES if (families == f).any()}
    return {"metrics": metrics, "subgroups": subgroups, "count": len(instructions), "tokenize": preset}


# Question families of ScanQA-style questions, recognised by their opening words.
SCANQA_FAMILIES = ("count", "colour", "existence", "relative_position", "other")
_RELATIVE = ("next to", "left of", "right of", "behind", "in front of", "near", "between", "on top of", "under")


def scanqa_family(question: str) -> str:
    """count ("how many"), colour ("what colo(u)r"), existence ("is there", "are there"),
    relative_position (a spatial relation: "what is next to ..."), else other."""
    q = question.strip().lower()
    if q.startswith("how many"):
        return "count"
    if q.startswith(("what color", "what colour")):
        return "colour"
    if q.startswith(("is there", "are there")):
        return "existence"
    if any(f" {r} " in f" {q} " for r in _RELATIVE):
        return "relative_position"
    return "other"


def score_sqa3d(instructions: Sequence[Instruction], preds: Mapping[str, Prediction], gt_path: str) -> dict[str, Any]:
    _require_answers(instructions, gt_path)
    em, refined, qtype = [], [], []
    for inst in instructions:
        match, refined_match = exact_match(preds[inst.id].text or "", inst.answers)
        em.append(match)
        refined.append(refined_match)
        qtype.append(inst.eval_subgroup.get("question_type", "others"))
    em_arr, ref_arr, qtype_arr = np.asarray(em, float), np.asarray(refined, float), np.asarray(qtype)
    subgroups = {
        t: {"EM@1": mean_or_none(em_arr[qtype_arr == t]), "EM@1-refined": mean_or_none(ref_arr[qtype_arr == t]),
            "count": int((qtype_arr == t).sum())}
        for t in SQA3D_QUESTION_TYPES
    }
    return {"metrics": {"EM@1": float(em_arr.mean()), "EM@1-refined": float(ref_arr.mean())},
            "subgroups": subgroups, "count": len(instructions)}


# ----------------------------------------------------------------------------- grounding


def score_scanrefer(
    instructions: Sequence[Instruction], preds: Mapping[str, Prediction], boxes: SceneBoxes, boxes_source: str,
    thresholds: Sequence[float] = (0.25, 0.5),
) -> dict[str, Any]:
    """Acc@k with the first predicted box (an empty list is a miss)."""
    ious, unique = [], []
    for inst in instructions:
        gt = _target_boxes(boxes, inst, boxes_source)
        pred = preds[inst.id].boxes
        ious.append(float(box_iou_matrix(pred[:1], gt[:1])[0, 0]) if len(pred) else 0.0)
        unique.append(bool(inst.eval_subgroup.get("unique", False)))
    iou_arr, unique_arr = np.asarray(ious), np.asarray(unique)
    metrics, subgroups = {}, {"unique": {}, "multiple": {}}
    for k in thresholds:
        hit = (iou_arr >= k).astype(float)
        metrics[f"Acc@{k:g}"] = float(hit.mean())
        subgroups["unique"][f"Acc@{k:g}"] = mean_or_none(hit[unique_arr])
        subgroups["multiple"][f"Acc@{k:g}"] = mean_or_none(hit[~unique_arr])
    subgroups["unique"]["count"] = int(unique_arr.sum())
    subgroups["multiple"]["count"] = int((~unique_arr).sum())
    metrics["mean_IoU"] = float(iou_arr.mean())
    return {"metrics": metrics, "subgroups": subgroups, "count": len(instructions)}


def score_multi3drefer(
    instructions: Sequence[Instruction], preds: Mapping[str, Prediction], boxes: SceneBoxes, boxes_source: str,
    thresholds: Sequence[float] = (0.25, 0.5),
) -> dict[str, Any]:
    f1 = {k: [] for k in thresholds}
    eval_types = []
    for inst in instructions:
        gt = _target_boxes(boxes, inst, boxes_source)
        for k in thresholds:
            f1[k].append(multi3drefer_f1(preds[inst.id].boxes, gt, k))
        eval_types.append(inst.eval_subgroup.get("eval_type", "mt" if len(gt) > 1 else "st_w_d" if len(gt) else "zt_w_d"))
    types = np.asarray(eval_types)
    metrics = {f"F1@{k:g}": float(np.mean(f1[k])) for k in thresholds}
    subgroups = {
        t: {**{f"F1@{k:g}": mean_or_none(np.asarray(f1[k])[types == t]) for k in thresholds}, "count": int((types == t).sum())}
        for t in MULTI3DREFER_EVAL_TYPES
    }
    return {"metrics": metrics, "subgroups": subgroups, "count": len(instructions)}


def score_referit3d(
    instructions: Sequence[Instruction], preds: Mapping[str, Prediction], boxes: SceneBoxes, boxes_source: str,
    thresholds: Sequence[float] = (0.25, 0.5),
) -> dict[str, Any]:
    """ReferIt3D accuracy: the first predicted box selects the GT instance it overlaps most.

    Also reports Acc@k (IoU with the target box), as Video-3D LLM's evaluator does.
    """
    correct, hard, view_dep, ious = [], [], [], []
    for inst in instructions:
        gt = _target_boxes(boxes, inst, boxes_source)[0]
        scene = boxes[inst.scene_id]
        ids = sorted(scene)
        pred = preds[inst.id].boxes
        chosen = select_gt_instance(pred[0], as_boxes([scene[i] for i in ids])) if len(pred) else None
        correct.append(chosen is not None and ids[chosen] == inst.target_object_ids[0])
        ious.append(float(box_iou_matrix(pred[:1], gt[None])[0, 0]) if len(pred) else 0.0)
        sub = inst.eval_subgroup
        hard.append(sub.get("hard"))
        view_dep.append(bool(sub["view_dependent"]) if "view_dependent" in sub else is_view_dependent(inst.text))
    acc = np.asarray(correct, float)
    iou = np.asarray(ious)
    view_dep_arr = np.asarray(view_dep, bool)
    known_hard = np.asarray([h is not None for h in hard])
    hard_arr = np.asarray([bool(h) for h in hard])
    metrics = {"Acc": float(acc.mean())}
    metrics.update({f"Acc@{k:g}": float((iou >= k).mean()) for k in thresholds})
    subgroups = {
        "easy": {"Acc": mean_or_none(acc[known_hard & ~hard_arr]), "count": int((known_hard & ~hard_arr).sum())},
        "hard": {"Acc": mean_or_none(acc[known_hard & hard_arr]), "count": int((known_hard & hard_arr).sum())},
        "view_dependent": {"Acc": mean_or_none(acc[view_dep_arr]), "count": int(view_dep_arr.sum())},
        "view_independent": {"Acc": mean_or_none(acc[~view_dep_arr]), "count": int((~view_dep_arr).sum())},
    }
    return {"metrics": metrics, "subgroups": subgroups, "count": len(instructions)}


# ----------------------------------------------------------------------------- dense captioning


def score_scan2cap(
    instructions: Sequence[Instruction], preds: Mapping[str, Prediction], boxes: SceneBoxes, boxes_source: str,
    proposals: Mapping[str, np.ndarray] | None = None, iou_threshold: float = 0.5,
    preset: TokenizePreset = "scan2cap", meteor: bool = True,
) -> dict[str, Any]:
    """m@k = (1/N) Σ_i m_i · 1[IoU(b̂_i, b_i) ≥ k] over all GT objects (the paper's definition).

    b̂_i is the best-overlapping supplied proposal when `proposals` is given (the peers' Mask3D
    protocol), else the prediction's own first box (no box = gate fails).
    """
    _require_answers(instructions, boxes_source)
    gate = []
    for inst in instructions:
        gt = _target_boxes(boxes, inst, boxes_source)[:1]
        if proposals is not None:
            candidates = proposals.get(inst.scene_id, np.zeros((0, 6)))
        else:
            candidates = preds[inst.id].boxes[:1]
        best = float(box_iou_matrix(candidates, gt).max()) if len(candidates) else 0.0
        gate.append(best >= iou_threshold)
    gate_arr = np.asarray(gate, float)
    captions = score_captions({i.id: preds[i.id].text or "" for i in instructions},
                              {i.id: i.answers for i in instructions}, preset=preset, meteor=meteor)
    gate_by_id = {inst.id: g for inst, g in zip(instructions, gate_arr, strict=True)}
    gate_sorted = np.asarray([gate_by_id[cid] for cid in captions.ids])  # captions.ids is sorted
    suffix = f"@{iou_threshold:g}"
    metrics: dict[str, float] = {}
    for name in ("CIDEr", "BLEU-4", "METEOR", "ROUGE-L"):
        if name in captions.per_sample:
            metrics[name + suffix] = float((captions.per_sample[name] * gate_sorted).mean())
    ungated = dict(captions.corpus)
    return {
        "metrics": metrics,
        "subgroups": {"ungated_corpus": ungated},
        "count": len(instructions),
        "box_recall": float(gate_arr.mean()),
        "gate": "proposals" if proposals is not None else "predicted_box",
        "tokenize": preset,
    }


# ----------------------------------------------------------------------------- reconstruction


def score_recon(preds: Mapping[str, Prediction], threshold: float = 0.05, voxel_size: float = 0.02) -> dict[str, Any]:
    """Depth, pose and point-cloud metrics per scene from geometry npz files, averaged over scenes."""
    per_scene: dict[str, dict[str, float]] = {}
    for pred in sorted(preds.values(), key=lambda p: p.id):
        geo = read_geometry(pred.geometry, required=("depth_pred", "depth_gt", "camera_to_world_pred",
                                                    "camera_to_world_gt", "points_pred", "points_gt"))
        for key in ("camera_to_world_pred", "camera_to_world_gt"):
            if geo[key].ndim != 3 or geo[key].shape[1:] != (4, 4) or not np.isfinite(geo[key]).all():
                raise DataError(pred.geometry, f"'{key}' must be finite [N,4,4], got shape {list(geo[key].shape)}")
        if len(geo["depth_pred"]) != len(geo["depth_gt"]) or len(geo["camera_to_world_pred"]) != len(geo["camera_to_world_gt"]):
            raise DataError(pred.geometry, "prediction and ground truth hold different numbers of frames")
        scene = {f"depth/{k}": v for k, v in depth_metrics(geo["depth_pred"], geo["depth_gt"]).items()}
        scene.update({f"pose/{k}": v for k, v in pose_metrics(geo["camera_to_world_pred"], geo["camera_to_world_gt"]).items()})
        try:
            cloud = point_cloud_metrics(geo["points_pred"], geo["points_gt"], threshold, voxel_size)
        except ValueError as exc:
            raise DataError(pred.geometry, str(exc)) from None
        scene.update({f"recon/{k}": v for k, v in cloud.items()})
        per_scene[pred.id] = scene
    keys = [k for k in next(iter(per_scene.values())) if not k.endswith(("num_images", "num_pairs"))]
    metrics = {k: float(np.nanmean([s[k] for s in per_scene.values()])) for k in keys}
    return {"metrics": metrics, "subgroups": {"per_scene": per_scene}, "count": len(per_scene)}
