"""Training throughput of Stage 1 and Stage 2 on CPU (single process), on generated scenes.

Generates synthetic ScanNet-format scenes for the recipe, shards them (no Ray), writes random
teachers and their feature cache, then runs `train_stage1` and `train_stage2` for `--steps`
steps each and prints JSON with, per stage: samples/s, tokens/s, data-wait share (time
waiting for data / step time) and seconds per step, as logged in train_log.csv (the first
logged window, which includes warm-up allocations, is left out).

    python benchmarks/train_step.py --recipe tiny --steps 12
    python benchmarks/train_step.py --recipe demo --steps 8
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path


def _write_shards(dataset, cfg, out: Path) -> None:
    from vidllm.data.prepare import write_scenes_in_process

    out.mkdir(parents=True)  # a fresh folder: the benchmark never reuses shards
    write_scenes_in_process([(s.scene_id, s.path) for s in dataset.scenes], dataset.annotations_dir, out,
                            cfg.data.prep, label_map=str(dataset.label_map))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="tiny", help="recipe: tiny or demo (default: tiny)")
    parser.add_argument("--steps", type=int, default=12, help="steps per stage (default: 12)")
    parser.add_argument("--batch-size", type=int, default=1, help="scene clips per step (default: 1)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

    import numpy as np
    import torch

    from vidllm.artifacts.run_dir import read_train_log
    from vidllm.config import load_config
    from vidllm.data.synthetic.generate import generate_dataset
    from vidllm.data.teacher_cache import build_teacher_cache, init_random_teachers
    from vidllm.train import train_stage1, train_stage2

    torch.set_num_threads(args.threads)
    overrides = []
    for stage in ("stage1", "stage2"):
        overrides += [f"train.{stage}.steps={args.steps}", f"train.{stage}.log_every=1",
                      f"train.{stage}.checkpoint_every={args.steps}", f"train.{stage}.batch_size={args.batch_size}"]
    cfg = load_config(args.recipe, overrides=overrides)
    result: dict = {"recipe": args.recipe, "steps": args.steps, "batch_size": args.batch_size,
                    "threads": args.threads, "cpu": platform.processor() or platform.machine(),
                    "cores": os.cpu_count(), "frames": cfg.model.frames}
    with tempfile.TemporaryDirectory(prefix="vidllm-bench-train-") as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        dataset = generate_dataset(root / "scannet", cfg.data.synth, progress=False)
        _write_shards(dataset, cfg, root / "shards")
        result["data_prep_s"] = round(time.perf_counter() - start, 2)
        teachers = init_random_teachers(cfg.teachers, root / "teachers")
        cfg = cfg.model_copy(update={"teachers": teachers})
        start = time.perf_counter()
        summary = build_teacher_cache(str(root / "shards"), str(root / "cache"), teachers, progress=False)
        result["teacher_cache_s"] = round(time.perf_counter() - start, 3)
        start = time.perf_counter()
        warm = build_teacher_cache(str(root / "shards"), str(root / "cache"), teachers, progress=False)
        result["teacher_cache_warm_s"] = round(time.perf_counter() - start, 3)
        result["teacher_cache"] = {"computed": summary.computed, "warm_forward_passes": warm.forward_passes}

        run = root / "run"
        start = time.perf_counter()
        stage1 = train_stage1(cfg, str(root / "shards"), str(root / "cache"), run, progress=False)
        result["stage1_wall_s"] = round(time.perf_counter() - start, 2)
        start = time.perf_counter()
        train_stage2(cfg, str(root / "shards"), run, init_model=stage1.model_dir, progress=False)
        result["stage2_wall_s"] = round(time.perf_counter() - start, 2)

        log = read_train_log(run / "train_log.csv")
        import csv

        rows = list(csv.DictReader((run / "train_log.csv").open()))
        for stage in ("stage1", "stage2"):
            picked = [r for r in rows if r["stage"] == stage][1:]  # skip the first (warm-up) step
            sps = np.array([float(r["samples_per_s"]) for r in picked])
            result[stage] = {
                "samples_per_s": round(float(np.median(sps)), 3),
                "tokens_per_s": round(float(np.median([float(r["tokens_per_s"]) for r in picked])), 1),
                "data_wait_share": round(float(np.median([float(r["data_wait_share"]) for r in picked])), 4),
                "seconds_per_step": round(float(np.median(args.batch_size / sps)), 4),
                "loss_first": round(float(log.losses["total"][[s == stage for s in log.stages]][0]), 4),
                "loss_last": round(float(log.losses["total"][[s == stage for s in log.stages]][-1]), 4),
            }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
