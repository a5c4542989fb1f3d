"""The train-full pipeline as one table: the Prefect flow runs it, dvc.yaml is generated from it.

Each `Step` names the library function it calls, the config keys it reads, its inputs and its
outputs (as locations: `{data}`, `{shards}`, `{cache}`, `{teachers}`, `{run}`), and the `vidllm`
command of its DVC stage. `flows/train_full.py` runs the steps in table order as Prefect tasks
(`run_steps`); a step's digest chains the digest of the latest step of the run that produced one of
its inputs. `dvc_yaml()` renders the DVC stages of the same table:

    python -m flows.pipeline                # the table
    python -m flows.pipeline --write-dvc    # regenerate dvc.yaml after editing the table
    python -m flows.pipeline --check-dvc    # exit 1 when dvc.yaml is not the table's

DVC runs the graph of a synthetic dataset and two training stages; the steps without a DVC stage
(pretrain, control) and the conditions (`Step.when`) are the flow's alone.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flows import steps
from vidllm.artifacts.files import atomic_write_text
from vidllm.config import VidLLMConfig

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
DVC_FILE = REPO / "dvc.yaml"
# Where the DVC stages keep what the flow keeps under its work directory (steps.Paths.locations()).
DVC_LAYOUT = {"data": "data/synthetic", "shards": "data/shards", "cache": "data/teacher_cache",
              "teachers": "data/teachers", "run": "runs/dvc"}


@dataclass(frozen=True)
class Condition:
    """When a step is part of a flow run."""

    description: str
    holds: Callable[[VidLLMConfig, steps.Paths], bool]


SYNTHETIC = Condition("no data_uri is given", lambda cfg, paths: paths.synthetic)
TWO_STAGES = Condition("train.single_stage is false", lambda cfg, paths: not cfg.train.single_stage)
MINIATURES = Condition("teachers.miniatures is true", lambda cfg, paths: cfg.teachers.miniatures)
BLIND_CONTROL = Condition("eval.blind_control is true", lambda cfg, paths: cfg.eval.blind_control)


@dataclass(frozen=True)
class Step:
    """One row of the table: what the flow runs as a task and, with `dvc_stage`, what that DVC stage declares."""

    name: str  # Prefect task, RUN_DIR/steps/<name>.done.json marker, flow_summary.json entry
    calls: str  # the library function the step runs (module.function)
    run: Callable[[steps.StepInputs], steps.StepResult]  # that call, or a skip when the outputs are valid
    params: tuple[str, ...] = ()  # config keys it reads (its DVC stage's params)
    deps: tuple[str, ...] = ()  # inputs
    outs: tuple[str, ...] = ()  # outputs (in the DVC cache)
    git_outs: tuple[str, ...] = ()  # outputs kept in git beside dvc.lock (DVC `cache: false`)
    metrics: tuple[str, ...] = ()  # DVC metrics files (kept in git)
    dvc_stage: str | None = None  # None: the flow's step only
    cmd: str | None = None  # the DVC stage's command
    io: bool = False  # reads and writes data (local or S3): retries transient failures, has io_timeout_s
    when: tuple[Condition, ...] = ()  # all must hold for the flow to run it
    configure: Callable[[VidLLMConfig, steps.Paths], VidLLMConfig] | None = None  # the config it and later steps see

    @property
    def outputs(self) -> tuple[str, ...]:
        return (*self.outs, *self.git_outs, *self.metrics)


# Config keys no step's params name: they change where or how a run goes, not what it computes (the
# DVC stages get their paths on the command line). tests/flows/test_pipeline.py: every other key is a param.
NOT_RESULT_KEYS = frozenset({
    "data.root", "data.annotations", "data.shards", "train.compile", "train.compile_backend", "train.num_workers",
    "train.strategy", "train.storage_path", "train.max_failures", "train.checkpoints_to_keep", "train.data_cpus",
    "train.single_stage",  # refused by the DVC graph, which always has a Stage 1
})

_TRAIN_COMMON = ("train.weight_decay", "train.betas", "train.grad_clip", "train.precision")

PIPELINE: tuple[Step, ...] = (
    Step("synth", "vidllm.data.synthetic.generate.generate_dataset", steps.run_synth,
         # data.prep.frames: objects are placed to be visible in the clip `prepare` samples
         params=("recipe", "data.synth", "data.prep.frames"),
         outs=("{data}",),
         dvc_stage="synth", cmd="vidllm synth --config params.yaml --out {data} --no-progress",
         io=True, when=(SYNTHETIC,)),
    Step("prepare", "vidllm.data.prepare.prepare_shards", steps.run_prepare,
         params=("recipe", "data.prep"),
         deps=("{data}",), outs=("{shards}",),
         dvc_stage="prepare",
         cmd="vidllm prepare --config params.yaml --scannet {data}/scans --annotations {data}/annotations "
             "--label-map {data}/scannetv2-labels.combined.tsv --out {shards} --no-progress",
         io=True),
    # DVC: the teachers stage's --init-random trains (or reuses) the miniatures when teachers.miniatures is set.
    Step("pretrain", "vidllm.pretrain.pretrain_teachers", steps.run_pretrain,
         params=("teachers.pretrain", "teachers.semantic_image_size", "teachers.random_hidden_size",
                 "teachers.random_num_layers", "teachers.random_num_heads", "teachers.random_patch_size",
                 "data.synth", "data.prep.short_side", "data.prep.patch_multiple", "model.encoder",
                 "model.aggregator", "model.heads", "model.frames", "train.seed", "train.weight_decay",
                 "train.betas", "train.grad_clip", "train.loss_weights"),
         outs=("{teachers}/miniature",),
         when=(TWO_STAGES, MINIATURES)),
    Step("teachers", "vidllm.data.teacher_cache.build_teacher_cache", steps.run_teachers,
         params=("recipe", "teachers"),
         deps=("{shards}",), outs=("{teachers}", "{cache}"),
         dvc_stage="teachers",
         cmd="vidllm teachers --config params.yaml --shards {shards} --cache {cache} --init-random {teachers} "
             "--no-progress",
         io=True, when=(TWO_STAGES,), configure=steps.resolve_teachers),
    Step("stage-1", "vidllm.train.train_stage1", steps.run_stage1,
         params=("recipe", "model", "train.seed", "train.distill_lambda", "train.distill_teachers",
                 "train.distill_sc_tokens", "train.stage1", *_TRAIN_COMMON),
         deps=("{shards}", "{cache}", "{teachers}"), outs=("{run}/stage1_model", "{run}/checkpoints/stage1"),
         dvc_stage="stage1",
         cmd="vidllm train --stage 1 --config params.yaml --shards {shards} --teacher-cache {cache} "
             "--init-random {teachers} --run-dir {run} --no-progress",
         when=(TWO_STAGES,)),
    Step("stage-2", "vidllm.train.train_stage2", steps.run_stage2,
         params=("recipe", "model", "train.seed", "train.stage2", "train.instructions_per_scene",
                 "train.max_text_tokens", "train.task_weights", "train.loss_weights", "train.share_vision_prefix",
                 *_TRAIN_COMMON),
         deps=("{shards}", "{run}/stage1_model"), outs=("{run}/model", "{run}/checkpoints/stage2"),
         dvc_stage="stage2",
         cmd="vidllm train --stage 2 --config params.yaml --shards {shards} --init-model {run}/stage1_model "
             "--run-dir {run} --no-progress"),
    Step("evaluate", "vidllm.eval.evaluate.evaluate_run", steps.run_evaluate,
         params=("recipe", "eval"),
         deps=("{shards}", "{data}", "{run}/model"), outs=("{run}/predictions", "{run}/geometry"),
         metrics=("{run}/metrics.json",),
         dvc_stage="evaluate",
         cmd="vidllm evaluate --config params.yaml --model {run}/model --shards {shards} --run-dir {run} "
             "--annotations {data}/annotations --scans {data}/scans --split val"),
    Step("control", "vidllm.ablate.blind_control", steps.run_control,
         params=("model", "train", "eval"),
         deps=("{shards}", "{data}", "{run}/stage1_model", "{run}/metrics.json"), outs=("{run}/ablation.json",),
         when=(BLIND_CONTROL,)),
    Step("report", "vidllm.eval.report.build_report", steps.run_report,
         deps=("{run}/metrics.json", "{run}/predictions", "{run}/geometry", "{run}/ablation.json"),
         git_outs=("{run}/report.md", "{run}/report.html"), outs=("{run}/plots",),
         dvc_stage="report", cmd="vidllm report {run}",
         io=True),
)


def step(name: str, pipeline: tuple[Step, ...] = PIPELINE) -> Step:
    return next(s for s in pipeline if s.name == name)


def producers(target: Step, pipeline: tuple[Step, ...] = PIPELINE) -> list[Step]:
    """The steps before `target` in the table that write one of its inputs, in table order."""
    before = pipeline[:pipeline.index(target)]
    return [s for s in before if set(s.outputs) & set(target.deps)]


def upstream_digest(target: Step, results: dict[str, dict[str, Any]],
                    pipeline: tuple[Step, ...] = PIPELINE) -> str | None:
    """The digest `target` chains: that of the latest step of this run that wrote one of its inputs.

    That step's digest chains its own inputs' in turn, so an edit re-runs everything downstream of it."""
    ran = [s for s in producers(target, pipeline) if s.name in results]
    return results[ran[-1].name]["digest"] if ran else None


def run_steps(cfg: VidLLMConfig, paths: steps.Paths,
              call: Callable[[Step, steps.StepInputs], dict[str, Any]], *, split: str | None,
              benchmarks: list[str] | None, meteor: bool, use_ray: bool = False, progress: bool = False,
              logger: logging.Logger | logging.LoggerAdapter = log,
              pipeline: tuple[Step, ...] = PIPELINE) -> dict[str, dict[str, Any]]:
    """Run the table's steps in order; `call(step, inputs)` runs one and returns its `StepResult.to_dict()`
    (the flow: as a Prefect task). Returns {step: result} of the steps this config and `paths` include."""
    results: dict[str, dict[str, Any]] = {}
    for entry in pipeline:
        unmet = [c.description for c in entry.when if not c.holds(cfg, paths)]
        if unmet:
            logger.info("%s: left out (it runs only when %s)", entry.name, " and ".join(unmet))
            continue
        if entry.configure is not None:
            cfg = entry.configure(cfg, paths)
        inputs = steps.StepInputs(cfg, paths, upstream=upstream_digest(entry, results, pipeline),
                                  results=dict(results), split=split, benchmarks=benchmarks, meteor=meteor,
                                  use_ray=use_ray, progress=progress)
        results[entry.name] = call(entry, inputs)
    return results


# ----------------------------------------------------------------------------- dvc.yaml


DVC_HEADER = """\
# Generated from the step table in flows/pipeline.py (`python -m flows.pipeline --write-dvc`), which the
# Prefect flow flows/train_full.py runs too: edit the table, then regenerate. tests/flows/test_pipeline.py
# fails when the two differ.
#
# The train-full pipeline as DVC stages (the same library functions as the flow, through the `vidllm`
# CLI). Config: params.yaml over its recipe. `dvc repro` runs what changed; a second run does nothing;
# `dvc push` / `dvc pull` move data, teacher features and checkpoints to the default remote (e.g. S3:
# see infra/README.md).
#
# Data: the synth stage generates the embedded synthetic ScanNet-format dataset (it tracks
# data.prep.frames: objects are placed to be visible in the clip prepare samples). For real ScanNet,
# track the dataset instead (`dvc add data/scannet`) and point prepare at it.
# Teachers: --init-random fills unset teachers from data/teachers (no downloads): random-init ones sized
# by the recipe, or with `teachers.miniatures: true` the miniature pretrained VGGT + DINO + CLIP
# (trained once into data/teachers/miniature, then reused; stage1 then also starts from that VGGT). For
# real teachers set teachers.geometry / teachers.semantic in params.yaml.
# Pretrained parts (model.init.vggt, model.encoder.pretrained, model.llm.pretrained; see
# params.paper.yaml) are read from the `model` params of stage1 / stage2, so changing a path re-runs
# them; add the files themselves to those steps' deps in the table (e.g. "pretrained/vggt-1b.safetensors")
# to re-run when their contents change. With train.single_stage=true run the flow instead: this
# graph always has a Stage 1.
"""

DVC_PLOTS = """\
# `dvc plots show` / `dvc plots diff`: the training curves both stages append to (one `stage` column).
# train_log.csv is tracked in git with metrics.json and report.md (cache: false), so a fresh clone shows
# it before any `dvc pull`; the report's PNG figures (runs/dvc/plots) are a cached output, in the
# report after `dvc pull`.
plots:
  - runs/dvc/train_log.csv:
      x: step
      y: loss/total
      title: training loss (both stages)
"""

_WIDTH = 110


def dvc_stages(pipeline: tuple[Step, ...] = PIPELINE, layout: dict[str, str] = DVC_LAYOUT) -> dict[str, Any]:
    """dvc.yaml's `stages` as the table gives them. Inputs written by a step without a DVC stage are
    left out of `deps` (DVC never produces them)."""
    flow_only = {out for s in pipeline if s.dvc_stage is None for out in s.outputs}
    stages: dict[str, Any] = {}
    for s in pipeline:
        if s.dvc_stage is None:
            continue
        stage: dict[str, Any] = {"cmd": s.cmd.format(**layout)}
        deps = [d.format(**layout) for d in s.deps if d not in flow_only]
        if deps:
            stage["deps"] = deps
        if s.params:
            stage["params"] = list(s.params)
        outs = [{o.format(**layout): {"cache": False}} for o in s.git_outs] + [o.format(**layout) for o in s.outs]
        if outs:
            stage["outs"] = outs
        if s.metrics:
            stage["metrics"] = [{m.format(**layout): {"cache": False}} for m in s.metrics]
        stages[s.dvc_stage] = stage
    return stages


def _fold(cmd: str, indent: str) -> list[str]:
    """A long command as a YAML folded block, broken between options, never inside `--flag value`."""
    groups: list[str] = []
    for token in cmd.split():
        if groups and groups[-1].startswith("-") and " " not in groups[-1] and not token.startswith("-"):
            groups[-1] += f" {token}"
        else:
            groups.append(token)
    lines = [groups[0]]
    for group in groups[1:]:
        if len(indent) + len(lines[-1]) + 1 + len(group) > _WIDTH:
            lines.append(group)
        else:
            lines[-1] += f" {group}"
    return [f"{indent}{line}" for line in lines]


def dvc_yaml(pipeline: tuple[Step, ...] = PIPELINE, layout: dict[str, str] = DVC_LAYOUT) -> str:
    """The text of dvc.yaml."""
    lines = [*DVC_HEADER.splitlines(), "stages:"]
    for name, stage in dvc_stages(pipeline, layout).items():
        lines.append(f"  {name}:")
        cmd = stage["cmd"]
        if len(f"    cmd: {cmd}") <= _WIDTH:
            lines.append(f"    cmd: {cmd}")
        else:
            lines += ["    cmd: >-", *_fold(cmd, " " * 6)]
        for key in ("deps", "params", "outs", "metrics"):
            if key not in stage:
                continue
            lines.append(f"    {key}:")
            for entry in stage[key]:
                if isinstance(entry, dict):
                    ((path, options),) = entry.items()
                    lines.append(f"      - {path}:")
                    lines += [f"          {k}: {str(v).lower()}" for k, v in options.items()]
                else:
                    lines.append(f"      - {entry}")
        lines.append("")
    return "\n".join([*lines, *DVC_PLOTS.splitlines()]) + "\n"


def _table() -> str:
    rows = []
    for s in PIPELINE:
        where = f"DVC stage {s.dvc_stage}" if s.dvc_stage else "flow only"
        when = f"; when {' and '.join(c.description for c in s.when)}" if s.when else ""
        rows.append(f"{s.name:<9} {s.calls}  ({where}{when})\n"
                    f"{'':<9} reads {', '.join(s.params) or '-'}\n"
                    f"{'':<9} {', '.join(s.deps) or '-'} → {', '.join(s.outputs) or '-'}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--write-dvc", action="store_true", help="write dvc.yaml from the table")
    action.add_argument("--check-dvc", action="store_true", help="exit 1 when dvc.yaml differs from the table's")
    parser.add_argument("--dvc-file", type=Path, default=DVC_FILE, help=f"default: {DVC_FILE.name} at the "
                                                                         "repository root")
    args = parser.parse_args(argv)
    if args.write_dvc:
        atomic_write_text(args.dvc_file, dvc_yaml())
        print(f"wrote {args.dvc_file}")
    elif args.check_dvc:
        current = args.dvc_file.read_text() if args.dvc_file.is_file() else ""
        if current != dvc_yaml():
            sys.stdout.writelines(difflib.unified_diff(current.splitlines(keepends=True),
                                                       dvc_yaml().splitlines(keepends=True),
                                                       str(args.dvc_file), "the table (flows/pipeline.py)"))
            print(f"{args.dvc_file} differs from the table: python -m flows.pipeline --write-dvc", file=sys.stderr)
            return 1
        print(f"{args.dvc_file} matches the table")
    else:
        print(_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
