"""Ray Train launcher: the same loop (`vidllm.train.loop.run_loop`) in every `TorchTrainer` worker.

- `ScalingConfig(num_workers=train.num_workers, use_gpu=<the Ray cluster has GPUs>)`.
- `train.strategy`: "ddp" → DistributedDataParallel (find_unused_parameters: a step may not
  reach every head, e.g. a reconstruction-only Stage-2 batch); "fsdp" → FSDP2 (`fully_shard`, see
  `shard_objective`): each of the objective's `fsdp_units()` is sharded on its own, then the root;
  checkpoints gather the full state on rank 0 (`vidllm.train.loop`), so they stay full
  safetensors that load into a single-process model. Both run on CPU with gloo, which has every
  collective FSDP2 uses (all-gather, reduce-scatter with AVG).
- `RunConfig(name=<run dir name>-<hash of its absolute path>-<stage>, storage_path=train.storage_path)`
  (`run_name`: two run directories with the same name never share a Ray run; local or s3://,
  the endpoint from the AWS environment); `FailureConfig(max_failures=train.max_failures)`
  restarts from the last reported checkpoint; re-running with the same name resumes.
- Data: the shards reach the workers as the trainer's Ray Datasets
  (`vidllm.data.shards.ray_reader.train_datasets`): each rank reads its own shards through
  `ray.train.get_dataset_shard`, in manifest order and never re-split, so a step's batch is the same
  in every run (resume = uninterrupted run). Read/decode tasks reserve `train.data_cpus` CPUs.
- Rank 0 writes RUN_DIR/train_log.csv (RUN_DIR must be shared storage on multi-node clusters)
  and reports checkpoints with `ray.train.report(..., checkpoint=...)`; the driver exports the
  final model from the last checkpoint into RUN_DIR.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from vidllm.artifacts.model_dir import load_state_fitting
from vidllm.config import TrainConfig, VidLLMConfig
from vidllm.errors import VidLLMError
from vidllm.ray_session import absolute_local, cluster_has_gpus, init_ray
from vidllm.train.loop import SetupFn, StageInputs, TrainResult


def storage_path(cfg: VidLLMConfig) -> str:
    return absolute_local(cfg.train.storage_path)


def run_name(run_dir: Path, stage: str) -> str:
    """The Ray Train run name: `<run dir name>-<8 hex of sha256(absolute run dir)>-<stage>`, unique per
    absolute run directory (`runs/a/exp` and `runs/b/exp` do not resume each other's checkpoints)."""
    absolute = os.path.normpath(os.path.abspath(os.fspath(run_dir)))
    digest = hashlib.sha256(absolute.encode()).hexdigest()[:8]
    return f"{Path(absolute).name}-{digest}-{stage}"


def shard_objective(objective: torch.nn.Module, train_cfg: TrainConfig, device: torch.device) -> torch.nn.Module:
    """FSDP2 in place: `fully_shard` each module of `objective.fsdp_units()` (if it has that
    method), then the root, which holds every other parameter. Returns `objective`.

    The units must run exactly once per step on every rank (every rank must issue the same
    collectives); parameters outside them are gathered once per step by the root whatever runs.
    With bf16 precision the units all-gather and compute in bf16 and reduce gradients in fp32;
    the root keeps fp32 parameters because it holds the heads that run in fp32.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    from vidllm.train.loop import autocast_dtype

    bf16 = autocast_dtype(train_cfg, device) == torch.bfloat16
    unit_policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16
                   else MixedPrecisionPolicy())
    units = list(objective.fsdp_units()) if hasattr(objective, "fsdp_units") else []
    for unit in units:
        fully_shard(unit, mp_policy=unit_policy)
    # The root keeps its parameters gathered from forward to backward (FSDP's default for the
    # root; `vidllm.train.loop` relies on it to see which of them the loss used).
    fully_shard(objective, reshard_after_forward=False)
    # A rank's step may skip parameters another rank uses (a reconstruction-only batch, a row
    # without <obj>): every rank reduce-scatters zeros for its unused ones, so the collectives match
    # (DDP's find_unused_parameters); the loop then drops the gradients of those no rank used.
    objective.set_reduce_scatter_unused_params(True)
    return objective


def _worker(config: dict[str, Any]) -> None:
    """Train loop of one Ray Train worker."""
    import ray.train
    import ray.train.torch

    from vidllm.train.checkpoint import load_checkpoint, save_checkpoint
    from vidllm.train.loop import run_loop

    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    cfg = VidLLMConfig.model_validate(config["cfg"])
    setup = config["setup_fn"](cfg, dataclasses.replace(config["inputs"], reader="ray"), rank, world_size)
    resume = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            resume = load_checkpoint(Path(directory))
        load_state_fitting(setup.job.objective, resume["model"], f"Ray Train checkpoint {checkpoint.path}")
    device = ray.train.torch.get_device()
    ddp = cfg.train.strategy == "ddp" and world_size > 1
    # prepare_model moves to the device and wraps in DDP; its "fsdp" is the FSDP1 class (and GPU-only).
    setup.job.objective = ray.train.torch.prepare_model(
        setup.job.objective, parallel_strategy="ddp" if ddp else None,
        parallel_strategy_kwargs={"find_unused_parameters": True} if ddp else None,
    )
    if cfg.train.strategy == "fsdp" and world_size > 1:
        shard_objective(setup.job.objective, cfg.train, device)

    def report(step: int, metrics: dict[str, float]) -> None:
        ray.train.report({"step": step, **metrics})

    def save(step: int, model_state: dict, optimizer_state: dict, metrics: dict[str, float]) -> None:
        if rank != 0:
            ray.train.report({"step": step})
            return
        with tempfile.TemporaryDirectory(prefix="vidllm-ckpt-") as tmp:
            directory = save_checkpoint(Path(tmp) / "checkpoint", step, model_state, optimizer_state,
                                        {"final_losses": metrics})
            ray.train.report({"step": step, **{f"loss/{k}": v for k, v in metrics.items()}},
                             checkpoint=ray.train.Checkpoint.from_directory(str(directory)),
                             checkpoint_dir_name=f"step-{step:08d}")

    run_loop(setup.job, Path(config["run_dir"]), device=device, resume=resume, checkpoint_fn=save, report_fn=report,
             is_main=rank == 0, world_size=world_size, progress=False)


def fit_with_ray(stage: str, setup_fn: SetupFn, cfg: VidLLMConfig, inputs: StageInputs, run_dir: Path,
                 model_dir: Path) -> TrainResult:
    """Run one stage as a Ray Train job, then export the final model into `model_dir` (driver side).

    `setup_fn(cfg, inputs, rank, world_size)` builds the stage in each worker (it travels pickled by
    reference, so this launcher imports no stage)."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from vidllm.train.checkpoint import load_checkpoint

    # Relative paths mean the driver's working directory; workers may run elsewhere.
    worker_inputs = StageInputs(
        absolute_local(inputs.shards_uri), None if inputs.cache_uri is None else absolute_local(inputs.cache_uri),
        None if inputs.init_model is None else str(Path(inputs.init_model).absolute()))
    from vidllm.data.shards.ray_reader import train_datasets, worker_data_config

    started = init_ray()  # a private local Ray, or the cluster at RAY_ADDRESS (see vidllm.ray_session)
    try:
        trainer = TorchTrainer(
            _worker,
            train_loop_config={"cfg": cfg.model_dump(mode="json"), "setup_fn": setup_fn,
                               "inputs": worker_inputs, "run_dir": str(Path(run_dir).absolute())},
            datasets=train_datasets(worker_inputs.shards_uri, cfg.train.num_workers, cfg.train.data_cpus),
            dataset_config=worker_data_config(),
            scaling_config=ScalingConfig(num_workers=cfg.train.num_workers, use_gpu=cluster_has_gpus()),
            run_config=RunConfig(
                name=run_name(Path(run_dir), stage), storage_path=storage_path(cfg),
                failure_config=FailureConfig(max_failures=cfg.train.max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.checkpoints_to_keep),
            ),
        )
        result = trainer.fit()
    finally:
        if started:
            ray.shutdown()
    if result.error is not None:
        raise VidLLMError(f"Ray Train {stage} failed: {_one_line(result.error)}")
    if result.checkpoint is None:
        raise VidLLMError(f"Ray Train {stage} finished without a checkpoint")
    with result.checkpoint.as_directory() as directory:
        final = load_checkpoint(Path(directory))
    setup = setup_fn(cfg, inputs, 0, 1)
    load_state_fitting(setup.job.objective, final["model"], f"Ray Train checkpoint {result.checkpoint.path}")
    setup.export(setup.job.objective, model_dir)
    return TrainResult(model_dir, int(final["step"]), dict(final.get("final_losses", {})))


def _one_line(error: BaseException | str) -> str:
    """The user-facing cause of a failed Ray Train run: a worker's VidLLMError message if there is
    one in the chain, else the last line of the (multi-line, traceback-bearing) error text."""
    seen: set[int] = set()
    current = error if isinstance(error, BaseException) else None
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, VidLLMError):
            return str(current)
        current = current.__cause__ or current.__context__
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__

