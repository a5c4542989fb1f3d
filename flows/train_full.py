"""Prefect flow `train-full`: (synth →) prepare → teachers → stage-1 → stage-2 → evaluate → report.

A thin shell: every task calls one function of `flows.steps`, which calls one library function
and skips when its outputs are already valid (see flows/steps.py). Run it

- directly:            python -m flows.train_full --recipe tiny --work-dir runs/tiny
- as a deployment:     prefect deploy --name default   (prefect.yaml), then
                       prefect deployment run 'train-full/default' --param recipe=demo
                       with a worker: prefect worker start --pool vidllm-process

Tasks run in the flow process by default; with RAY_ADDRESS set they run on that Ray cluster
through prefect-ray's RayTaskRunner (and `use_ray_train=True` makes training a Ray Train job).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows import steps
from vidllm.config import VidLLMConfig, load_config
from vidllm.eval.evaluate import EVAL_BENCHMARKS


def _task_runner():
    """RayTaskRunner on the cluster named by RAY_ADDRESS, else Prefect's default (tasks in this process)."""
    address = os.environ.get("RAY_ADDRESS")
    if not address:
        return None
    from prefect_ray import RayTaskRunner

    from vidllm.ray_session import forwarded_env

    # Workers get the S3 endpoint/region/profile and offline switches, never credentials: Ray writes
    # runtime_envs into its logs in clear text; the cluster uses its own credentials (or AWS_PROFILE).
    return RayTaskRunner(address=address, init_kwargs={"runtime_env": {"env_vars": forwarded_env()}})


# Our own digests decide what re-runs, so Prefect's result cache is off for every task.
_task = dict(cache_policy=NO_CACHE, persist_result=False)


@task(name="synth", **_task)
def synth_task(cfg: VidLLMConfig, paths: steps.Paths) -> dict[str, Any]:
    return steps.run_synth(cfg, paths).to_dict()


@task(name="prepare", **_task)
def prepare_task(cfg: VidLLMConfig, paths: steps.Paths, upstream: str | None) -> dict[str, Any]:
    return steps.run_prepare(cfg, paths, upstream).to_dict()


@task(name="teachers", **_task)
def teachers_task(cfg: VidLLMConfig, paths: steps.Paths, upstream: str) -> dict[str, Any]:
    return steps.run_teachers(cfg, paths, upstream).to_dict()


@task(name="stage-1", **_task)
def stage1_task(cfg: VidLLMConfig, paths: steps.Paths, upstream: str, use_ray: bool) -> dict[str, Any]:
    return steps.run_stage1(cfg, paths, upstream, use_ray=use_ray).to_dict()


@task(name="stage-2", **_task)
def stage2_task(cfg: VidLLMConfig, paths: steps.Paths, upstream: str, init_model: str | None,
                use_ray: bool) -> dict[str, Any]:
    return steps.run_stage2(cfg, paths, upstream, init_model, use_ray=use_ray).to_dict()


@task(name="evaluate", **_task)
def evaluate_task(cfg: VidLLMConfig, paths: steps.Paths, upstream: str, model_dir: str, split: str | None,
                  benchmarks: list[str], meteor: bool) -> dict[str, Any]:
    return steps.run_evaluate(cfg, paths, upstream, model_dir, split=split, benchmarks=benchmarks,
                              meteor=meteor).to_dict()


@task(name="control", **_task)
def control_task(cfg: VidLLMConfig, paths: steps.Paths, upstream: str, init_model: str | None, split: str | None,
                 benchmarks: list[str], meteor: bool) -> dict[str, Any]:
    return steps.run_control(cfg, paths, upstream, init_model, split=split, benchmarks=benchmarks,
                             meteor=meteor).to_dict()


@task(name="report", **_task)
def report_task(paths: steps.Paths, upstream: str) -> dict[str, Any]:
    return steps.run_report(paths, upstream).to_dict()


@flow(name="train-full", task_runner=_task_runner(), log_prints=True, persist_result=False)
def train_full(
    recipe: str = "demo",
    config_path: str | None = None,
    overrides: list[str] | None = None,
    params: dict[str, Any] | None = None,
    work_dir: str = "runs/train-full",
    data_uri: str | None = None,
    annotations_uri: str | None = None,
    label_map: str | None = None,
    shards_uri: str | None = None,
    cache_uri: str | None = None,
    run_dir: str | None = None,
    synth_scenes: int | None = None,
    split: str = "val",
    benchmarks: list[str] | None = None,
    meteor: bool = True,
    use_ray_train: bool = False,
) -> dict[str, Any]:
    """Train and evaluate Vid-LLM end to end; returns {step: result} and writes RUN_DIR/flow_summary.json.

    recipe / config_path / params / overrides: the config (recipe ← YAML ← params dict ← dotted overrides).
    work_dir: default home of data/, shards/, teacher_cache/, teachers/ and run/ (relative to the worker's cwd).
    data_uri: a ScanNet dataset root or scans/ folder (local or s3://); None = generate the synthetic
        dataset (data.synth, `synth_scenes` scenes) under work_dir/data.
    annotations_uri / label_map: benchmark annotation folder and scannetv2-labels.combined.tsv for data_uri.
    shards_uri / cache_uri / run_dir: override the defaults under work_dir (shards and cache may be s3://).
    split / benchmarks / meteor: what `evaluate` predicts and scores ("all" = every split).
    use_ray_train: run both training stages as Ray Train jobs (train.num_workers workers).
    """
    logger = get_run_logger()
    cfg = load_config(recipe, config_path, overrides, params)
    if synth_scenes is not None:
        cfg.data.synth.scenes = synth_scenes
    paths = steps.Paths.resolve(work_dir, data_uri=data_uri, annotations_uri=annotations_uri, label_map=label_map,
                                shards_uri=shards_uri, cache_uri=cache_uri, run_dir=run_dir)
    logger.info("train-full: recipe %s, run dir %s, shards %s, teacher cache %s", cfg.recipe, paths.run_dir,
                paths.shards_uri, paths.cache_uri)

    results: dict[str, dict[str, Any]] = {}

    def record(result: dict[str, Any]) -> dict[str, Any]:
        results[result["step"]] = result
        logger.info("%-9s %-7s %.1f s", result["step"], result["status"], result["seconds"])
        return result

    synth_digest = None
    if paths.synthetic:
        synth_digest = record(synth_task.submit(cfg, paths).result())["digest"]
    prepared = record(prepare_task.submit(cfg, paths, synth_digest).result())
    if cfg.train.single_stage:  # the no-Stage-1 ablation: no teachers, Stage 2 from the config's sources
        logger.info("train.single_stage: skipping teachers and stage 1")
        stage2 = record(stage2_task.submit(cfg, paths, prepared["digest"], None, use_ray_train).result())
    else:
        cfg = steps.resolve_teachers(cfg, paths)
        cached = record(teachers_task.submit(cfg, paths, prepared["digest"]).result())
        stage1 = record(stage1_task.submit(cfg, paths, cached["digest"], use_ray_train).result())
        stage2 = record(stage2_task.submit(cfg, paths, stage1["digest"], stage1["outputs"]["model_dir"],
                                           use_ray_train).result())
    evaluated = record(evaluate_task.submit(cfg, paths, stage2["digest"], stage2["outputs"]["model_dir"],
                                            None if split == "all" else split,
                                            list(benchmarks or EVAL_BENCHMARKS), meteor).result())
    upstream = evaluated["digest"]
    if cfg.eval.blind_control:  # the control every learning claim is measured against
        init = None if cfg.train.single_stage else stage1["outputs"]["model_dir"]
        upstream = record(control_task.submit(cfg, paths, upstream, init, None if split == "all" else split,
                                              list(benchmarks or EVAL_BENCHMARKS), meteor).result())["digest"]
    record(report_task.submit(paths, upstream).result())
    summary_path = steps.write_summary(paths, list(results.values()))
    logger.info("train-full done: metrics %s, report %s, summary %s", evaluated["outputs"].get("metrics"),
                results["report"]["outputs"].get("markdown"), summary_path)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.train_full", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="demo", help="config recipe: tiny, demo or paper (default: demo)")
    parser.add_argument("--config", default=None, metavar="YAML", help="config file over the recipe (default: none)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="dotted config override, repeatable")
    parser.add_argument("--work-dir", default="runs/train-full",
                        help="home of data/, shards/, teacher_cache/ and run/ (default: runs/train-full)")
    parser.add_argument("--data", default=None, metavar="URI",
                        help="ScanNet dataset root (default: generate synthetic scenes)")
    parser.add_argument("--annotations", default=None, metavar="DIR", help="benchmark annotations for --data")
    parser.add_argument("--label-map", default=None, metavar="TSV",
                        help="scannetv2-labels.combined.tsv for --data (default: looked up next to the scans)")
    parser.add_argument("--shards", default=None, metavar="URI", help="shard dataset (default: WORK_DIR/shards)")
    parser.add_argument("--cache", default=None, metavar="URI", help="teacher cache (default: WORK_DIR/teacher_cache)")
    parser.add_argument("--run-dir", default=None, metavar="DIR", help="run directory (default: WORK_DIR/run)")
    parser.add_argument("--synth-scenes", type=int, default=None, help="synthetic scenes (default: recipe)")
    parser.add_argument("--split", default="val", help="evaluation split, or 'all' (default: val)")
    parser.add_argument("--no-meteor", action="store_true", help="skip METEOR in the scores (no Java start)")
    parser.add_argument("--ray-train", action="store_true", help="train with Ray Train (default: single process)")
    args = parser.parse_args(argv)
    results = train_full(recipe=args.recipe, config_path=args.config, overrides=args.overrides,
                         work_dir=args.work_dir, data_uri=args.data, annotations_uri=args.annotations,
                         label_map=args.label_map, shards_uri=args.shards, cache_uri=args.cache, run_dir=args.run_dir,
                         synth_scenes=args.synth_scenes, split=args.split, meteor=not args.no_meteor,
                         use_ray_train=args.ray_train)
    print(json.dumps({step: r["status"] for step, r in results.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
