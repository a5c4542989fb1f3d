"""Score a predictions JSONL against a benchmark's ground truth — the one function behind
`vidllm score`, the Prefect evaluate task and the DVC stage.

Scoring is offline and recomputable: it reads only the prediction file (plus its `.meta.json`),
the published annotation file(s) and the ground-truth boxes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from vidllm.errors import DataError, VidLLMError
from vidllm.eval.captions import TokenizePreset
from vidllm.eval.predictions import match_ids, read_meta, read_predictions
from vidllm.eval.protocols import CARDS, canonical_protocol, proposal_source, rescore_map


def score_predictions(
    benchmark: str,
    pred_path: str | Path,
    gt: str | Path | None = None,
    *,
    split: str | None = None,
    scans: str | Path | None = None,
    boxes: str | Path | None = None,
    proposals: str | Path | None = None,
    protocol: str | None = None,
    tokenize: TokenizePreset | None = None,
    meteor: bool = True,
    iou_threshold: float = 0.5,
    per_sample: str | Path | None = None,
) -> dict[str, Any]:
    """Score `pred_path` for `benchmark`; returns `{"benchmark", "protocol", "metrics", "subgroups", "count", ...}`.

    gt: the published annotation file or a folder holding it (`split` picks the file in a folder);
        unused for `recon`, whose ground truth sits in the geometry files.
    scans / boxes: where ground-truth object boxes come from (grounding and Scan2Cap) — ScanNet
        scene folders, or a JSON `{scene_id: {object_id: [cx,cy,cz,dx,dy,dz]}}`.
    proposals: Scan2Cap only — detector proposals per scene; the IoU gate then uses the best
        proposal (the peers' protocol) instead of the prediction's own box.
    protocol: the evaluation protocol (P0, P1, P2; `vidllm.eval.protocols`); default: the
        predictions' `.meta.json`, else "unspecified". Recorded in the result either way. When the
        meta records another one, predictions made under P1 or P2 are rescored under the other:
        their boxes (recon: poses, points, depth) are mapped with the meta's "scene_frames"
        (`rescore_map`); text answers do not depend on it. Refused where the model's inputs did
        (P0, given proposals, Scan2Cap's prompted box): such predictions must be made again.
    tokenize: caption tokenisation (ScanQA, Scan2Cap); default: the benchmark's own.
    per_sample: also write every item's scores there as JSONL (`write_per_sample`), the values the
        aggregate metrics were computed from.
    The benchmark's scorer (`BenchmarkSpec.score`) adds metrics, subgroups and its own keys.
    """
    from vidllm.data.scannet.annotations import load_annotations
    from vidllm.eval.benchmarks import ground_truth
    from vidllm.eval.benchmarks.registry import ScoreInputs, get

    spec = get(benchmark)
    requested = canonical_protocol(protocol) if protocol is not None else None
    pred_path = Path(pred_path)
    preds = read_predictions(pred_path, benchmark)
    meta = read_meta(pred_path)
    if meta.get("benchmark") not in (None, benchmark):
        raise DataError(pred_path, f"predictions were made for '{meta['benchmark']}', not '{benchmark}'")
    recorded = canonical_protocol(meta["protocol"]) if meta.get("protocol") else None
    final = requested or recorded or "unspecified"
    result: dict[str, Any] = {
        "benchmark": benchmark,
        "protocol": final,
        "protocol_card": CARDS.get(final, "not declared by the predictions or the caller"),
        "proposals": recorded_proposals(meta),
        "predictions": str(pred_path),
        "model": meta.get("model"),
    }
    if meta.get("proposals_path"):
        result["proposals_path"] = meta["proposals_path"]
    rescore = requested is not None and recorded is not None and requested != recorded
    if rescore:
        result["rescored_from"] = recorded
    if not spec.task.annotation_files:  # the ground truth came with the predictions (recon's geometry files)
        maps = _rescore_maps(spec, meta, recorded, requested, list(preds), pred_path) if rescore else {}
        result.update(_split_per_sample(benchmark, spec.score(ScoreInputs(predictions=preds, meta=meta,
                                                                          world_maps=maps)), per_sample))
        return result

    if gt is None:
        raise VidLLMError(f"{benchmark} needs its ground truth: the published annotation file or folder (--gt)")
    instructions = load_annotations(benchmark, gt, split)
    if not instructions:
        raise DataError(gt, f"no {benchmark} instructions found" + (f" for split {split}" if split else ""))
    match_ids(pred_path, preds, [inst.id for inst in instructions])
    result["gt"] = str(gt)
    if rescore:
        scene_of = {inst.id: inst.scene_id for inst in instructions}
        maps = _rescore_maps(spec, meta, recorded, requested, sorted(set(scene_of.values())), pred_path)
        if maps:
            preds = {pid: replace(pred, boxes=maps[scene_of[pid]].boxes(pred.boxes)) for pid, pred in preds.items()}

    scene_boxes: ground_truth.SceneBoxes = {}
    boxes_source = ""
    if spec.task.needs_boxes:
        if boxes is not None:
            scene_boxes, boxes_source = ground_truth.load_boxes_json(boxes), str(boxes)
            result["gt_boxes"] = f"boxes file {boxes}"
        elif scans is not None:
            scene_boxes = ground_truth.load_boxes_from_scans(scans, [inst.scene_id for inst in instructions])
            boxes_source = str(scans)
            result["gt_boxes"] = f"ScanNet scenes in {scans} (aggregation + segs + mesh, axis-aligned)"
        else:
            raise VidLLMError(f"{benchmark} needs ground-truth boxes: pass --scans DIR or --boxes JSON")

    result.update(_split_per_sample(benchmark, spec.score(ScoreInputs(
        predictions=preds, meta=meta, instructions=instructions, gt=str(gt), boxes=scene_boxes,
        boxes_source=boxes_source, proposals=proposals, tokenize=tokenize, meteor=meteor, iou_threshold=iou_threshold)),
        per_sample))
    return result


def recorded_proposals(meta: Mapping[str, Any]) -> str | None:
    """The proposal source the meta records (own / external / gt), also from the former wording."""
    value = meta.get("proposals")
    former = {"own proposals": "own", "ground-truth instances": "gt"}
    return former.get(value, proposal_source(value)) if isinstance(value, str) else None


def _rescore_maps(spec: Any, meta: Mapping[str, Any], recorded: str, requested: str, scenes: Sequence[str],
                  where: Path) -> dict[str, Any]:
    """Per scene, the map from the world as predicted (`recorded`) to the world under `requested`;
    {} where nothing scored depends on it (text answers; pose and depth on their own datasets)."""
    from vidllm.eval.predictions import meta_path

    redo = f"make the predictions again with vidllm predict --protocol {requested}"
    if "P0" in (recorded, requested):
        raise VidLLMError(f"{where}: predictions under {recorded} cannot be rescored under {requested} (P0 places the "
                          f"3D patches with ground-truth geometry, so the model's answers differ): {redo}")
    if spec.task.object_prompt or recorded_proposals(meta) in ("external", "gt"):
        raise VidLLMError(f"{where}: these predictions were made from boxes given to the model in its scene frame, "
                          f"placed under {recorded}; they cannot be rescored under {requested}: {redo}")
    if spec.task.kind == "text":
        return {}
    if spec.dataset is not None:  # relative poses and per-image median-scaled depth: invariant to a Sim(3)
        return {}
    frames = meta.get("scene_frames")
    if not isinstance(frames, Mapping):
        raise DataError(meta_path(where), f"records no scene_frames, needed to rescore {recorded} predictions under "
                                          f"{requested}: {redo}")
    missing = [s for s in scenes if s not in frames]
    if missing:
        raise DataError(meta_path(where), f"scene_frames has no scene {missing[0]}")
    return {scene: rescore_map(frames[scene], requested, meta_path(where)) for scene in scenes}


def _split_per_sample(benchmark: str, scored: dict[str, Any], path: str | Path | None) -> dict[str, Any]:
    """The scorer's result without its per-item rows (kept out of metrics.json), which go to `path` if given."""
    rows = scored.pop("per_sample", None)
    if path is not None:
        if rows is None:
            raise VidLLMError(f"{benchmark}'s scorer reports no per-item scores (its result has no 'per_sample')")
        write_per_sample(path, rows)
    return scored


def write_per_sample(path: str | Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """One JSON object per line, `{"id", "scene", <subgroup labels>, <per-item metrics>}`, atomically;
    NaN (e.g. a scene without valid depth) is written as null."""
    from vidllm.artifacts.files import atomic_write_text
    from vidllm.artifacts.run_dir import jsonable

    atomic_write_text(path, "".join(json.dumps(jsonable(dict(r)), allow_nan=False) + "\n" for r in rows))


def format_score_table(result: dict[str, Any]) -> str:
    """Human-readable summary of a `score_predictions` result (per-scene recon detail left out)."""

    def show(value: Any) -> str:
        if value is None:
            return "—"
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    lines = [f"{result['benchmark']}  (protocol: {result['protocol']}, {result['count']} items)"]
    lines += [f"  {name:<22} {show(value)}" for name, value in result["metrics"].items()]
    for group, values in result.get("subgroups", {}).items():
        if group != "per_scene":
            lines.append(f"  [{group}] " + ", ".join(f"{k}={show(v)}" for k, v in values.items()))
    return "\n".join(lines)
