"""`vidllm predict`: run a model directory on a benchmark's shards (or, for the pose and depth sets,
its dataset folder) and write predictions JSONL."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tqdm import tqdm

from vidllm.config import EvalConfig
from vidllm.eval.benchmarks import registry
from vidllm.eval.protocols import PROTOCOL_HELP, PROTOCOLS, protocol_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = EvalConfig()
    parser.add_argument("--model", required=True, type=Path, help="model directory (vidllm init / training output)")
    parser.add_argument("--benchmark", required=True, choices=registry.choices(),
                        help="benchmark whose instructions to answer")
    parser.add_argument("--shards", default=None,
                        help="shard dataset folder or s3:// prefix (vidllm prepare output); every benchmark but "
                             f"{', '.join(registry.dataset_benchmarks())}")
    parser.add_argument("--data", type=Path, default=None,
                        help=f"{', '.join(registry.dataset_benchmarks())}: the dataset's root folder in its published "
                             "layout (README: Pose and depth on Co3Dv2, RealEstate10K, NYUv2)")
    parser.add_argument("--frames", type=int, default=None,
                        help="pose sets (--data): frames drawn per sequence (default: 10, as VGGT)")
    parser.add_argument("--seed", type=int, default=0, help="pose sets (--data): seed of the frame draw (default: 0)")
    parser.add_argument("--out", required=True, type=Path,
                        help="predictions JSONL to write (plus <name>.meta.json); recon also writes geometry/<scene>.npz beside it")
    parser.add_argument("--protocol", type=protocol_argument, choices=PROTOCOLS, default=None,
                        help="evaluation protocol, recorded in the output: " + PROTOCOL_HELP
                             + f" (default: {defaults.protocol}, or P0 for a model with model.patch_geometry "
                               "ground_truth)")
    parser.add_argument("--split", default=None,
                        help="keep only instructions of this split, e.g. val (default: all; Nr3D/Sr3D records have "
                             "none); with --data: the Co3Dv2 set-list subset or RealEstate10K split folder (default: "
                             "test), the NYUv2 ids in <root>/<split>.txt (default: every image)")
    parser.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens,
                        help=f"generation length cap (default: {defaults.max_new_tokens})")
    parser.add_argument("--geometry-dir", type=Path, default=None,
                        help="where recon geometry goes (default: geometry/ beside OUT)")
    parser.add_argument("--proposals", default=defaults.proposals, metavar="own|gt|PATH",
                        help="what grounding chooses among and Scan2Cap captions: the model's own proposals (own, "
                             "from the video alone), the ground-truth instances (gt) or external detector proposals "
                             "(a folder of <scene_id>.npy|.npz|.json or one JSON {scene_id: [...]}; formats in the "
                             f"README); default: {defaults.proposals}")
    parser.add_argument("--limit-scenes", type=int, default=None,
                        help="stop after this many scenes with instructions, for smoke runs (default: all)")


def run(args: argparse.Namespace) -> int:
    from vidllm.errors import VidLLMError
    from vidllm.eval.geometry_sets import predict_geometry_set
    from vidllm.eval.predict import predict

    own_data = registry.get(args.benchmark).dataset is not None
    if own_data and args.data is None:
        raise VidLLMError(f"{args.benchmark} reads its own dataset: pass --data ROOT (not --shards)")
    if not own_data and args.shards is None:
        raise VidLLMError(f"{args.benchmark} runs on the ScanNet shards: pass --shards")
    if own_data and args.frames is not None and args.frames < 2:
        raise VidLLMError(f"--frames must be at least 2, got {args.frames}")
    with tqdm(desc=f"predict {args.benchmark}", unit="clip" if own_data else "scene") as bar:
        def progress(samples_read: int, total: int) -> None:
            bar.total = total
            bar.update(samples_read - bar.n)

        if own_data:
            summary = predict_geometry_set(args.model, args.benchmark, args.data, args.out, split=args.split,
                                           frames=args.frames, seed=args.seed, protocol=args.protocol,
                                           geometry_dir=args.geometry_dir, limit_scenes=args.limit_scenes,
                                           progress=progress)
        else:
            summary = predict(args.model, args.benchmark, args.shards, args.out, protocol=args.protocol,
                              split=args.split, max_new_tokens=args.max_new_tokens, geometry_dir=args.geometry_dir,
                              limit_scenes=args.limit_scenes, progress=progress, proposals=args.proposals)
    print(json.dumps({"out": str(args.out), "benchmark": summary.benchmark, "protocol": summary.protocol,
                      "proposals": summary.proposals,
                      "scenes": summary.scenes, "predictions": summary.predictions,
                      "seconds_per_scene": round(summary.seconds_per_scene, 3)}))
    return 0
