"""`vidllm predict`: run a model directory on a benchmark's shards and write predictions JSONL."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tqdm import tqdm

from vidllm.config import EvalConfig
from vidllm.eval.benchmarks import registry
from vidllm.eval.predictions import PROTOCOLS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = EvalConfig()
    parser.add_argument("--model", required=True, type=Path, help="model directory (vidllm init / training output)")
    parser.add_argument("--benchmark", required=True, choices=registry.choices(),
                        help="benchmark whose instructions to answer")
    parser.add_argument("--shards", required=True, help="shard dataset folder or s3:// prefix (vidllm prepare output)")
    parser.add_argument("--out", required=True, type=Path,
                        help="predictions JSONL to write (plus <name>.meta.json); recon also writes geometry/<scene>.npz beside it")
    parser.add_argument("--protocol", choices=PROTOCOLS, default=defaults.protocol,
                        help="how predicted geometry is mapped to ScanNet's axis-aligned world, recorded in the output "
                             f"(default: {defaults.protocol})")
    parser.add_argument("--split", default=None,
                        help="keep only instructions of this split, e.g. val (default: all; Nr3D/Sr3D records have none)")
    parser.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens,
                        help=f"generation length cap (default: {defaults.max_new_tokens})")
    parser.add_argument("--geometry-dir", type=Path, default=None,
                        help="where recon geometry goes (default: geometry/ beside OUT)")
    parser.add_argument("--proposals", choices=("own", "gt"), default=defaults.proposals,
                        help="grounding benchmarks choose among the model's own proposals (own, from the video "
                             "alone) or the ground-truth instances (gt, a separately labelled protocol); "
                             f"default: {defaults.proposals}")
    parser.add_argument("--limit-scenes", type=int, default=None,
                        help="stop after this many scenes with instructions, for smoke runs (default: all)")


def run(args: argparse.Namespace) -> int:
    from vidllm.eval.predict import predict

    with tqdm(desc=f"predict {args.benchmark}", unit="scene") as bar:
        def progress(samples_read: int, total: int) -> None:
            bar.total = total
            bar.update(samples_read - bar.n)

        summary = predict(args.model, args.benchmark, args.shards, args.out, protocol=args.protocol, split=args.split,
                          max_new_tokens=args.max_new_tokens, geometry_dir=args.geometry_dir,
                          limit_scenes=args.limit_scenes, progress=progress, proposals=args.proposals)
    print(json.dumps({"out": str(args.out), "benchmark": summary.benchmark, "protocol": summary.protocol,
                      "scenes": summary.scenes, "predictions": summary.predictions,
                      "seconds_per_scene": round(summary.seconds_per_scene, 3)}))
    return 0
