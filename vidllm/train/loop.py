"""One training loop for both stages, single-process or inside a Ray Train worker.

- AdamW (β from `train.betas`, weight decay on matrices only), gradient clipping, linear
  warm-up then cosine decay to 0; seeded. `train.precision`: bf16 autocast on CUDA by default,
  on any device with "bf16"; `train.compile` compiles the objective's `compile_targets()`.
- Logs every `log_every` steps to RUN_DIR/train_log.csv (`vidllm.artifacts.run_dir` format, plus
  tokens_per_s, data_wait_share = time waiting for data / step time, and mfu on CUDA).
- Hands a full model + optimizer state to `checkpoint_fn` every `checkpoint_every` steps (and at
  the end); `vidllm.train.checkpoint` writes and verifies them.

Determinism: batches are a pure function of the step (data order is fixed, per-step draws are
seeded by step), and the RNG state is checkpointed, so a resumed run reaches the same weights
as an uninterrupted one.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vidllm.artifacts import run_dir as rd
from vidllm.config import ConfigError, StageConfig, TrainConfig
from vidllm.errors import TrainingError
from vidllm.train.tracking import Tracker

log = logging.getLogger(__name__)

EXTRA_LOG_COLUMNS = ("tokens_per_s", "data_wait_share", "mfu", "grad_norm")

# Dense bf16 peak of common accelerators, for MFU (override with VIDLLM_PEAK_TFLOPS).
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0, "L4": 121.0,
                    "RTX 4090": 165.0, "RTX 3090": 71.0}


@dataclass
class StageJob:
    """What the loop needs to train one stage.

    objective(batch) → dict of scalar losses with `total` (optionally `tokens`); it is the module
    that gets optimised (and DDP/FSDP-wrapped). batches(start_step) yields (batch, num_samples)
    from `start_step` on, forever.
    """

    stage: str
    objective: nn.Module
    batches: Callable[[int], Iterator[tuple[dict[str, Any], int]]]
    stage_cfg: StageConfig
    train_cfg: TrainConfig
    to_device: Callable[[Any, torch.device], Any]


@dataclass(frozen=True)
class StageInputs:
    """Where a stage reads from: shards, the teacher cache (Stage 1), the model to start from."""

    shards_uri: str
    cache_uri: str | None = None
    init_model: str | Path | None = None
    reader: str = "local"  # "ray": inside Ray Train, the shards come as the trainer's Ray Datasets


@dataclass
class StageSetup:
    """Everything one process needs for a stage: the objective, its batches, and how to export it."""

    job: StageJob
    export: Callable[[nn.Module, Path], Path]  # (trained objective, out_dir) → the model directory
    tokenizer: Any = None  # Stage 2: the tokenizer its prompts are encoded with


# What builds a stage in one process: (cfg, inputs, rank, world_size) → StageSetup. Launchers
# receive it and never import a stage themselves.
SetupFn = Callable[[Any, StageInputs, int, int], StageSetup]


@dataclass
class TrainResult:
    model_dir: Path
    steps: int
    final_losses: dict[str, float] = field(default_factory=dict)
    resumed_from: int = 0


@dataclass
class LoopResult:
    steps: int
    start_step: int
    final_losses: dict[str, float] = field(default_factory=dict)
    checkpoint: Path | None = None


# ----------------------------------------------------------------------------- schedule / optimiser


def learning_rate(step: int, cfg: StageConfig) -> float:
    """Linear warm-up over `warmup_steps`, then cosine from `lr` to 0 at `steps`."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(module: nn.Module, stage_cfg: StageConfig, train_cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only; `stage_cfg.lr_scale` puts the parameters of the
    named modules in groups of their own whose `lr_scale` multiplies the scheduled lr."""
    groups: dict[tuple[float, bool], list[nn.Parameter]] = {(1.0, True): [], (1.0, False): []}
    matched: set[str] = set()
    for name, param in module.named_parameters():
        if param.requires_grad:
            parts = name.split(".")
            key = next((k for k in stage_cfg.lr_scale if k in parts), None)
            matched.add(key)
            scale = 1.0 if key is None else stage_cfg.lr_scale[key]
            groups.setdefault((scale, param.dim() >= 2), []).append(param)  # no decay on biases / norms
    if not any(groups.values()):
        raise ValueError("nothing to train: no parameter requires grad")
    unknown = sorted(set(stage_cfg.lr_scale) - matched)
    if unknown:
        raise ConfigError(f"lr_scale: no trainable parameter's name has a component {unknown} (e.g. 'encoder', "
                          "'llm', 'reconstruction')")
    return torch.optim.AdamW(
        [{"params": params, "weight_decay": train_cfg.weight_decay if decay else 0.0, "lr_scale": scale}
         for (scale, decay), params in groups.items() if params or scale == 1.0],
        lr=stage_cfg.lr, betas=tuple(train_cfg.betas))


def autocast_dtype(train_cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on CUDA unless fp32 is asked for; elsewhere only when bf16 is asked for
    (CPU bf16 autocast works, but on most CPUs it is slower than fp32)."""
    if train_cfg.precision == "bf16":
        return torch.bfloat16
    if train_cfg.precision == "auto" and device.type == "cuda":
        return torch.bfloat16
    return None


def compile_objective(module: nn.Module, backend: str) -> list[str]:
    """torch.compile, in place, the submodules the objective names (`compile_targets()`:
    name → module); parameter names and state dicts stay as they are. Returns the names."""
    targets = module.compile_targets() if hasattr(module, "compile_targets") else {}
    for submodule in targets.values():
        submodule.compile(backend=backend, dynamic=None)
    return sorted(targets)


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    if os.environ.get("VIDLLM_PEAK_TFLOPS"):
        return float(os.environ["VIDLLM_PEAK_TFLOPS"]) * 1e12
    name = torch.cuda.get_device_name(device)
    return next((v * 1e12 for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


# ----------------------------------------------------------------------------- checkpoints


def _unwrap(module: nn.Module) -> nn.Module:
    return module.module if hasattr(module, "module") and isinstance(module, nn.parallel.DistributedDataParallel) \
        else module


def _is_fsdp(module: nn.Module) -> bool:
    """Whether `module` was sharded with FSDP2's `fully_shard`."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def _full_states(module: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(model state, optimizer state), gathered in full; a collective under FSDP (call it on every
    rank: rank 0 gets the full state on CPU, the other ranks empty dicts).

    The optimizer state is keyed by parameter name (not position), for every strategy, so a
    checkpoint resumes under DDP, FSDP or a single process alike."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state = get_model_state_dict(module, options=options) if _is_fsdp(module) else _unwrap(module).state_dict()
    return model_state, get_optimizer_state_dict(module, optimizer, options=options)


def _load_optimizer(module: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a full optimizer state (`_full_states`; FSDP: every rank keeps its shard of it).
    Position-keyed states (checkpoints written before states were keyed by name) are mapped to
    names through this optimizer's parameter order, which `build_optimizer` fixes."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    if any(isinstance(k, int) for k in state["state"]) or any(
            isinstance(i, int) for g in state["param_groups"] for i in g["params"]):
        names = {id(p): n for n, p in _unwrap(module).named_parameters()}
        order = [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
        state = {"state": {order[int(k)]: v for k, v in state["state"].items()},
                 "param_groups": [{**g, "params": [order[int(i)] for i in g["params"]]} for g in state["param_groups"]]}
    # strict=False: a parameter that never had a gradient has no AdamW state in the checkpoint.
    set_optimizer_state_dict(module, optimizer, state, options=StateDictOptions(full_state_dict=True, strict=False))
    # The loader first gives every parameter a state (a zero-lr step); drop it where the checkpoint
    # had none, so such a parameter's first real step is AdamW step 1, as in an uninterrupted run.
    for name, param in _unwrap(module).named_parameters():
        if param.requires_grad and name not in state["state"]:
            optimizer.state.pop(param, None)


def _used_on_any_rank(module: nn.Module, total: Tensor) -> list[bool]:
    """FSDP, between forward and backward: for each trainable parameter (`module.parameters()`
    order, the same on every rank), whether some rank's loss depends on it, by walking the autograd
    graph from `total` (what DDP's find_unused_parameters does) and one all-reduce.

    FSDP reduce-scatters zeros for the parameters a rank did not use, so without this a parameter
    no rank used would get a zero gradient, and AdamW would decay it and apply its momentum,
    where DDP and a single process skip it (its gradient stays None). Root-unit parameters are
    the unsharded tensors until backward (the root does not reshard after forward), so they are
    the graph's leaves; the units' parameters are sharded again by now and count as used (the
    units run every step, `ray_launcher.shard_objective`)."""
    from torch.distributed.tensor import DTensor

    leaves: set[int] = set()
    seen: set[Any] = set()
    stack = [total.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if hasattr(node, "variable"):  # AccumulateGrad: a leaf that gets a gradient
            leaves.add(id(node.variable))
        stack.extend(next_node for next_node, _ in node.next_functions)
    params = [p for p in module.parameters() if p.requires_grad]
    used = torch.tensor([isinstance(p, DTensor) or id(p) in leaves for p in params], dtype=torch.float32,
                        device=total.device)
    torch.distributed.all_reduce(used, op=torch.distributed.ReduceOp.MAX)
    return [bool(u) for u in used.tolist()]


def _clip_sharded_grad_norm(module: nn.Module, max_norm: float) -> Tensor | None:
    """`clip_grad_norm_` (2-norm over every gradient) for FSDP's DTensor shards with one all-reduce;
    `clip_grad_norm_` on the DTensors gives the same norm, but its per-tensor DTensor dispatch
    took ~0.7 s a step for the tiny model on CPU."""
    local = [p.grad.to_local() for p in module.parameters() if p.grad is not None]
    if not local:
        return None
    squares = torch.stack([torch.linalg.vector_norm(g, dtype=torch.float32).square() for g in local]).sum()
    torch.distributed.all_reduce(squares)
    coef = (max_norm / (squares.sqrt() + 1e-6)).clamp(max=1.0)  # as clip_grad_norm_
    torch._foreach_mul_(local, coef.to(local[0].dtype))
    return squares.sqrt()


# ----------------------------------------------------------------------------- log


class TrainLogWriter:
    """Rewrites RUN_DIR/train_log.csv atomically at every log step.

    Rows of other stages are kept; this stage's rows after `resume_step` (all of them on a fresh
    start) are dropped, so a resumed run continues the log where its checkpoint was taken."""

    def __init__(self, path: Path, stage: str, resume_step: int):
        self.path = path
        self.stage = stage
        self.rows: list[dict[str, Any]] = []
        self.terms: list[str] = []
        if path.is_file():
            import csv
            import io

            reader = csv.DictReader(io.StringIO(path.read_text(encoding="utf-8")))
            for row in reader:
                if row.get("stage") == stage and int(float(row["step"])) > resume_step:
                    continue
                self.rows.append(row)
            self.terms = [c[len(rd.LOSS_PREFIX):] for c in (reader.fieldnames or []) if c.startswith(rd.LOSS_PREFIX)]

    def log(self, step: int, lr: float, samples_per_s: float, losses: dict[str, float], extra: dict[str, float]) -> None:
        import csv
        import io

        row = rd.format_train_log_row(step, self.stage, lr, samples_per_s, losses)
        row.update(extra)
        self.rows.append(row)
        self.terms += [t for t in losses if t not in self.terms]
        header = rd.train_log_header(self.terms)
        header = [*rd.TRAIN_LOG_COLUMNS, *EXTRA_LOG_COLUMNS, *header[len(rd.TRAIN_LOG_COLUMNS):]]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=header, restval="", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(self.rows)
        from vidllm.artifacts.files import atomic_write_text

        atomic_write_text(self.path, buffer.getvalue())


# ----------------------------------------------------------------------------- loop


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


class Trainer:
    """One stage's training state, split like the loop reads: `train_step` (forward, backward,
    optimiser step), `log` (throughput and losses over the last window), `maybe_checkpoint`.

    `fit` runs them from the resumed step to `stage_cfg.steps`; see `run_loop` for the arguments.
    """

    def __init__(self, job: StageJob, run_dir: Path | None, *, device: torch.device | None = None,
                 resume: dict[str, Any] | None = None,
                 checkpoint_fn: Callable[[int, dict[str, Tensor], dict[str, Any], dict[str, float]], None] | None = None,
                 report_fn: Callable[[int, dict[str, float]], None] | None = None,
                 is_main: bool = True, world_size: int = 1) -> None:
        self.job, self.cfg, self.train_cfg = job, job.stage_cfg, job.train_cfg
        self.device = device or torch.device("cpu")
        self.module = job.objective
        self.checkpoint_fn, self.report_fn = checkpoint_fn, report_fn
        self.is_main, self.world_size = is_main, world_size
        self.run_dir = run_dir
        self.optimizer = build_optimizer(self.module, self.cfg, self.train_cfg)
        self.start = 0
        self.resumed_losses: dict[str, float] = {}
        if resume is not None:
            self.start = int(resume["step"])
            self.resumed_losses = dict(resume.get("final_losses", {}))
            _load_optimizer(self.module, self.optimizer, resume["optimizer"])
            torch.set_rng_state(resume["rng"]["torch"])
            if "cuda" in resume["rng"] and torch.cuda.is_available():
                torch.cuda.set_rng_state(resume["rng"]["cuda"])
            version, internal, gauss = resume["python_rng"]
            random.setstate((version, tuple(internal), gauss))
        self.final: dict[str, float] = {}
        self._reset_window()

    def _reset_window(self) -> None:
        self.window = {"time": 0.0, "wait": 0.0, "samples": 0, "tokens": 0.0, "steps": 0, "grad_norm": 0.0}
        self.window_losses: dict[str, float] = {}

    def _setup_run(self) -> None:
        """What only a run that trains needs (a finished resume returns before it)."""
        self.amp = autocast_dtype(self.train_cfg, self.device)
        if self.train_cfg.compile:
            compile_objective(_unwrap(self.module), self.train_cfg.compile_backend)
        self.peak = peak_flops(self.device)
        self.num_params = sum(p.numel() for p in self.module.parameters())
        main_with_run_dir = self.is_main and self.run_dir is not None
        self.log_writer = (TrainLogWriter(self.run_dir / rd.TRAIN_LOG_FILE, self.job.stage, self.start)
                           if main_with_run_dir else None)
        self.tracker = Tracker(self.run_dir, self.job.stage, self._tracked_params()) if main_with_run_dir else None

    def _tracked_params(self) -> dict[str, object]:
        """The stage's schedule and optimiser settings, for the tracking backend's run page."""
        stage = {f"{self.job.stage}.{k}": v for k, v in self.cfg.model_dump(mode="json").items()}
        common = {k: v for k, v in self.train_cfg.model_dump(mode="json").items() if not isinstance(v, dict)}
        return {**common, **stage, "world_size": self.world_size}

    def train_step(self, step: int, batch: dict[str, Any]) -> tuple[dict[str, Tensor], float]:
        """One optimiser step at learning rate `learning_rate(step)`; returns (losses, tokens)."""
        module, lr = self.module, learning_rate(step, self.cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
            losses = module(batch)
        tokens = float(losses.pop("tokens", torch.zeros(())))
        total = losses["total"]
        if not torch.isfinite(total):
            bad = [k for k, v in losses.items() if k != "total" and torch.is_tensor(v) and not torch.isfinite(v).all()]
            stage = self.job.stage
            raise TrainingError(f"{stage} step {step}: non-finite loss ({float(total)}"
                                f"{'; from ' + ', '.join(bad) if bad else ''}) on scene(s) "
                                f"{', '.join(map(str, batch.get('keys') or ['?']))}: lower the learning rate "
                                f"(train.{stage}.lr) or check those scenes' data")
        used = _used_on_any_rank(module, total) if _is_fsdp(module) else None
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        if used is not None:
            for param, param_used in zip((p for p in module.parameters() if p.requires_grad), used):
                if not param_used:
                    param.grad = None
        if _is_fsdp(module):
            norm = _clip_sharded_grad_norm(module, self.train_cfg.grad_clip)
        else:
            norm = torch.nn.utils.clip_grad_norm_(module.parameters(), self.train_cfg.grad_clip)
        self.optimizer.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.window["grad_norm"] += float(norm) if norm is not None else 0.0  # before clipping
        return losses, tokens

    def _accumulate(self, losses: dict[str, Tensor], tokens: float, num_samples: int, seconds: float,
                    waited: float) -> None:
        window = self.window
        window["time"] += seconds
        window["wait"] += waited
        window["samples"] += num_samples
        window["tokens"] += tokens
        window["steps"] += 1
        for name, value in losses.items():
            self.window_losses[name] = self.window_losses.get(name, 0.0) + float(value.detach())

    def log(self, step: int) -> None:
        """Mean losses and throughput over the window since the last log, to the train log and `report_fn`."""
        window, world_size = self.window, self.world_size
        final = {k: v / window["steps"] for k, v in self.window_losses.items()}
        samples, tokens_seen = float(window["samples"]), window["tokens"]
        if world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            # Log the mean over ranks (each term over the ranks that had it) and the summed throughput.
            gathered: list[Any] = [None] * world_size
            torch.distributed.all_gather_object(gathered, (final, samples, tokens_seen))
            final = {k: sum(g[0][k] for g in gathered if k in g[0]) / sum(k in g[0] for g in gathered)
                     for k in dict.fromkeys(k for g in gathered for k in g[0])}
            samples, tokens_seen = sum(g[1] for g in gathered), sum(g[2] for g in gathered)
        else:
            samples, tokens_seen = samples * world_size, tokens_seen * world_size
        elapsed = max(window["time"], 1e-9)
        metrics = {
            "samples_per_s": samples / elapsed,
            "tokens_per_s": tokens_seen / elapsed,
            "data_wait_share": window["wait"] / elapsed,
            "mfu": (6.0 * self.num_params * window["tokens"] / elapsed / self.peak) if self.peak else float("nan"),
            "grad_norm": window["grad_norm"] / max(1, window["steps"]),  # this rank's mean over the window
        }
        lr = learning_rate(step - 1, self.cfg)  # the rate the window's last step used
        if self.log_writer is not None:
            self.log_writer.log(step, lr, metrics["samples_per_s"], final,
                                {k: v for k, v in metrics.items() if k != "samples_per_s"})
        scalars = {**{f"loss/{k}": v for k, v in final.items()}, **metrics, "lr": lr}
        if self.tracker is not None:
            self.tracker.log(step, scalars)
        if self.report_fn is not None:
            self.report_fn(step, scalars)
        self.final = final
        self._reset_window()

    def maybe_checkpoint(self, step: int) -> None:
        """Hand the full state to `checkpoint_fn` every `checkpoint_every` steps and at the end."""
        if self.checkpoint_fn is not None and (step % self.cfg.checkpoint_every == 0 or step == self.cfg.steps):
            model_state, optimizer_state = _full_states(self.module, self.optimizer)
            self.checkpoint_fn(step, model_state, optimizer_state, self.final)

    def fit(self, stop_after: int | None = None, progress: bool = True) -> LoopResult:
        from tqdm import tqdm

        cfg, start = self.cfg, self.start
        if start >= cfg.steps:
            return LoopResult(steps=start, start_step=start, final_losses=self.resumed_losses)
        self._setup_run()
        batches = self.job.batches(start)
        self.module.train()
        bar = tqdm(total=cfg.steps, initial=start, desc=self.job.stage, unit="step",
                   disable=not (progress and self.is_main))
        step = start
        try:
            while step < cfg.steps:
                t0 = time.perf_counter()
                batch, num_samples = next(batches)
                batch = self.job.to_device(batch, self.device)
                t_data = time.perf_counter()
                losses, tokens = self.train_step(step, batch)
                step += 1
                self._accumulate(losses, tokens, num_samples, time.perf_counter() - t0, t_data - t0)
                bar.update(1)
                if step % cfg.log_every == 0 or step == cfg.steps:
                    self.log(step)
                    bar.set_postfix(loss=f"{self.final.get('total', float('nan')):.4f}")
                self.maybe_checkpoint(step)
                if stop_after is not None and step - start >= stop_after:
                    break
        finally:
            bar.close()
            if hasattr(batches, "close"):  # stop a prefetch thread / generator
                batches.close()
            if self.tracker is not None:
                self.tracker.close()
        return LoopResult(steps=step, start_step=start, final_losses=self.final)


def run_loop(
    job: StageJob,
    run_dir: Path | None,
    *,
    device: torch.device | None = None,
    resume: dict[str, Any] | None = None,
    checkpoint_fn: Callable[[int, dict[str, Tensor], dict[str, Any], dict[str, float]], None] | None = None,
    report_fn: Callable[[int, dict[str, float]], None] | None = None,
    is_main: bool = True,
    world_size: int = 1,
    stop_after: int | None = None,
    progress: bool = True,
) -> LoopResult:
    """Train `job.objective` from `resume` (a `load_checkpoint` dict) or step 0.

    checkpoint_fn(step, model_state, optimizer_state, metrics) persists a checkpoint (called on
    every rank; FSDP gathers on all ranks and only rank 0 gets the full state). A resumed
    objective must hold `resume["model"]` already (load it before sharding); the optimizer state
    is loaded here. report_fn(step, metrics) is called at every log step on every rank.
    `stop_after` ends the run early after that many steps (simulates a crash in tests).
    """
    trainer = Trainer(job, run_dir, device=device, resume=resume, checkpoint_fn=checkpoint_fn,
                      report_fn=report_fn, is_main=is_main, world_size=world_size)
    return trainer.fit(stop_after=stop_after, progress=progress)
