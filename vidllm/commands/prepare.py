"""`vidllm prepare`: sample ScanNet scenes into WebDataset shards with a manifest (Ray Data)."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys

from vidllm.config import add_config_options, config_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scannet", required=True, metavar="DIR_OR_URI",
                        help="ScanNet scans/ folder (or the folder containing scans/), "
                             "local path or s3://bucket/prefix")
    parser.add_argument("--annotations", default=None, metavar="DIR",
                        help="folder with the benchmark annotation files (ScanQA, SQA3D, ScanRefer, Multi3DRefer, "
                             "Nr3D/Sr3D) joined into each scene's sample; local or s3:// (default: none)")
    parser.add_argument("--out", required=True, metavar="DIR_OR_URI",
                        help="output folder or s3://bucket/prefix for shard-NNNNNN.tar and manifest.parquet")
    add_config_options(parser,
                       recipe_help="config recipe giving the defaults below: tiny, demo or paper (default: paper)",
                       set_help="dotted config override, repeatable (e.g. data.prep.frames=8); the flags below win "
                                "over it")
    parser.add_argument("--frames", type=int, default=None,
                        help="frames per scene clip, uniform over valid frames (default: recipe, paper 32)")
    parser.add_argument("--short-side", type=int, default=None,
                        help="shorter image side after resizing, before the crop to multiples of 14 "
                             "(default: recipe, paper 518)")
    parser.add_argument("--jpeg-quality", type=int, default=None, help="JPEG quality 1-100 (default: recipe, 95)")
    parser.add_argument("--shard-size-mb", type=float, default=None,
                        help="target shard size in MB (default: recipe, paper 1000)")
    parser.add_argument("--workers", type=int, default=None,
                        help="parallel scene tasks / local Ray CPUs; 0 = let Ray decide (default: recipe, 0). "
                             "Set RAY_ADDRESS to use a running Ray cluster")
    parser.add_argument("--label-map", default=None, metavar="TSV",
                        help="scannetv2-labels.combined.tsv (default: looked up next to the scans)")
    parser.add_argument("--scenes", nargs="+", default=None, metavar="SCENE_ID",
                        help="only these scene ids (default: every sceneXXXX_XX folder)")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def run(args: argparse.Namespace) -> int:
    from vidllm.data.prepare import prepare_shards

    overrides = []
    for flag, key in (("frames", "frames"), ("short_side", "short_side"), ("jpeg_quality", "jpeg_quality"),
                      ("workers", "workers")):
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"data.prep.{key}={value}")
    if args.shard_size_mb is not None:
        overrides.append(f"data.prep.shard_max_bytes={int(args.shard_size_mb * 1e6)}")
    cfg = config_from_args(args, overrides).data.prep
    # With --json, stdout carries the JSON object only: anything else printed meanwhile (Ray, workers) goes to stderr.
    with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
        summary = prepare_shards(args.scannet, args.annotations, args.out, cfg, label_map=args.label_map,
                                 scene_ids=args.scenes, progress=not args.no_progress)
    if args.json:
        print(json.dumps(summary.to_dict()))
    else:
        print(f"prepare: {summary.line()}")
        for scene_id, warnings in summary.warnings.items():
            for warning in warnings:
                print(f"  warning {scene_id}: {warning}", file=sys.stderr)
        for scene_id, cause in summary.failed.items():
            print(f"  failed {scene_id}: {cause}", file=sys.stderr)
    return 1 if summary.failed else 0
