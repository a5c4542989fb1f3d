"""`vidllm report RUN_DIR`: paper-style markdown + HTML report with plots for a run directory."""

from __future__ import annotations

import argparse
from pathlib import Path

from tqdm import tqdm


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    parser.description = (
        "Write RUN_DIR/report.md, RUN_DIR/report.html and RUN_DIR/plots/*.png from the run directory "
        "(config.yaml, metrics.json, train_log.csv, predictions/*.jsonl, geometry/<scene>.npz; "
        "layout in vidllm/artifacts/run_dir.py). Missing parts give empty tables or no plot."
    )
    parser.add_argument("run_dir", type=Path, help="run directory")
    parser.add_argument("--max-scenes", type=int, default=2, help="scenes from geometry/ to plot")


def run(args: argparse.Namespace) -> int:
    from vidllm.eval.report import build_report

    with tqdm(desc="report", unit="step", leave=False) as bar:
        def progress(message: str) -> None:
            bar.set_postfix_str(message)
            bar.update()

        report = build_report(args.run_dir, max_scenes=args.max_scenes, progress=progress)
    print(f"wrote {report.markdown}")
    print(f"wrote {report.html}")
    for plot in report.plots:
        print(f"wrote {plot}")
    return 0
