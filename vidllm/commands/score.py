"""`vidllm score`: score a predictions JSONL against a benchmark's published ground truth (offline)."""

from __future__ import annotations

import argparse
import json
import sys
import typing
from pathlib import Path
from typing import Any

from vidllm.config import EvalConfig
from vidllm.errors import DataError, VidLLMError
from vidllm.eval.captions import TOKENIZE_PRESETS
from vidllm.eval.predictions import BENCHMARKS, BOX_BENCHMARKS, match_ids, read_meta, read_predictions
from vidllm.eval.run_dir import jsonable, write_json

PROTOCOLS = typing.get_args(EvalConfig.model_fields["protocol"].annotation)
# Benchmarks whose ground truth needs object boxes from the scenes.
NEEDS_BOXES = (*BOX_BENCHMARKS, "scan2cap")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    parser.add_argument("--benchmark", required=True, choices=BENCHMARKS, help="benchmark to score")
    parser.add_argument("--pred", required=True, type=Path, help="predictions JSONL (one {id, text|boxes|geometry} per line)")
    parser.add_argument("--gt", type=Path, default=None,
                        help="published annotation file or folder (ScanQA_v1.0_val.json, ScanRefer_filtered_val.json, "
                             "multi3drefer_val.json, nr3d.csv, SQA3D questions file...); not used by recon")
    parser.add_argument("--split", default=None, help="split to look for when --gt is a folder (e.g. val)")
    parser.add_argument("--scans", type=Path, default=None,
                        help="ScanNet scans folder (scans/<scene_id>/...) to take ground-truth object boxes from")
    parser.add_argument("--boxes", type=Path, default=None,
                        help="precomputed ground-truth boxes JSON {scene_id: {object_id: [cx,cy,cz,dx,dy,dz]}} (instead of --scans)")
    parser.add_argument("--proposals", type=Path, default=None,
                        help="Scan2Cap: folder of detector proposals <scene_id>.json|.npy; the IoU gate then uses the "
                             "best proposal (peers' protocol) instead of the prediction's own box")
    parser.add_argument("--protocol", choices=PROTOCOLS, default=None,
                        help="how predicted geometry was mapped to ScanNet's world frame; default: the value in the "
                             "predictions' .meta.json, else 'unspecified'")
    parser.add_argument("--tokenize", choices=TOKENIZE_PRESETS, default=None,
                        help="caption tokenisation (default: scan2cap for Scan2Cap, coco_ptb for ScanQA)")
    parser.add_argument("--no-meteor", action="store_true", help="skip METEOR (saves the ~20 s Java start)")
    parser.add_argument("--iou-threshold", type=float, default=0.5, help="Scan2Cap IoU gate")
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON result to this file")


def score(args: argparse.Namespace) -> dict[str, Any]:
    from vidllm.data.annotations import load_annotations
    from vidllm.eval import benchmarks as bm

    benchmark = args.benchmark
    preds = read_predictions(args.pred, benchmark)
    meta = read_meta(args.pred)
    if meta.get("benchmark") not in (None, benchmark):
        raise DataError(args.pred, f"predictions were made for '{meta['benchmark']}', not '{benchmark}'")
    result: dict[str, Any] = {
        "benchmark": benchmark,
        "protocol": args.protocol or meta.get("protocol", "unspecified"),
        "predictions": str(args.pred),
        "model": meta.get("model"),
    }
    if benchmark == "recon":
        result["gt"] = "geometry files (depth_gt, camera_to_world_gt, points_gt)"
        result.update(bm.score_recon(preds))
        return result

    if args.gt is None:
        raise VidLLMError(f"--gt is required for {benchmark} (the published annotation file or folder)")
    instructions = load_annotations(benchmark, args.gt, args.split)
    if not instructions:
        raise DataError(args.gt, f"no {benchmark} instructions found")
    match_ids(args.pred, preds, [inst.id for inst in instructions])
    result["gt"] = str(args.gt)

    boxes: dict = {}
    boxes_source = None
    if benchmark in NEEDS_BOXES:
        scene_ids = [inst.scene_id for inst in instructions]
        if args.boxes is not None:
            boxes, boxes_source = bm.load_boxes_json(args.boxes), str(args.boxes)
            result["gt_boxes"] = f"boxes file {args.boxes}"
        elif args.scans is not None:
            boxes, boxes_source = bm.load_boxes_from_scans(args.scans, scene_ids), str(args.scans)
            result["gt_boxes"] = f"ScanNet scenes in {args.scans} (aggregation + segs + mesh, axis-aligned)"
        else:
            raise VidLLMError(f"{benchmark} needs ground-truth boxes: pass --scans DIR or --boxes JSON")

    meteor = not args.no_meteor
    if benchmark == "scanqa":
        result.update(bm.score_scanqa(instructions, preds, str(args.gt), args.tokenize or "coco_ptb", meteor))
    elif benchmark == "sqa3d":
        result.update(bm.score_sqa3d(instructions, preds, str(args.gt)))
    elif benchmark == "scanrefer":
        result.update(bm.score_scanrefer(instructions, preds, boxes, boxes_source))
    elif benchmark == "multi3drefer":
        result.update(bm.score_multi3drefer(instructions, preds, boxes, boxes_source))
    elif benchmark in ("nr3d", "sr3d"):
        result.update(bm.score_referit3d(instructions, preds, boxes, boxes_source))
    elif benchmark == "scan2cap":
        proposals = bm.load_proposals(args.proposals, [i.scene_id for i in instructions]) if args.proposals else None
        result.update(bm.score_scan2cap(instructions, preds, boxes, boxes_source, proposals, args.iou_threshold,
                                        args.tokenize or "scan2cap", meteor))
        result["gate"] = f"proposals in {args.proposals}" if proposals is not None else "the prediction's own box"
    return result


def _print_table(result: dict[str, Any]) -> None:
    print(f"{result['benchmark']}  (protocol: {result['protocol']}, {result['count']} items)")
    for name, value in result["metrics"].items():
        print(f"  {name:<22} {value:.4f}" if isinstance(value, float) else f"  {name:<22} {value}")
    for group, values in result.get("subgroups", {}).items():
        if group == "per_scene":
            continue
        shown = ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
        print(f"  [{group}] {shown}")


def run(args: argparse.Namespace) -> int:
    result = score(args)
    if args.out is not None:
        write_json(args.out, result)
    if args.json:
        json.dump(jsonable(result), sys.stdout, indent=2, allow_nan=False)
        sys.stdout.write("\n")
    else:
        _print_table(result)
    return 0
