"""`vidllm ablate`: train variants of a recipe on the same data, seeds and steps; print a Table 6-style table."""

from __future__ import annotations

import argparse
import json

from vidllm.config import add_config_options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from vidllm.ablate import VARIANTS

    names = ", ".join(f"{v.name} ({v.description})" for v in VARIANTS.values())
    add_config_options(parser, recipe="learning",
                       recipe_help="config recipe every variant starts from (default: learning; tiny for a smoke run)",
                       config_help="config file over the recipe",
                       set_help="dotted config override applied to every variant, repeatable")
    parser.add_argument("--variants", default="full,blind",
                        help=f"comma-separated variants, in table order (default: full,blind). Known: {names}")
    parser.add_argument("--out", default="ablate_out", metavar="DIR",
                        help="work directory: shared data, one run per variant, ablation.json (default: ablate_out); "
                             "variants already present for the same config are reused")
    parser.add_argument("--meteor", action="store_true", help="also compute METEOR (starts Java per benchmark)")
    parser.add_argument("--json", action="store_true", help="print ablation.json's content instead of the table")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def run(args: argparse.Namespace) -> int:
    import logging
    import sys

    from vidllm.ablate import ABLATION_FILE, format_table, run_ablation

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]

    def report(name: str, result: dict) -> None:
        spent = ", ".join(f"{k} {v:.0f} s" for k, v in result.get("seconds", {}).items())
        print(f"ablate: {name} done ({'reused' if result.get('reused') else spent})", file=sys.stderr)

    result = run_ablation(args.recipe, variants, args.out, overrides=args.overrides, yaml_path=args.config,
                          meteor=args.meteor, progress=not args.no_progress, on_variant=report)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{args.recipe} recipe, held-out (val) scenes, grounding with {result['variants'][variants[0]]['proposals']}"
              f" proposals; percentages")
        print(format_table(result))
        print(f"\n{args.out}/{ABLATION_FILE}")
    return 0
