"""Time the `train-full` Prefect flow: a cold run (every step runs) and a warm re-run (every step skips).

    python benchmarks/train_full_flow.py [--recipe tiny] [--config YAML] [-o KEY=VALUE ...]

Runs flows/train_full.py twice in this process with an ephemeral Prefect (PREFECT_HOME in a
temporary folder; the temporary API server starts once) on synthetic data, METEOR off.
Prints one JSON object: wall seconds of both runs, per-step seconds of the cold run, and the
steps the warm run skipped (the orchestration overhead of a no-op re-run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path


def main() -> None:
    from vidllm.config import add_config_options

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_options(parser, recipe="tiny", recipe_help="config recipe (default tiny)",
                       set_aliases=("-o", "--override"), set_help="config override (repeatable)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="vidllm-bench-flow-") as tmp:
        from flows.demo import use_ephemeral_prefect

        use_ephemeral_prefect(Path(tmp) / "prefect_home")
        from flows.train_full import train_full

        runs = []
        for _ in range(2):
            start = time.perf_counter()
            results = train_full(recipe=args.recipe, config_path=args.config, overrides=args.overrides,
                                 work_dir=str(Path(tmp) / "work"), meteor=False)
            runs.append((time.perf_counter() - start, results))
    (cold_s, cold), (warm_s, warm) = runs
    print(json.dumps({
        "benchmark": "train_full_flow",
        "recipe": args.recipe,
        "cold_run_s": round(cold_s, 2),
        "cold_steps_s": {step: r["seconds"] for step, r in cold.items()},
        "warm_run_s": round(warm_s, 2),
        "warm_skipped": [step for step, r in warm.items() if r["status"] == "skipped"],
        "warm_ran": [step for step, r in warm.items() if r["status"] != "skipped"],
        "machine": f"{platform.machine()}, {os.cpu_count()} cpu",
    }))


if __name__ == "__main__":
    main()
