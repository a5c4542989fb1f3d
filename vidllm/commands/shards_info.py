"""`vidllm shards-info URI`: summarise a shard dataset from its manifest."""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("uri", help="shard folder or s3://bucket/prefix containing manifest.parquet")
    parser.add_argument("--json", action="store_true",
                        help='print {"samples", "shards", "frames", "bytes", "config_digest"} as JSON '
                             '(with --verify, also "verify": {ok, problems, ...})')
    parser.add_argument("--verify", action="store_true",
                        help="read every shard and check it against the manifest: sizes, each sample's content "
                             "digest and members, keys listed or stored twice (exit 1 on a problem)")


def run(args: argparse.Namespace) -> int:
    from vidllm.data.shards.format import shards_info

    info = shards_info(args.uri)
    if args.verify:
        from vidllm.data.shards.format import verify_shards

        info["verify"] = verify_shards(args.uri, progress=not args.json and sys.stderr.isatty())
    if args.json:
        print(json.dumps(info))
    else:
        print(f"{args.uri}: {info['samples']} samples in {info['shards']} shards, {info['frames']} frames, "
              f"{info['bytes'] / 1e6:.1f} MB, config {str(info['config_digest'])[:12]}")
        if args.verify:
            report = info["verify"]
            for problem in report["problems"]:
                print(f"  FAIL {problem}", file=sys.stderr)
            if report["unlisted_shards"]:
                print(f"  note: shard files not in the manifest (superseded): {', '.join(report['unlisted_shards'])}")
            print(f"verify: {report['verified_samples']} of {report['samples']} samples intact"
                  + ("" if report["ok"] else f", {len(report['problems'])} problem(s)"))
    return 1 if args.verify and not info["verify"]["ok"] else 0
