"""The training entry: `train(stage, cfg, inputs, run_dir)` over the `STAGES` table (called by the
CLI, the Prefect flow, DVC and `ablate`; `train_stage1` / `train_stage2` are its two spellings).

Run directory (besides `vidllm.artifacts.run_dir`'s files)::

    RUN_DIR/config.yaml, train_log.csv     (both stages append to one log; `stage` column)
    RUN_DIR/checkpoints/stage{1,2}/step-NNNNNNNN/   single-process checkpoints (Ray: under storage_path)
    RUN_DIR/stage1_model/                  Stage-1 output (encoder + CTA, `vidllm.train.stage1`)
    RUN_DIR/model/                         Stage-2 output: a full model directory (`vidllm predict --model`)

A re-run resumes from the latest intact checkpoint of that stage (Ray: same run name in
storage_path). Before that (`prepare_run_dir`): temporary directories of killed saves are removed;
if the stage has local checkpoints, the new config must match RUN_DIR/config.yaml in what shapes
them (`model`, and `train` without the other stage's section, as the flows' step digests), else
the run is refused (DataError naming the first differing key); `fresh=True` (`vidllm train
--fresh`) deletes the stage's checkpoints first instead. config.yaml is written after the check.
"""

from __future__ import annotations

import itertools
import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vidllm.artifacts import run_dir as rd
from vidllm.artifacts.model_dir import load_state_fitting
from vidllm.config import ConfigError, VidLLMConfig, config_to_yaml
from vidllm.data.prefetch import Prefetcher
from vidllm.errors import DataError
from vidllm.train.batches import cycle_samples, is_training_scene, stage1_batch, stage2_batch, to_device
from vidllm.train.checkpoint import (
    CHECKPOINTS_DIR,
    checkpoint_name,
    checkpoint_problems,
    load_latest_intact,
    prune_checkpoints,
    remove_orphaned_checkpoint_dirs,
    save_checkpoint,
    step_checkpoints,
)
from vidllm.train.loop import (
    SetupFn,
    StageInputs,
    StageJob,
    StageSetup,
    TrainResult,
    run_loop,
    seed_everything,
)

log = logging.getLogger(__name__)

STAGE1_MODEL_DIR = "stage1_model"
STAGE2_MODEL_DIR = "model"


def verify_artifacts(path: str | Path) -> list[dict[str, Any]]:
    """Check digests under `path`: a model or Stage-1 directory, a training checkpoint
    (`step-NNNNNNNN`), or a run directory (its stage1_model/, model/ and every checkpoint).
    One {path, kind, ok, problems} entry per artifact; DataError if `path` holds none."""
    from vidllm.artifacts.model_dir import CONFIG_NAME, verify_model_dir
    from vidllm.train.checkpoint import STATE_FILE

    root = Path(path)
    if not root.exists():
        raise DataError(root, "does not exist")

    def model_entry(directory: Path) -> dict[str, Any]:
        result = verify_model_dir(directory)
        return {"path": str(directory), "kind": "model", "ok": result.ok, "checked": result.checked,
                "problems": result.problems}

    def checkpoint_entry(directory: Path) -> dict[str, Any]:
        problems = checkpoint_problems(directory)
        return {"path": str(directory), "kind": "checkpoint", "ok": not problems, "problems": problems}

    if (root / CONFIG_NAME).is_file():
        return [model_entry(root)]
    if (root / STATE_FILE).is_file():
        return [checkpoint_entry(root)]
    entries = [model_entry(root / name) for name in (STAGE1_MODEL_DIR, STAGE2_MODEL_DIR)
               if (root / name / CONFIG_NAME).is_file()]
    for stage in ("stage1", "stage2"):
        entries += [checkpoint_entry(ckpt) for ckpt in step_checkpoints(root / CHECKPOINTS_DIR / stage)]
    if not entries:
        raise DataError(root, f"no model directory ({CONFIG_NAME}), checkpoint ({STATE_FILE}) or run directory "
                              f"({STAGE1_MODEL_DIR}/, {STAGE2_MODEL_DIR}/, {CHECKPOINTS_DIR}/) here")
    return entries


class Stage1Objective(nn.Module):
    def __init__(self, student: nn.Module, sc_weight: float, sc_tokens: int, seed: int, teachers: str = "both"):
        super().__init__()
        self.student = student
        self.sc_weight, self.sc_tokens, self.seed, self.teachers = sc_weight, sc_tokens, seed, teachers

    def forward(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Stage-1 batch → {total, geo, lang, sc, tokens}; L_sc positions are drawn per step (seeded)."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + int(batch["step"]))
        losses = self.student(batch, self.sc_weight, self.sc_tokens, generator, self.teachers)
        images = batch["images"]
        patches = (images.shape[-2] // self.student.encoder.patch_size) * (images.shape[-1] // self.student.encoder.patch_size)
        return {**losses, "tokens": torch.tensor(float(images.shape[0] * images.shape[1] * patches))}

    def compile_targets(self) -> dict[str, nn.Module]:
        """What `train.compile` compiles: the student encoder and the CTA."""
        return {"encoder": self.student.encoder, "cta": self.student.cta}

    def fsdp_units(self) -> list[nn.Module]:
        """What `train.strategy: fsdp` shards as separate units: the encoder blocks (run once per step)."""
        return list(self.student.encoder.backbone.encoder.layer)


def rank_samples(shards_uri: str, rank: int, world_size: int, reader: str = "local"):
    """A factory of this rank's stream of training scenes (`is_training_scene`: val/test-split
    scenes never train): whole shards per rank when there are enough shards, else every
    `world_size`-th training scene (small datasets). `reader` "ray" reads the Ray Train datasets
    the launcher attached (`vidllm.data.shards.ray_reader.train_datasets`), "local" the files."""
    if reader == "ray":
        from vidllm.data.shards.ray_reader import iter_worker_samples, train_dataset_plan

        name = train_dataset_plan(shards_uri, world_size)[rank]
        if name == "train-all":
            return lambda: itertools.islice(filter(is_training_scene, iter_worker_samples(name)), rank, None,
                                            world_size)
        return lambda: filter(is_training_scene, iter_worker_samples(name))
    from vidllm.data.shards.format import ShardDataset

    dataset = ShardDataset(shards_uri, rank=rank, world_size=world_size)
    if world_size == 1 or len(dataset.groups) >= world_size:
        return lambda: filter(is_training_scene, ShardDataset(shards_uri, rank=rank, world_size=world_size))
    if len(dataset) < world_size:
        raise DataError(shards_uri, f"{len(dataset)} samples cannot feed {world_size} workers")
    return lambda: itertools.islice(filter(is_training_scene, ShardDataset(shards_uri)), rank, None, world_size)


def _batched(stream: Iterator[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    while True:
        yield [next(stream) for _ in range(size)]


def stage1_setup(cfg: VidLLMConfig, inputs: StageInputs, rank: int = 0, world_size: int = 1) -> StageSetup:
    """Stage 1 (distillation, eqs. 5–7): the student encoder + CTA against cached teacher features."""
    shards_uri, cache_uri, init_model = inputs.shards_uri, inputs.cache_uri, inputs.init_model
    if cache_uri is None:
        raise ConfigError("Stage 1 needs a teacher cache (`vidllm teachers`, then --teacher-cache)")
    from vidllm.data.teacher_cache import feature_keys, load_teacher_features
    from vidllm.train.stage1 import build_student, save_stage1_model

    keys = feature_keys(cache_uri, shards_uri, cfg.teachers)
    if not keys:
        raise DataError(shards_uri, "no samples in the manifest")
    first = next(iter(keys.values()))
    dims = [load_teacher_features(cache_uri, first[role])["patch_tokens"].shape[-1] for role in ("geometry", "semantic")]
    seed_everything(cfg.train.seed)
    student = build_student(cfg, dims[0], dims[1], init_model)
    objective = Stage1Objective(student, cfg.train.distill_lambda, cfg.train.distill_sc_tokens, cfg.train.seed,
                                cfg.train.distill_teachers)
    stage_cfg = cfg.train.stage1
    samples = rank_samples(shards_uri, rank, world_size, inputs.reader)

    def build(start_step: int) -> Iterator[tuple[dict[str, Any], int]]:
        stream = cycle_samples(samples, skip=start_step * stage_cfg.batch_size)
        for step, group in enumerate(_batched(stream, stage_cfg.batch_size), start=start_step):
            feats = [{role: load_teacher_features(cache_uri, keys[s["key"]][role]) for role in ("geometry", "semantic")}
                     for s in group]
            yield {**stage1_batch(group, feats), "step": step}, len(group)

    def batches(start_step: int) -> Iterator[tuple[dict[str, Any], int]]:
        return Prefetcher(build(start_step))

    def export(module: nn.Module, out_dir: Path) -> Path:
        return save_stage1_model(module.student, cfg, out_dir)

    job = StageJob("stage1", objective, batches, stage_cfg, cfg.train, to_device)
    return StageSetup(job, export)


def stage2_setup(cfg: VidLLMConfig, inputs: StageInputs, rank: int = 0, world_size: int = 1) -> StageSetup:
    """Stage 2 (joint training, eq. 8): the whole model on reconstruction, metric depth and VL tasks."""
    shards_uri, init_model = inputs.shards_uri, inputs.init_model
    from vidllm.artifacts.model_dir import save_pretrained
    from vidllm.train.stage2 import Stage2Objective, build_stage2_model

    seed_everything(cfg.train.seed)
    model, tokenizer = build_stage2_model(cfg, shards_uri, init_model)
    from vidllm.losses import Stage2LossWeights

    objective = Stage2Objective(model, Stage2LossWeights.from_mapping(cfg.train.loss_weights),
                                share_vision_prefix=cfg.train.share_vision_prefix)
    stage_cfg = cfg.train.stage2
    samples = rank_samples(shards_uri, rank, world_size, inputs.reader)
    pad_id = model.special_ids.pad

    def build(start_step: int) -> Iterator[tuple[dict[str, Any], int]]:
        stream = cycle_samples(samples, skip=start_step * stage_cfg.batch_size)
        for step, group in enumerate(_batched(stream, stage_cfg.batch_size), start=start_step):
            batch = stage2_batch(group, tokenizer, instructions_per_scene=cfg.train.instructions_per_scene,
                                 max_text_tokens=cfg.train.max_text_tokens,
                                 max_proposals=cfg.model.grounding.max_proposals, pad_id=pad_id,
                                 seed=cfg.train.seed + rank, step=step, task_weights=cfg.train.task_weights,
                                 proposal_jitter=cfg.model.grounding.proposal_jitter)
            yield {**batch, "step": step}, len(group)

    def batches(start_step: int) -> Iterator[tuple[dict[str, Any], int]]:
        return Prefetcher(build(start_step))

    def export(module: nn.Module, out_dir: Path) -> Path:
        return save_pretrained(module.model, out_dir, tokenizer, recipe=cfg.recipe)

    job = StageJob("stage2", objective, batches, stage_cfg, cfg.train, to_device)
    return StageSetup(job, export, tokenizer)


def _write_config(cfg: VidLLMConfig, run_dir: Path) -> None:
    from vidllm.artifacts.files import atomic_write_text

    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / rd.CONFIG_FILE, config_to_yaml(cfg))


_UNSET = "<unset>"


def _stage_view(tree: dict[str, Any], stage: str) -> dict[str, Any]:
    """What of a config dump shapes a stage's checkpoints: `model`, and `train` without the other
    stage's section (what flows/steps.py's stage digests cover)."""
    other = "stage2" if stage == "stage1" else "stage1"
    train = {k: v for k, v in (tree.get("train") or {}).items() if k != other}
    return {"model": tree.get("model"), "train": train}


def _first_difference(old: Any, new: Any, path: str = "") -> tuple[str, Any, Any] | None:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in [*old, *(k for k in new if k not in old)]:
            found = _first_difference(old.get(key, _UNSET), new.get(key, _UNSET), f"{path}.{key}" if path else str(key))
            if found is not None:
                return found
        return None
    return None if old == new else (path, old, new)


def check_resume_config(cfg: VidLLMConfig, run_dir: Path, stage: str) -> None:
    """DataError (one line: run dir, first differing key) if `cfg` differs from RUN_DIR/config.yaml
    in what shapes `stage`'s checkpoints (`_stage_view`). No config.yaml: nothing to compare."""
    import yaml
    from pydantic import ValidationError

    path = run_dir / rd.CONFIG_FILE
    if not path.is_file():
        return
    try:
        saved = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise DataError(path, f"unreadable saved config ({exc}); pass --fresh to start {stage} over") from None
    if not isinstance(saved, dict):
        raise DataError(path, f"saved config is not a mapping; pass --fresh to start {stage} over")
    try:  # fill defaults of keys added since it was written
        saved = VidLLMConfig.model_validate(saved).model_dump(mode="json")
    except ValidationError:
        pass
    found = _first_difference(_stage_view(saved, stage), _stage_view(cfg.model_dump(mode="json"), stage))
    if found is not None:
        key, old, new = found
        raise DataError(run_dir, f"cannot resume {stage}: the config differs from its {rd.CONFIG_FILE} at '{key}' "
                                 f"({old!r} there, {new!r} now); pass --fresh to delete the {stage} checkpoints and "
                                 f"start over, or use another run directory")


def prepare_run_dir(cfg: VidLLMConfig, run_dir: Path, stage: str, model_dir: Path, *, fresh: bool = False,
                    use_ray: bool = False) -> None:
    """Before training `stage` in `run_dir`: delete its checkpoints if `fresh`, remove what killed saves
    left, refuse a resume under a different config (`check_resume_config`), then write config.yaml."""
    from vidllm.artifacts.files import remove_orphans

    ckpt_root = run_dir / CHECKPOINTS_DIR / stage
    if fresh:
        if ckpt_root.exists():
            log.info("%s: --fresh, removing the %s checkpoints", ckpt_root, stage)
            shutil.rmtree(ckpt_root)
        if use_ray:
            from vidllm.artifacts import storage
            from vidllm.train.ray_launcher import run_name, storage_path

            experiment = storage.join(storage_path(cfg), run_name(run_dir, stage))
            if storage.is_s3(experiment):
                log.warning("%s: --fresh does not delete Ray checkpoints on S3; delete that prefix to start over",
                            experiment)
            elif Path(experiment).exists():
                log.info("%s: --fresh, removing the Ray Train run", experiment)
                shutil.rmtree(experiment)
    remove_orphaned_checkpoint_dirs(ckpt_root)  # logs what it removes
    for path in remove_orphans(model_dir):
        log.warning("%s: removed the temporary directory of an interrupted model export", path)
    if step_checkpoints(ckpt_root):
        check_resume_config(cfg, run_dir, stage)
    _write_config(cfg, run_dir)


def train_local(stage: str, setup: StageSetup, cfg: VidLLMConfig, run_dir: Path, model_dir: Path,
                stop_after: int | None = None, progress: bool = True) -> TrainResult:
    """The single-process launcher: resume from the newest intact local checkpoint, train, export."""
    ckpt_root = run_dir / CHECKPOINTS_DIR / stage
    latest, resume = load_latest_intact(ckpt_root)
    if latest is not None:
        log.info("%s: resuming from %s", stage, latest)
    objective = setup.job.objective
    if resume is not None:
        load_state_fitting(objective, resume["model"], latest)

    def checkpoint_fn(step: int, model_state: dict, optimizer_state: dict, metrics: dict) -> None:
        save_checkpoint(ckpt_root / checkpoint_name(step), step, model_state, optimizer_state,
                        {"final_losses": metrics})
        prune_checkpoints(ckpt_root, cfg.train.checkpoints_to_keep)

    result = run_loop(setup.job, run_dir, resume=resume, checkpoint_fn=checkpoint_fn, stop_after=stop_after,
                      progress=progress)
    if result.steps >= setup.job.stage_cfg.steps:
        setup.export(objective, model_dir)
    return TrainResult(model_dir, result.steps, result.final_losses, result.start_step)


@dataclass(frozen=True)
class Stage:
    """One training stage: the function that builds it and the run-directory folder of its model."""

    name: str
    setup: SetupFn
    model_dir: str
    summary: str


STAGES: dict[str, Stage] = {stage.name: stage for stage in (
    Stage("stage1", stage1_setup, STAGE1_MODEL_DIR, "distillation → RUN_DIR/stage1_model (encoder + CTA)"),
    Stage("stage2", stage2_setup, STAGE2_MODEL_DIR, "joint training → RUN_DIR/model (a full model directory)"),
)}


def train(stage: str, cfg: VidLLMConfig, inputs: StageInputs, run_dir: str | Path, *, use_ray: bool = False,
          stop_after: int | None = None, progress: bool = True, fresh: bool = False) -> TrainResult:
    """Train one of `STAGES` into RUN_DIR (single process, or Ray Train with `use_ray`).

    `stop_after` ends after that many steps without exporting (tests: an interrupted run).
    `fresh` deletes the stage's checkpoints first (`prepare_run_dir`)."""
    if stage not in STAGES:
        raise ConfigError(f"unknown stage {stage!r} (known: {', '.join(STAGES)})")
    if stage == "stage1" and cfg.train.single_stage:
        raise ConfigError("train.single_stage is set (the no-Stage-1 ablation): there is no Stage 1 to run")
    spec = STAGES[stage]
    run_dir = Path(run_dir)
    model_dir = run_dir / spec.model_dir
    prepare_run_dir(cfg, run_dir, stage, model_dir, fresh=fresh, use_ray=use_ray)
    if use_ray:
        from vidllm.train.ray_launcher import fit_with_ray

        return fit_with_ray(stage, spec.setup, cfg, inputs, run_dir, model_dir)
    return train_local(stage, spec.setup(cfg, inputs, 0, 1), cfg, run_dir, model_dir, stop_after, progress)


def train_stage1(cfg: VidLLMConfig, shards_uri: str, teacher_cache_uri: str, run_dir: str | Path, *,
                 init_model: str | Path | None = None, **options: Any) -> TrainResult:
    """`train("stage1", ...)`: Stage-1 distillation → RUN_DIR/stage1_model (loadable as Stage-2 init)."""
    return train("stage1", cfg, StageInputs(shards_uri, teacher_cache_uri, init_model), run_dir, **options)


def train_stage2(cfg: VidLLMConfig, shards_uri: str, run_dir: str | Path, *, init_model: str | Path | None,
                 **options: Any) -> TrainResult:
    """`train("stage2", ...)`: Stage-2 joint training → RUN_DIR/model. init_model: RUN_DIR/stage1_model,
    a `vidllm init` directory, or None (all from the config)."""
    return train("stage2", cfg, StageInputs(shards_uri, None, init_model), run_dir, **options)
