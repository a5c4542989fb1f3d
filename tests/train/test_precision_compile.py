"""The accelerator switches run on CPU for the tiny recipe: torch.compile of the vision modules and
the LLM body, bf16 autocast, and the unshared (spliced) LLM path; each trains with finite losses."""

from __future__ import annotations

import math

import pytest
import torch

from tests.train.helpers import tiny_config
from vidllm.artifacts.run_dir import read_train_log
from vidllm.train import train_stage2
from vidllm.train.loop import autocast_dtype, compile_objective
from vidllm.train.stage2 import Stage2Objective

STEPS = ["train.stage2.steps=2", "train.stage2.warmup_steps=1", "train.stage2.log_every=1",
         "train.stage2.checkpoint_every=2"]


def _final_losses(run):
    log = read_train_log(run / "train_log.csv")
    return [float(v) for v in log.losses["total"]]


def test_bf16_autocast_is_honoured_on_cpu():
    assert autocast_dtype(tiny_config("train.precision=bf16").train, torch.device("cpu")) == torch.bfloat16
    assert autocast_dtype(tiny_config().train, torch.device("cpu")) is None  # auto: fp32 on CPU
    assert autocast_dtype(tiny_config().train, torch.device("cuda")) == torch.bfloat16
    assert autocast_dtype(tiny_config("train.precision=fp32").train, torch.device("cuda")) is None


@pytest.mark.parametrize("overrides", [
    # aot_eager: dynamo capture + AOT autograd as inductor uses them, without its C++ codegen (minutes
    # on 2 cores); on a GPU node `train.compile_backend` stays inductor.
    ["train.compile=true", "train.compile_backend=aot_eager", "train.precision=bf16"],
    ["train.share_vision_prefix=false", "train.loss_weights.point=0"],
], ids=["compile-bf16", "spliced-no-point-head"])
def test_stage2_trains_with_the_accelerator_switches(train_shards, tmp_path, overrides):
    cfg = tiny_config(*STEPS, *overrides)
    result = train_stage2(cfg, str(train_shards), tmp_path / "run", init_model=None, progress=False)
    assert result.steps == 2 and (tmp_path / "run" / "model").is_dir()
    losses = _final_losses(tmp_path / "run")
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)


def test_compile_targets_are_compiled_in_place(train_shards):
    from vidllm.train.stage2 import build_stage2_model

    model, _ = build_stage2_model(tiny_config(), str(train_shards), None)
    objective = Stage2Objective(model)
    names = {n for n, _ in objective.named_parameters()}
    compiled = compile_objective(objective, "eager")
    assert compiled == ["cta", "encoder", "llm", "reconstruction"]
    assert all(getattr(m, "_compiled_call_impl", None) is not None for m in objective.compile_targets().values())
    assert {n for n, _ in objective.named_parameters()} == names  # state-dict names unchanged
