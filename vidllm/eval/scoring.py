"""Score a predictions JSONL against a benchmark's ground truth — the one function behind
`vidllm score`, the Prefect evaluate task and the DVC stage.

Scoring is offline and recomputable: it reads only the prediction file (plus its `.meta.json`),
the published annotation file(s) and the ground-truth boxes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vidllm.errors import DataError, VidLLMError
from vidllm.eval.captions import TokenizePreset
from vidllm.eval.predictions import PROTOCOLS, match_ids, read_meta, read_predictions


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
) -> dict[str, Any]:
    """Score `pred_path` for `benchmark`; returns `{"benchmark", "protocol", "metrics", "subgroups", "count", ...}`.

    gt: the published annotation file or a folder holding it (`split` picks the file in a folder);
        unused for `recon`, whose ground truth sits in the geometry files.
    scans / boxes: where ground-truth object boxes come from (grounding and Scan2Cap) — ScanNet
        scene folders, or a JSON `{scene_id: {object_id: [cx,cy,cz,dx,dy,dz]}}`.
    proposals: Scan2Cap only — detector proposals per scene; the IoU gate then uses the best
        proposal (the peers' protocol) instead of the prediction's own box.
    protocol: how predicted geometry met ScanNet's world frame; default: the predictions'
        `.meta.json`, else "unspecified". Recorded in the result either way.
    tokenize: caption tokenisation (ScanQA, Scan2Cap); default: the benchmark's own.
    The benchmark's scorer (`BenchmarkSpec.score`) adds metrics, subgroups and its own keys.
    """
    from vidllm.data.scannet.annotations import load_annotations
    from vidllm.eval.benchmarks import ground_truth
    from vidllm.eval.benchmarks.registry import ScoreInputs, get

    spec = get(benchmark)
    if protocol is not None and protocol not in PROTOCOLS:
        raise VidLLMError(f"unknown evaluation protocol '{protocol}' (choose from {', '.join(PROTOCOLS)})")
    pred_path = Path(pred_path)
    preds = read_predictions(pred_path, benchmark)
    meta = read_meta(pred_path)
    if meta.get("benchmark") not in (None, benchmark):
        raise DataError(pred_path, f"predictions were made for '{meta['benchmark']}', not '{benchmark}'")
    result: dict[str, Any] = {
        "benchmark": benchmark,
        "protocol": protocol or meta.get("protocol", "unspecified"),
        "predictions": str(pred_path),
        "model": meta.get("model"),
    }
    if meta.get("proposals"):
        result["proposals"] = meta["proposals"]
    if not spec.task.annotation_files:  # the ground truth came with the predictions (recon's geometry files)
        result.update(spec.score(ScoreInputs(predictions=preds, meta=meta)))
        return result

    if gt is None:
        raise VidLLMError(f"{benchmark} needs its ground truth: the published annotation file or folder (--gt)")
    instructions = load_annotations(benchmark, gt, split)
    if not instructions:
        raise DataError(gt, f"no {benchmark} instructions found" + (f" for split {split}" if split else ""))
    match_ids(pred_path, preds, [inst.id for inst in instructions])
    result["gt"] = str(gt)

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

    result.update(spec.score(ScoreInputs(
        predictions=preds, meta=meta, instructions=instructions, gt=str(gt), boxes=scene_boxes,
        boxes_source=boxes_source, proposals=proposals, tokenize=tokenize, meteor=meteor, iou_threshold=iou_threshold)))
    return result


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
