"""`vidllm score`: score a predictions JSONL against a benchmark's published ground truth (offline)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vidllm.eval.benchmarks import registry
from vidllm.eval.captions import TOKENIZE_PRESETS
from vidllm.eval.protocols import PROTOCOLS, protocol_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--benchmark", required=True, choices=registry.choices(), help="benchmark to score")
    parser.add_argument("--pred", required=True, type=Path,
                        help="predictions JSONL, one {id, text|boxes|geometry} object per line")
    parser.add_argument("--gt", type=Path, default=None,
                        help="published annotation file or folder (ScanQA_v1.0_val.json, ScanRefer_filtered_val.json, "
                             "multi3drefer_val.json, nr3d.csv, SQA3D questions file, ...); not used by recon")
    parser.add_argument("--split", default=None,
                        help="split whose file to use when --gt is a folder, e.g. val (Nr3D/Sr3D: keeps the scans "
                             "listed in <split>_scans.txt or scannetv2_<split>.txt)")
    parser.add_argument("--scans", type=Path, default=None,
                        help="ScanNet scans folder (scans/<scene_id>/...) to take ground-truth object boxes from")
    parser.add_argument("--boxes", type=Path, default=None,
                        help="ground-truth boxes JSON {scene_id: {object_id: [cx,cy,cz,dx,dy,dz]}}, instead of --scans")
    parser.add_argument("--proposals", type=Path, default=None,
                        help="Scan2Cap: folder of detector proposals <scene_id>.json|.npy; the IoU gate then uses the "
                             "best proposal (the peers' protocol) instead of the prediction's own box")
    parser.add_argument("--protocol", type=protocol_argument, choices=PROTOCOLS, default=None,
                        help="evaluation protocol to score under (P0, P1, P2; default: the one in the predictions' "
                             ".meta.json, else 'unspecified'); P1 predictions rescore under P2 and back")
    parser.add_argument("--tokenize", choices=TOKENIZE_PRESETS, default=None,
                        help="caption tokenisation (default: scan2cap for Scan2Cap, coco_ptb for ScanQA)")
    parser.add_argument("--no-meteor", action="store_true", help="skip METEOR (saves the ~20 s Java start)")
    parser.add_argument("--iou-threshold", type=float, default=0.5, help="Scan2Cap IoU gate (default: 0.5)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON result to this file")
    parser.add_argument("--into", type=Path, default=None, metavar="RUN_DIR",
                        help="also record the result in RUN_DIR/metrics.json (its benchmark entry and by_protocol), "
                             "so `vidllm report RUN_DIR` shows it, e.g. co3d / re10k / nyuv2 beside the shard "
                             "benchmarks `vidllm evaluate` scored")
    parser.add_argument("--per-sample", type=Path, default=None, metavar="FILE",
                        help="also write every item's scores to this JSONL, one line per prediction id: id, scene, "
                             "subgroup labels and the benchmark's per-item metrics (EM, IoU and Acc@k, F1@k, "
                             "per-caption scores, per-scene recon metrics), the values the metrics are computed from")


def run(args: argparse.Namespace) -> int:
    from vidllm.artifacts.run_dir import jsonable, write_json
    from vidllm.eval.scoring import format_score_table, score_predictions

    result = score_predictions(
        args.benchmark, args.pred, args.gt, split=args.split, scans=args.scans, boxes=args.boxes,
        proposals=args.proposals, protocol=args.protocol, tokenize=args.tokenize, meteor=not args.no_meteor,
        iou_threshold=args.iou_threshold, per_sample=args.per_sample,
    )
    if args.out is not None:
        write_json(args.out, result)
    if args.into is not None:
        from vidllm.eval.evaluate import add_to_metrics

        add_to_metrics(args.into, result)
    if args.json:
        json.dump(jsonable(result), sys.stdout, indent=2, allow_nan=False)
        sys.stdout.write("\n")
    else:
        print(format_score_table(result))
    return 0
