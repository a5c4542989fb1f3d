"""Prefect flow `train-full`: (synth →) prepare → (pretrain →) teachers → stage-1 → stage-2 → evaluate → report.

A thin loop over the step table `flows.pipeline.PIPELINE` (dvc.yaml is generated from the same
table): each step is a task calling its function of `flows.steps`, which calls one library function
or skips when its outputs are already valid (see flows/steps.py). Run it

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
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.states import Completed

from flows import pipeline, steps
from vidllm.artifacts import run_dir as rd
from vidllm.artifacts import storage
from vidllm.config import add_config_options, load_config
from vidllm.errors import VidLLMError
from vidllm.train.checkpoint import CHECKPOINTS_DIR


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


def _result_key(context, parameters) -> str:
    """One result record per task run, never read back as a cache: our own digests decide what re-runs."""
    return f"{context.task.name}-{context.task_run.id}"


# Results are persisted as JSON (PREFECT_LOCAL_STORAGE_PATH, default PREFECT_HOME/storage) and the API's
# task-run states point at them. Prefect's cache is never read (refresh_cache): the steps' digests decide.
_task = dict(cache_key_fn=_result_key, refresh_cache=True, persist_result=True, result_serializer="json")


def _transient(task, task_run, state) -> bool:
    """Retry what a retry can fix (network, S3, a full disk freed meanwhile), not a VidLLMError (bad input,
    wrong credentials), which would fail the same way again."""
    try:
        state.result(raise_on_failure=True)
    except VidLLMError:
        return False
    except BaseException:
        return True
    return False


# I/O tasks (they read and write datasets, shards, the teacher cache, the report; local or S3) retry
# transient failures. Their timeout is the flow's `io_timeout_s`, applied per call.
_io_task = dict(_task, retries=2, retry_delay_seconds=[10, 60], retry_jitter_factor=0.5,
                retry_condition_fn=_transient)


def _state(result: steps.StepResult):
    """The task's return: a skipped step ends in a named `Skipped` state (type COMPLETED) with its result."""
    data = result.to_dict()
    if result.status == "skipped":
        return Completed(name="Skipped", message=f"outputs valid (digest {result.digest[:12]})", data=data)
    return data


def _step_task(step: pipeline.Step):
    """The Prefect task of one table step: I/O steps retry transient failures (`_io_task`), the others run once."""
    def run_step(inputs: steps.StepInputs):
        return _state(step.run(inputs))

    # Prefect keys a task by its function's name: one name per step keeps their task runs apart.
    run_step.__name__ = run_step.__qualname__ = f"{step.name.replace('-', '')}_task"
    return task(name=step.name, **(_io_task if step.io else _task))(run_step)


TASKS = {step.name: _step_task(step) for step in pipeline.PIPELINE}


def _run(task_fn, *args, timeout_s: float | None = None) -> dict[str, Any]:
    """Run one task and return its result. In-process tasks are called in the flow's thread, where Prefect
    can interrupt them at their timeout; on Ray (RAY_ADDRESS) they are submitted to the RayTaskRunner."""
    if timeout_s is not None:
        task_fn = task_fn.with_options(timeout_seconds=timeout_s)
    if os.environ.get("RAY_ADDRESS"):
        return task_fn.submit(*args).result()
    return task_fn(*args, return_state=True).result()  # a task that returns a State would hand back the State


def _publish_artifacts(paths: steps.Paths, storage_path: str) -> None:
    """What the Prefect UI shows for a run: the metrics table, the report, links to models and checkpoints."""
    metrics_path = paths.run_dir / rd.METRICS_FILE
    if metrics_path.is_file():
        rows = [{"benchmark": bench, "metric": name, "value": value}
                for bench, scored in sorted(rd.read_json(metrics_path).items()) if isinstance(scored, dict)
                for name, value in sorted((scored.get("metrics") or {}).items())
                if isinstance(value, (int, float)) and not isinstance(value, bool)]
        create_table_artifact(key="vidllm-metrics", table=rows,
                              description=f"Scores of {paths.run_dir} ({metrics_path.name}; fractions and metres)")
    report_md = paths.run_dir / rd.REPORT_MD
    if report_md.is_file():
        create_markdown_artifact(key="vidllm-report", markdown=report_md.read_text(),
                                 description=f"{report_md} (figures in report.html)")
    links = {"vidllm-model": paths.run_dir / "model", "vidllm-stage1-model": paths.run_dir / "stage1_model",
             "vidllm-checkpoints": paths.run_dir / CHECKPOINTS_DIR,
             "vidllm-report-html": paths.run_dir / rd.REPORT_HTML}
    for key, path in links.items():
        if path.exists():
            create_link_artifact(key=key, link=path.as_uri(), link_text=str(path))
    if storage.is_s3(storage_path):  # Ray Train checkpoints on S3
        create_link_artifact(key="vidllm-ray-checkpoints", link=storage_path, link_text=storage_path)


@flow(name="train-full", task_runner=_task_runner(), log_prints=True, persist_result=True, result_serializer="json")
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
    io_timeout_s: float | None = 6 * 3600,
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
    io_timeout_s: timeout of each I/O task (synth, prepare, teachers, report); None = none. Those tasks
        also retry transient failures twice.

    One run at a time per work directory: a second one fails at once naming the holder (an flock the
    kernel releases when the holder exits).
    """
    logger = get_run_logger()
    cfg = load_config(recipe, config_path, overrides, params)
    if synth_scenes is not None:
        cfg.data.synth.scenes = synth_scenes
    paths = steps.Paths.resolve(work_dir, data_uri=data_uri, annotations_uri=annotations_uri, label_map=label_map,
                                shards_uri=shards_uri, cache_uri=cache_uri, run_dir=run_dir)
    logger.info("train-full: recipe %s, run dir %s, shards %s, teacher cache %s", cfg.recipe, paths.run_dir,
                paths.shards_uri, paths.cache_uri)

    with steps.work_dir_lock(paths):
        def call(step: pipeline.Step, inputs: steps.StepInputs) -> dict[str, Any]:
            result = _run(TASKS[step.name], inputs, timeout_s=io_timeout_s if step.io else None)
            logger.info("%-9s %-7s %.1f s", result["step"], result["status"], result["seconds"])
            return result

        results = pipeline.run_steps(cfg, paths, call, split=None if split == "all" else split,
                                     benchmarks=benchmarks, meteor=meteor, use_ray=use_ray_train, logger=logger)
        summary_path = steps.write_summary(paths, list(results.values()))
        _publish_artifacts(paths, cfg.train.storage_path)
        logger.info("train-full done: metrics %s, report %s, summary %s",
                    results["evaluate"]["outputs"].get("metrics"), results["report"]["outputs"].get("markdown"),
                    summary_path)
    return results


def build_parser() -> argparse.ArgumentParser:
    """The command line of `python -m flows.train_full` (also what infra/kuberay-rayjob.yaml runs)."""
    parser = argparse.ArgumentParser(prog="python -m flows.train_full", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_options(parser, recipe="demo", config_help="config file over the recipe (default: none)")
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        # Locked here as well as in the flow, so a busy work dir is one line, not Prefect's failure traceback.
        with steps.work_dir_lock(steps.Paths.resolve(args.work_dir, run_dir=args.run_dir)):
            results = train_full(recipe=args.recipe, config_path=args.config, overrides=args.overrides,
                                 work_dir=args.work_dir, data_uri=args.data, annotations_uri=args.annotations,
                                 label_map=args.label_map, shards_uri=args.shards, cache_uri=args.cache,
                                 run_dir=args.run_dir, synth_scenes=args.synth_scenes, split=args.split,
                                 meteor=not args.no_meteor, use_ray_train=args.ray_train)
    except VidLLMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({step: r["status"] for step, r in results.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
