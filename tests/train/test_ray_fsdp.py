"""FSDP2 (`fully_shard`) on CPU with gloo.

Under Ray Train with 2 workers, the tiny Stage-2 trained for 3 steps with `train.strategy: fsdp`
reaches the weights the same job reaches with DDP (same seed, same data), its gathered checkpoint
is full safetensors, and the exported model directory loads into a single process with exactly
those weights. On one rank without Ray (seconds): resume, unused parameters and bf16 units."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
import torch

from tests.train.helpers import tiny_config
from vidllm.artifacts.run_dir import read_train_log
from vidllm.train import train_stage2
from vidllm.train.checkpoint import load_checkpoint
from vidllm.train.ray_launcher import run_name

STEPS = 3
LR = 1e-3  # the tiny recipe's stage-2 lr, pinned here because the tolerance below is a fraction of it
# Adam normalises each update to ~lr whatever the gradient's size, so a real divergence (a gradient
# not synchronised, a parameter that skipped or took an extra step) moves weights by O(lr) per step.
# Float rounding differs between the strategies (gradient norm over shards vs whole tensors,
# kernels on gathered vs local weights) and Adam amplifies it where gradients are ~0 (e.g. attention
# key biases, which softmax makes gradient-free): measured 6e-6. 1e-4 = a tenth of one step.
PARAM_ATOL = 0.1 * LR


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray (never a cluster found on this machine), shared if one is already up."""
    import ray

    if ray.is_initialized():
        yield
        return
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        yield
    finally:
        ray.shutdown()


def _train(strategy: str, train_shards, tmp_path):
    cfg = tiny_config(f"train.stage2.steps={STEPS}", f"train.stage2.lr={LR}", "train.stage2.warmup_steps=0",
                      "train.stage2.log_every=1", f"train.stage2.checkpoint_every={STEPS}", "train.num_workers=2",
                      f"train.strategy={strategy}", f"train.storage_path={tmp_path / 'ray'}")
    run_dir = tmp_path / strategy
    result = train_stage2(cfg, str(train_shards), run_dir, init_model=None, use_ray=True)
    assert result.steps == STEPS
    checkpoint = load_checkpoint(tmp_path / "ray" / run_name(run_dir, "stage2") / f"step-{STEPS:08d}")
    return result, checkpoint, run_dir / "train_log.csv"


def test_fsdp_matches_ddp_and_its_checkpoint_loads_in_one_process(train_shards, local_ray, tmp_path):
    from vidllm.artifacts.model_dir import load_pretrained

    _, ddp, ddp_log_path = _train("ddp", train_shards, tmp_path)
    fsdp_result, fsdp, fsdp_log_path = _train("fsdp", train_shards, tmp_path)
    ddp_log, fsdp_log = read_train_log(ddp_log_path), read_train_log(fsdp_log_path)

    # Same weights (every trainable and frozen tensor, full shapes: the gathered state is not sharded).
    assert fsdp["model"].keys() == ddp["model"].keys()
    diffs = {k: float((fsdp["model"][k].float() - ddp["model"][k].float()).abs().max())
             for k in ddp["model"] if ddp["model"][k].numel()}
    worst = max(diffs, key=diffs.get)
    print(f"FSDP vs DDP max |Δparam| after {STEPS} steps: {diffs[worst]:.3e} ({worst})")
    assert diffs[worst] <= PARAM_ATOL, (worst, diffs[worst])
    # Adam's moments are linear in the gradients (and their squares), so they catch a wrong gradient
    # scale that the scale-invariant update hides: compared over all parameters at once (measured
    # ~3e-7 relative; per tensor, gradient-free ones are pure rounding noise). Equal `step`s: no
    # parameter skipped or took an extra step.
    states = fsdp["optimizer"]["state"], ddp["optimizer"]["state"]
    assert states[0].keys() == states[1].keys()
    for name in states[1]:
        assert float(states[0][name]["step"]) == float(states[1][name]["step"]) == STEPS, name
    for key in ("exp_avg", "exp_avg_sq"):
        ours, theirs = (torch.cat([state[name][key].flatten() for name in states[1]]) for state in states)
        relative = float((ours - theirs).norm() / theirs.norm())
        print(f"FSDP vs DDP relative |Δ{key}|: {relative:.2e}")
        assert relative < 1e-5, (key, relative)
    np.testing.assert_allclose(fsdp_log.losses["total"], ddp_log.losses["total"], rtol=1e-4)

    # Throughput logging works under FSDP (samples and tokens summed over both ranks).
    assert fsdp_log.steps.tolist() == list(range(1, STEPS + 1))
    assert (fsdp_log.samples_per_s > 0).all()
    rows = list(csv.DictReader(io.StringIO(fsdp_log_path.read_text(encoding="utf-8"))))
    assert all(float(row["tokens_per_s"]) > 0 for row in rows)

    # The exported model directory (what `vidllm predict --model` reads) holds the gathered weights.
    model, tokenizer = load_pretrained(fsdp_result.model_dir)
    assert tokenizer is not None
    loaded = model.state_dict()
    gathered = {k.removeprefix("model."): v for k, v in fsdp["model"].items()}
    assert loaded.keys() == gathered.keys()
    for key, value in gathered.items():
        assert torch.equal(loaded[key], value), key


class _Toy(torch.nn.Module):
    """Two blocks (the FSDP units), a frozen input layer, a head used on odd steps only and one
    never used (no gradient, hence no AdamW state, ever)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.frozen = torch.nn.Linear(8, 8).requires_grad_(False)
        block = lambda: torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Tanh())  # noqa: E731
        self.blocks = torch.nn.ModuleList([block(), block()])
        self.head = torch.nn.Linear(8, 1)
        self.odd_steps = torch.nn.Linear(8, 1)
        self.never = torch.nn.Linear(8, 1)

    def fsdp_units(self):
        return list(self.blocks)

    def forward(self, batch):
        x = self.frozen(batch["x"])
        for block in self.blocks:
            x = block(x)
        total = self.head(x).pow(2).mean()
        if batch["step"] % 2:
            total = total + self.odd_steps(x).mean()
        return {"total": total}


def _toy_job(objective):
    from vidllm.config import StageConfig, TrainConfig
    from vidllm.train.loop import StageJob

    def batches(start):
        for step in range(start, 1_000):
            yield {"x": torch.randn(4, 8, generator=torch.Generator().manual_seed(step)), "step": step}, 4

    stage = StageConfig(steps=4, lr=1e-2, warmup_steps=0, checkpoint_every=2, log_every=1)
    return StageJob("stage2", objective, batches, stage, TrainConfig(), lambda batch, device: batch)


def test_fsdp_resume_and_unused_parameters_match_a_single_process(tmp_path):
    """FSDP2 on one gloo rank, no Ray (seconds): 4 steps equal a single process's, including a
    parameter used on odd steps only (its gradient is None on even steps under both); a run resumed
    from the step-2 checkpoint (on disk; optimizer state loaded into DTensor shards, no state for the
    never-used parameter) ends on the same weights."""
    import torch.distributed as dist

    from vidllm.train.checkpoint import load_checkpoint, save_checkpoint
    from vidllm.train.loop import run_loop
    from vidllm.train.ray_launcher import shard_objective

    single = _Toy()
    run_loop(_toy_job(single), None, progress=False)
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        saved = {}

        def keep(step, model_state, optimizer_state, metrics):
            saved[step] = save_checkpoint(tmp_path / f"step-{step}", step, model_state, optimizer_state)

        job = _toy_job(shard_objective(_Toy(), _toy_job(None).train_cfg, torch.device("cpu")))
        run_loop(job, None, checkpoint_fn=keep, world_size=1, progress=False)
        final = load_checkpoint(saved[4])
        middle = load_checkpoint(saved[2])
        assert "never.weight" not in middle["optimizer"]["state"] and "odd_steps.weight" in middle["optimizer"]["state"]
        resumed = _Toy()
        resumed.load_state_dict(middle["model"])
        again = {}
        job = _toy_job(shard_objective(resumed, _toy_job(None).train_cfg, torch.device("cpu")))
        run_loop(job, None, resume=middle, checkpoint_fn=lambda s, m, o, _: again.update(model=m, optimizer=o),
                 world_size=1, progress=False)
    finally:
        dist.destroy_process_group()
    for name, value in single.state_dict().items():
        torch.testing.assert_close(final["model"][name], value, rtol=0, atol=1e-6, msg=name)
        assert torch.equal(again["model"][name], final["model"][name]), name
    assert again["optimizer"]["state"].keys() == final["optimizer"]["state"].keys()


def test_fsdp_bf16_gathers_the_units_in_bf16_and_keeps_fp32_masters(tmp_path):
    """`train.precision: bf16` under FSDP2: the units run on bf16 copies of their weights, the root
    (which holds the fp32 heads) and every sharded master weight and gradient stay fp32."""
    import torch.distributed as dist

    from vidllm.config import TrainConfig
    from vidllm.train.loop import run_loop
    from vidllm.train.ray_launcher import shard_objective

    seen = {}
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        toy = _Toy()
        job = _toy_job(toy)
        job.train_cfg = TrainConfig(precision="bf16")
        shard_objective(toy, job.train_cfg, torch.device("cpu"))
        toy.blocks[0][0].register_forward_pre_hook(lambda m, args: seen.update(unit=m.weight.dtype))
        toy.head.register_forward_pre_hook(lambda m, args: seen.update(root=m.weight.dtype))
        result = run_loop(job, None, world_size=1, progress=False)
        masters = {p.dtype for p in toy.parameters()} | {p.grad.dtype for p in toy.parameters() if p.grad is not None}
    finally:
        dist.destroy_process_group()
    assert seen == {"unit": torch.bfloat16, "root": torch.float32}
    assert masters == {torch.float32} and np.isfinite(result.final_losses["total"])
