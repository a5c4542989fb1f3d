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
from vidllm.eval.predictions import BENCHMARKS, BOX_BENCHMARKS, PROTOCOLS, match_ids, read_meta, read_predictions

# Benchmarks whose ground truth needs object boxes from the scenes.
NEEDS_BOXES = (*BOX_BENCHMARKS, "scan2cap")
# Default caption tokenisation: Scan2Cap as its peers (sos … eos), ScanQA as coco-caption.
DEFAULT_TOKENIZE: dict[str, TokenizePreset] = {"scan2cap": "scan2cap", "scanqa": "coco_ptb"}


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
    """
    from vidllm.data.scannet.annotations import load_annotations
    from vidllm.eval import benchmarks as bm

    if benchmark not in BENCHMARKS:
        raise VidLLMError(f"unknown benchmark '{benchmark}' (choose from {', '.join(BENCHMARKS)})")
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
    if benchmark == "recon":
        result["gt"] = "geometry files (depth_gt, camera_to_world_gt, points_gt)"
        result.update(bm.score_recon(preds))
        return result

    if gt is None:
        raise VidLLMError(f"{benchmark} needs its ground truth: the published annotation file or folder (--gt)")
    instructions = load_annotations(benchmark, gt, split)
    if not instructions:
        raise DataError(gt, f"no {benchmark} instructions found" + (f" for split {split}" if split else ""))
    match_ids(pred_path, preds, [inst.id for inst in instructions])
    result["gt"] = str(gt)

    scene_boxes: bm.SceneBoxes = {}
    boxes_source = ""
    if benchmark in NEEDS_BOXES:
        if boxes is not None:
            scene_boxes, boxes_source = bm.load_boxes_json(boxes), str(boxes)
            result["gt_boxes"] = f"boxes file {boxes}"
        elif scans is not None:
            scene_boxes = bm.load_boxes_from_scans(scans, [inst.scene_id for inst in instructions])
            boxes_source = str(scans)
            result["gt_boxes"] = f"ScanNet scenes in {scans} (aggregation + segs + mesh, axis-aligned)"
        else:
            raise VidLLMError(f"{benchmark} needs ground-truth boxes: pass --scans DIR or --boxes JSON")

    preset = tokenize or DEFAULT_TOKENIZE.get(benchmark, "coco_ptb")
    if benchmark == "scanqa":
        result.update(bm.score_scanqa(instructions, preds, str(gt), preset, meteor))
    elif benchmark == "sqa3d":
        result.update(bm.score_sqa3d(instructions, preds, str(gt)))
    elif benchmark == "scanrefer":
        result.update(bm.score_scanrefer(instructions, preds, scene_boxes, boxes_source))
    elif benchmark == "multi3drefer":
        result.update(bm.score_multi3drefer(instructions, preds, scene_boxes, boxes_source))
    elif benchmark in ("nr3d", "sr3d"):
        result.update(bm.score_referit3d(instructions, preds, scene_boxes, boxes_source))
    elif benchmark == "scan2cap":
        scene_proposals = (bm.load_proposals(proposals, [inst.scene_id for inst in instructions])
                           if proposals is not None else None)
        result.update(bm.score_scan2cap(instructions, preds, scene_boxes, boxes_source, scene_proposals,
                                        iou_threshold, preset, meteor))
        own = "the prediction's own box"
        if meta.get("scan2cap_prompt_box"):
            own += f" (the prompt's {meta['scan2cap_prompt_box']})"
        result["gate"] = f"proposals in {proposals}" if proposals is not None else own
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
