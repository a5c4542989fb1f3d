"""`build_optimizer` and the per-module lr factors (`train.stageN.lr_scale`)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vidllm.config import ConfigError, StageConfig, TrainConfig, load_config
from vidllm.train.loop import build_optimizer


class _Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Linear(3, 4)
        self.llm = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))


def test_default_is_two_groups_decay_on_matrices_only():
    model = _Model()
    opt = build_optimizer(model, StageConfig(lr=1e-3), TrainConfig(weight_decay=0.05))
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]
    assert [p for g in opt.param_groups for p in g["params"]] == [
        model.encoder.weight, model.llm[0].weight, model.encoder.bias, model.llm[0].bias, model.llm[1].weight,
        model.llm[1].bias]
    assert all(g["lr_scale"] == 1.0 for g in opt.param_groups)


def test_lr_scale_gives_a_module_its_own_lr_and_the_step_applies_it():
    model = _Model()
    opt = build_optimizer(model, StageConfig(lr=1e-3, lr_scale={"encoder": 0.1}), TrainConfig())
    scale_of = {id(p): g["lr_scale"] for g in opt.param_groups for p in g["params"]}
    assert scale_of[id(model.encoder.weight)] == scale_of[id(model.encoder.bias)] == 0.1
    assert all(scale_of[id(p)] == 1.0 for p in model.llm.parameters())
    # One AdamW step from zero moments moves each weight by about lr x factor.
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for group in opt.param_groups:  # what Trainer.train_step does with the scheduled lr
        group["lr"] = 1e-3 * group["lr_scale"]
    model.llm(model.encoder(torch.randn(8, 3))).pow(2).sum().backward()
    opt.step()
    moved = {n: float((p.detach() - before[n]).abs().max()) for n, p in model.named_parameters()}
    assert moved["encoder.weight"] == pytest.approx(1e-4, rel=0.05)
    assert moved["llm.0.weight"] == pytest.approx(1e-3, rel=0.05)


def test_lr_scale_refuses_unknown_modules_and_bad_factors():
    with pytest.raises(ConfigError, match="encodr"):
        build_optimizer(_Model(), StageConfig(lr_scale={"encodr": 0.1}), TrainConfig())
    with pytest.raises(ConfigError, match="lr_scale"):
        load_config("tiny", overrides=["train.stage2.lr_scale={encoder: 0}"])
    assert load_config("tiny", overrides=["train.stage2.lr_scale={encoder: 0.1}"]).train.stage2.lr_scale == {
        "encoder": 0.1}
