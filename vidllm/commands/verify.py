"""`vidllm verify PATH...`: check model directories, checkpoints and run directories against the
sha256 digests recorded when they were written."""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="a model or Stage-1 directory (config.json), a training checkpoint (state.json), or a "
                             "run directory (checks its stage1_model/, model/ and checkpoints/)")
    parser.add_argument("--json", action="store_true", help="print [{path, kind, ok, problems}, ...] as JSON")


def run(args: argparse.Namespace) -> int:
    from vidllm.train.jobs import verify_artifacts

    entries = [entry for path in args.paths for entry in verify_artifacts(path)]
    if args.json:
        print(json.dumps(entries, indent=2))
    else:
        for entry in entries:
            if entry["ok"]:
                print(f"ok    {entry['kind']:<10} {entry['path']}")
            else:
                for problem in entry["problems"]:
                    print(f"FAIL  {entry['kind']:<10} {entry['path']}: {problem}", file=sys.stderr)
    bad = sum(not e["ok"] for e in entries)
    if bad and not args.json:
        print(f"{bad} of {len(entries)} artifact(s) failed verification", file=sys.stderr)
    return 1 if bad else 0
