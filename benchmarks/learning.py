"""Does the model learn 3D reasoning from the video? `vidllm ablate` on the learning recipe.

Trains every variant (full, blind, gt_geometry, no_cta, no_md, single_stage by default) on the
same 200 synthetic scenes, seeds and steps, scores each on the held-out (val) scenes, and checks
the goals against the blind control:

- QA EM full ≥ blind + 0.20, with colour and counting each above blind;
- ScanRefer Acc@0.25 with the model's own proposals ≥ 0.5 and ≥ blind + 0.3;
- pose AUC@30 ≥ 0.6 and depth δ1 ≥ 0.9.

Prints one JSON object (the ablation table, per-variant timings, each goal met or missed).

    python benchmarks/learning.py                         # ~15-30 min on 2 CPU cores
    python benchmarks/learning.py --variants full,blind --out /tmp/learning
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEFAULT_VARIANTS = "full,blind,gt_geometry,no_cta,no_md,single_stage"


def goals(table: dict[str, dict[str, float | None]]) -> dict[str, dict]:
    """Each goal: the measured values and whether it is met (None: a variant it needs did not run)."""
    full, blind = table.get("full"), table.get("blind")

    def value(row, key):
        return None if row is None else row.get(key)

    def check(name, ok, **measured):
        out[name] = {"met": ok, **measured}

    out: dict[str, dict] = {}
    f_em, b_em = value(full, "QA EM"), value(blind, "QA EM")
    check("qa_em_full_ge_blind_plus_0.20", None if None in (f_em, b_em) else f_em >= b_em + 0.20, full=f_em, blind=b_em)
    for family in ("colour", "count"):
        f, b = value(full, family), value(blind, family)
        check(f"qa_{family}_above_blind", None if None in (f, b) else f > b, full=f, blind=b)
    f_ref, b_ref = value(full, "Ref@.25"), value(blind, "Ref@.25")
    check("scanrefer_acc25_ge_0.5", None if f_ref is None else f_ref >= 0.5, full=f_ref)
    check("scanrefer_acc25_ge_blind_plus_0.3", None if None in (f_ref, b_ref) else f_ref >= b_ref + 0.3,
          full=f_ref, blind=b_ref)
    auc, delta = value(full, "AUC@30"), value(full, "δ1")
    check("pose_auc30_ge_0.6", None if auc is None else auc >= 0.6, full=auc)
    check("depth_delta1_ge_0.9", None if delta is None else delta >= 0.9, full=delta)
    return out


def main() -> None:
    from vidllm.config import add_config_options

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_options(parser, recipe="learning", recipe_help="config recipe (default: learning)")
    parser.add_argument("--variants", default=DEFAULT_VARIANTS)
    parser.add_argument("--out", default="benchmark_learning", help="work directory (reused across runs)")
    args = parser.parse_args()

    import logging

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from vidllm.ablate import format_table, run_ablation

    start = time.monotonic()
    variants = [v for v in args.variants.split(",") if v]
    result = run_ablation(args.recipe, variants, args.out, overrides=args.overrides, yaml_path=args.config,
                          progress=False)
    table = {name: entry["table"] for name, entry in result["variants"].items()}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1]).stdout.strip()
    print(json.dumps({
        "benchmark": "learning", "recipe": args.recipe, "overrides": args.overrides, "commit": commit,
        "machine": f"{platform.machine()}, {os.cpu_count()} cpu", "date": time.strftime("%Y-%m-%d"),
        "wall_seconds": round(time.monotonic() - start, 1), "data_seconds": round(result["data_seconds"], 1),
        "seconds": {name: {k: round(v, 1) for k, v in entry["seconds"].items()} for name, entry in result["variants"].items()},
        "reused": [name for name, entry in result["variants"].items() if entry.get("reused")],
        "table": table, "goals": goals(table), "markdown": format_table(result),
    }, indent=2))


if __name__ == "__main__":
    main()
