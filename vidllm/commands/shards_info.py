"""`vidllm shards-info URI`: summarise a shard dataset from its manifest."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("uri", help="shard folder or s3://bucket/prefix containing manifest.parquet")
    parser.add_argument("--json", action="store_true",
                        help='print {"samples", "shards", "frames", "bytes", "config_digest"} as JSON')


def run(args: argparse.Namespace) -> int:
    from vidllm.data.shards import shards_info

    info = shards_info(args.uri)
    if args.json:
        print(json.dumps(info))
    else:
        print(f"{args.uri}: {info['samples']} samples in {info['shards']} shards, {info['frames']} frames, "
              f"{info['bytes'] / 1e6:.1f} MB, config {str(info['config_digest'])[:12]}")
    return 0
