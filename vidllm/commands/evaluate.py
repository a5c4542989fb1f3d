"""`vidllm evaluate`: predict + score every benchmark of a shard dataset and write RUN_DIR/metrics.json."""

from __future__ import annotations

import argparse
import json

from vidllm.config import add_config_options, config_from_args
from vidllm.eval.benchmarks import registry
from vidllm.eval.protocols import PROTOCOL_HELP, PROTOCOLS, protocol_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model directory (RUN_DIR/model from `vidllm train --stage 2`)")
    parser.add_argument("--shards", required=True, metavar="DIR_OR_URI", help="shard dataset (folder or s3:// prefix)")
    parser.add_argument("--run-dir", required=True, metavar="DIR",
                        help="run directory: predictions/ (with per_sample/, every item's scores), geometry/ and "
                             "metrics.json are written here")
    parser.add_argument("--annotations", default=None, metavar="DIR",
                        help="folder with the published annotation files (ground truth; needed by all but recon)")
    parser.add_argument("--scans", default=None, metavar="DIR",
                        help="ScanNet scans folder giving the ground-truth object boxes (grounding, Scan2Cap)")
    parser.add_argument("--split", default="val", help="split to evaluate; 'all' = every instruction (default: val)")
    parser.add_argument("--benchmarks", nargs="+", choices=registry.choices(), default=list(registry.names()),
                        metavar="NAME", help=f"benchmarks to run (default: {' '.join(registry.names())})")
    add_config_options(parser, recipe_help="config recipe for the eval section (default: paper)",
                       set_help="dotted config override, repeatable (e.g. eval.max_new_tokens=16)")
    parser.add_argument("--protocol", type=protocol_argument, choices=PROTOCOLS, default=None,
                        help=f"evaluation protocol: {PROTOCOL_HELP} (default: config eval.protocol; P0 for a model "
                             "with model.patch_geometry ground_truth)")
    parser.add_argument("--proposals", default=None, metavar="own|gt|PATH",
                        help="what grounding chooses among and Scan2Cap captions: the model's own proposals, the "
                             "ground-truth instances or external detector proposals (a folder or JSON file, as "
                             "`vidllm predict --proposals`); default: config eval.proposals, own")
    parser.add_argument("--no-meteor", action="store_true", help="skip METEOR (saves the ~20 s Java start per benchmark)")
    parser.add_argument("--json", action="store_true", help="print metrics.json's content instead of a table")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from vidllm.artifacts.run_dir import jsonable
    from vidllm.eval.evaluate import evaluate_run, format_metrics_table

    cfg = config_from_args(args).eval
    with tqdm(total=len(args.benchmarks), desc="evaluate", unit="benchmark") as bar:
        started: list[str] = []

        def progress(benchmark: str) -> None:  # called as each benchmark starts
            if started:
                bar.update()
            started.append(benchmark)
            bar.set_postfix_str(benchmark)

        summary = evaluate_run(args.model, args.shards, args.run_dir, annotations=args.annotations, scans=args.scans,
                               split=None if args.split == "all" else args.split, benchmarks=args.benchmarks,
                               protocol=args.protocol or cfg.protocol, max_new_tokens=cfg.max_new_tokens,
                               meteor=not args.no_meteor, progress=progress, proposals=args.proposals or cfg.proposals,
                               also_score_under=cfg.also_score_under)
        bar.update(bar.total - bar.n)
    if args.json:
        print(json.dumps(jsonable(summary.metrics), indent=2))
    else:
        print(format_metrics_table(summary.metrics))
        print(summary.line())
    return 0
