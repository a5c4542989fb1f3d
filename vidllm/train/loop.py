"""One training loop for both stages, single-process or inside a Ray Train worker.

- AdamW (β from `train.betas`, weight decay on matrices only), gradient clipping, linear
  warm-up then cosine decay to 0; seeded. `train.precision`: bf16 autocast on CUDA by default,
  on any device with "bf16"; `train.compile` compiles the objective's `compile_targets()`.
- Logs every `log_every` steps to RUN_DIR/train_log.csv (`vidllm.eval.run_dir` format, plus
  tokens_per_s, data_wait_share = time waiting for data / step time, and mfu on CUDA).
- Checkpoints every `checkpoint_every` steps (and at the end): a directory with
  model.safetensors (trainable module state), optimizer.safetensors (keyed by parameter name
  whatever the strategy; param groups in its metadata), rng.safetensors and state.json (step,
  python RNG, and the sha256 of the other files). Written under a temporary name
  (`.step-NNNNNNNN.tmp-*`) and renamed into place; resume loads the newest checkpoint that reads
  and verifies (`load_latest_intact`: a corrupt one is skipped with a warning) and continues from
  its step. Temporary directories of killed saves are removed at the next start
  (`remove_orphaned_checkpoint_dirs`).

Determinism: batches are a pure function of the step (data order is fixed, per-step draws are
seeded by step), and the RNG state is checkpointed, so a resumed run reaches the same weights
as an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from vidllm.checkpoint import file_sha256
from vidllm.config import StageConfig, TrainConfig
from vidllm.errors import DataError, TrainingError
from vidllm.eval import run_dir as rd

log = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
RNG_FILE = "rng.safetensors"
STATE_FILE = "state.json"
EXTRA_LOG_COLUMNS = ("tokens_per_s", "data_wait_share", "mfu")
_STEP_DIR = re.compile(r"^step-(\d{8})$")
_TMP_STEP_DIR = re.compile(r"^\.step-\d{8}\.tmp-")  # save_checkpoint's temporary directories

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
    decay, no_decay = [], []
    for param in module.parameters():
        if param.requires_grad:
            (decay if param.dim() >= 2 else no_decay).append(param)  # no decay on biases / norms
    if not decay and not no_decay:
        raise ValueError("nothing to train: no parameter requires grad")
    groups = [{"params": decay, "weight_decay": train_cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=stage_cfg.lr, betas=tuple(train_cfg.betas))


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
        StateDictOptions, get_model_state_dict, get_optimizer_state_dict,
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


def _clip_sharded_grad_norm(module: nn.Module, max_norm: float) -> None:
    """`clip_grad_norm_` (2-norm over every gradient) for FSDP's DTensor shards with one all-reduce;
    `clip_grad_norm_` on the DTensors gives the same norm, but its per-tensor DTensor dispatch
    took ~0.7 s a step for the tiny model on CPU."""
    local = [p.grad.to_local() for p in module.parameters() if p.grad is not None]
    if not local:
        return
    squares = torch.stack([torch.linalg.vector_norm(g, dtype=torch.float32).square() for g in local]).sum()
    torch.distributed.all_reduce(squares)
    coef = (max_norm / (squares.sqrt() + 1e-6)).clamp(max=1.0)  # as clip_grad_norm_
    torch._foreach_mul_(local, coef.to(local[0].dtype))


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, Tensor], str]:
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for param_id, values in state["state"].items():
        for name, value in values.items():
            if torch.is_tensor(value):
                tensors[f"{param_id}\t{name}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(param_id), {})[name] = value
    meta = json.dumps({"param_groups": state["param_groups"], "scalars": scalars,
                       "id_types": {str(k): type(k).__name__ for k in state["state"]}})
    return tensors, meta


def _unflatten_optimizer(tensors: dict[str, Tensor], meta: str) -> dict[str, Any]:
    info = json.loads(meta)
    cast = {k: (int if t == "int" else str) for k, t in info["id_types"].items()}
    state: dict[Any, dict[str, Any]] = {}
    for key, value in tensors.items():
        param_id, name = key.split("\t", 1)
        state.setdefault(cast[param_id](param_id), {})[name] = value
    for param_id, values in info["scalars"].items():
        state.setdefault(cast[param_id](param_id), {}).update(values)
    return {"state": state, "param_groups": info["param_groups"]}


def save_checkpoint(out_dir: Path, step: int, model_state: dict[str, Tensor], optimizer_state: dict[str, Any],
                    extra: dict[str, Any] | None = None) -> Path:
    """Write a checkpoint directory atomically (temp dir beside it, then rename)."""
    from vidllm.checkpoint import _dedupe

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        weights, tied = _dedupe(model_state)
        save_file(weights, str(tmp / MODEL_FILE), metadata={"tied": json.dumps(tied)})
        opt_tensors, opt_meta = _flatten_optimizer(optimizer_state)
        save_file(opt_tensors, str(tmp / OPTIMIZER_FILE), metadata={"optimizer": opt_meta})
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state()
        save_file(rng, str(tmp / RNG_FILE))
        state = {"step": step, "python_rng": _jsonable_random_state(), **(extra or {}),
                 "sha256": {name: file_sha256(tmp / name) for name in (MODEL_FILE, OPTIMIZER_FILE, RNG_FILE)}}
        (tmp / STATE_FILE).write_text(json.dumps(state))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _jsonable_random_state() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def load_checkpoint(ckpt_dir: Path) -> dict[str, Any]:
    """{step, model, optimizer, rng, python_rng, ...} from a checkpoint directory; DataError if broken
    (a missing, truncated or unparsable file, or one whose sha256 differs from state.json's)."""
    from safetensors import SafetensorError, safe_open

    try:
        state = json.loads((ckpt_dir / STATE_FILE).read_text())
        if not isinstance(state, dict) or "step" not in state:
            raise ValueError(f"{STATE_FILE} has no step")
        for name, expected in (state.get("sha256") or {}).items():  # older checkpoints have no digests
            if file_sha256(ckpt_dir / name) != expected:
                raise ValueError(f"{name} does not match its sha256 in {STATE_FILE}")
        model = load_file(str(ckpt_dir / MODEL_FILE))
        with safe_open(str(ckpt_dir / MODEL_FILE), "pt") as f:
            tied = json.loads((f.metadata() or {}).get("tied", "{}"))
        for alias, source in tied.items():
            model[alias] = model[source]
        with safe_open(str(ckpt_dir / OPTIMIZER_FILE), "pt") as f:
            opt_meta = f.metadata()["optimizer"]
            opt_tensors = {k: f.get_tensor(k) for k in f.keys()}
        rng = load_file(str(ckpt_dir / RNG_FILE))
        optimizer = _unflatten_optimizer(opt_tensors, opt_meta)
    except (OSError, KeyError, ValueError, TypeError, SafetensorError) as exc:
        raise DataError(ckpt_dir, f"unreadable training checkpoint ({exc})") from None
    state.pop("sha256", None)
    return {**state, "model": model, "optimizer": optimizer, "rng": rng}


def checkpoint_problems(ckpt_dir: Path) -> list[str]:
    """What is wrong with a training checkpoint directory without loading it: a missing or
    unparsable state.json, a missing file, or one whose sha256 differs from state.json's."""
    try:
        state = json.loads((ckpt_dir / STATE_FILE).read_text())
    except (OSError, ValueError) as exc:
        return [f"{STATE_FILE}: unreadable ({exc.__class__.__name__})"]
    digests = state.get("sha256") if isinstance(state, dict) else None
    if not isinstance(digests, dict):
        return [f"{STATE_FILE} records no digests (written before they were recorded)"]
    problems = []
    for name in (MODEL_FILE, OPTIMIZER_FILE, RNG_FILE):
        if not (ckpt_dir / name).is_file():
            problems.append(f"{name}: missing")
        elif name in digests and file_sha256(ckpt_dir / name) != digests[name]:
            problems.append(f"{name}: sha256 differs from {STATE_FILE} (modified or corrupted)")
    return problems


def step_checkpoints(checkpoints_dir: Path) -> list[Path]:
    """Every `step-NNNNNNNN` directory (complete or not), newest first."""
    if not checkpoints_dir.is_dir():
        return []
    found = sorted((int(m.group(1)), p) for p in checkpoints_dir.iterdir() if (m := _STEP_DIR.match(p.name)))
    return [p for _, p in reversed(found)]


def load_latest_intact(checkpoints_dir: Path) -> tuple[Path | None, dict[str, Any] | None]:
    """(path, `load_checkpoint` dict) of the newest checkpoint that loads; a corrupt newer one is
    skipped with a logged warning naming it. (None, None) if there is none; DataError if there are
    checkpoints but none of them is intact."""
    candidates = step_checkpoints(checkpoints_dir)
    for path in candidates:
        try:
            return path, load_checkpoint(path)
        except DataError as exc:
            log.warning("skipping corrupt checkpoint %s; falling back to an older one", exc)
    if candidates:
        raise DataError(checkpoints_dir, f"no intact checkpoint ({len(candidates)} corrupt, see the warnings): "
                                         "start over with `vidllm train --fresh`")
    return None, None


def remove_orphaned_checkpoint_dirs(checkpoints_dir: Path) -> list[Path]:
    """Delete the temporary directories (`.step-NNNNNNNN.tmp-*`) of saves that were killed. Returns them."""
    if not checkpoints_dir.is_dir():
        return []
    removed = [p for p in checkpoints_dir.iterdir() if _TMP_STEP_DIR.match(p.name)]
    for path in removed:
        log.warning("%s: removing the temporary directory of an interrupted checkpoint save", path)
        shutil.rmtree(path, ignore_errors=True)
    return removed


def latest_checkpoint(checkpoints_dir: Path) -> Path | None:
    """The complete `step-NNNNNNNN` directory with the highest step (temp dirs are ignored)."""
    if not checkpoints_dir.is_dir():
        return None
    found = sorted((int(m.group(1)), p) for p in checkpoints_dir.iterdir()
                   if (m := _STEP_DIR.match(p.name)) and (p / STATE_FILE).is_file())
    return found[-1][1] if found else None


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def prune_checkpoints(checkpoints_dir: Path, keep: int) -> None:
    found = sorted(p for p in checkpoints_dir.iterdir() if _STEP_DIR.match(p.name))
    for old in found[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


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
        from vidllm.eval.predictions import atomic_write_text

        atomic_write_text(self.path, buffer.getvalue())


# ----------------------------------------------------------------------------- loop


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


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
    from tqdm import tqdm

    cfg, train_cfg = job.stage_cfg, job.train_cfg
    device = device or torch.device("cpu")
    module = job.objective
    optimizer = build_optimizer(module, cfg, train_cfg)
    start = 0
    if resume is not None:
        start = int(resume["step"])
        _load_optimizer(module, optimizer, resume["optimizer"])
        torch.set_rng_state(resume["rng"]["torch"])
        if "cuda" in resume["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state(resume["rng"]["cuda"])
        version, internal, gauss = resume["python_rng"]
        random.setstate((version, tuple(internal), gauss))
    if start >= cfg.steps:
        return LoopResult(steps=start, start_step=start, final_losses=dict(resume.get("final_losses", {})))
    amp = autocast_dtype(train_cfg, device)
    if train_cfg.compile:
        compile_objective(_unwrap(module), train_cfg.compile_backend)
    peak = peak_flops(device)
    num_params = sum(p.numel() for p in module.parameters())
    log = TrainLogWriter(run_dir / rd.TRAIN_LOG_FILE, job.stage, start) if (is_main and run_dir is not None) else None
    batches = job.batches(start)
    module.train()
    window = {"time": 0.0, "wait": 0.0, "samples": 0, "tokens": 0.0, "steps": 0}
    window_losses: dict[str, float] = {}
    final: dict[str, float] = {}
    bar = tqdm(total=cfg.steps, initial=start, desc=job.stage, unit="step", disable=not (progress and is_main))
    step = start
    try:
        while step < cfg.steps:
            t0 = time.perf_counter()
            batch, num_samples = next(batches)
            batch = job.to_device(batch, device)
            t_data = time.perf_counter()
            lr = learning_rate(step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                losses = module(batch)
            tokens = float(losses.pop("tokens", torch.zeros(())))
            total = losses["total"]
            if not torch.isfinite(total):
                bad = [k for k, v in losses.items() if k != "total" and torch.is_tensor(v) and not torch.isfinite(v).all()]
                raise TrainingError(f"{job.stage} step {step}: non-finite loss ({float(total)}"
                                    f"{'; from ' + ', '.join(bad) if bad else ''}) on scene(s) "
                                    f"{', '.join(map(str, batch.get('keys') or ['?']))}: lower the learning rate "
                                    f"(train.{job.stage}.lr) or check those scenes' data")
            used = _used_on_any_rank(module, total) if _is_fsdp(module) else None
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            if used is not None:
                for param, param_used in zip((p for p in module.parameters() if p.requires_grad), used):
                    if not param_used:
                        param.grad = None
            if _is_fsdp(module):
                _clip_sharded_grad_norm(module, train_cfg.grad_clip)
            else:
                torch.nn.utils.clip_grad_norm_(module.parameters(), train_cfg.grad_clip)
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            step += 1
            now = time.perf_counter()
            window["time"] += now - t0
            window["wait"] += t_data - t0
            window["samples"] += num_samples
            window["tokens"] += tokens
            window["steps"] += 1
            for name, value in losses.items():
                window_losses[name] = window_losses.get(name, 0.0) + float(value.detach())
            bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.steps:
                final = {k: v / window["steps"] for k, v in window_losses.items()}
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
                    "mfu": (6.0 * num_params * window["tokens"] / elapsed / peak) if peak else float("nan"),
                }
                if log is not None:
                    log.log(step, lr, metrics["samples_per_s"], final,
                            {k: v for k, v in metrics.items() if k != "samples_per_s"})
                bar.set_postfix(loss=f"{final.get('total', float('nan')):.4f}")
                if report_fn is not None:
                    report_fn(step, {**{f"loss/{k}": v for k, v in final.items()}, **metrics, "lr": lr})
                window = {"time": 0.0, "wait": 0.0, "samples": 0, "tokens": 0.0, "steps": 0}
                window_losses = {}
            if checkpoint_fn is not None and (step % cfg.checkpoint_every == 0 or step == cfg.steps):
                model_state, optimizer_state = _full_states(module, optimizer)
                checkpoint_fn(step, model_state, optimizer_state, final)
            if stop_after is not None and step - start >= stop_after:
                break
    finally:
        bar.close()
        if hasattr(batches, "close"):  # stop a prefetch thread / generator
            batches.close()
    return LoopResult(steps=step, start_step=start, final_losses=final)
