"""Stage-1 and Stage-2 single-process runs on tiny shards: they learn, hand over, resume, and log."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.train.helpers import tiny_config
from vidllm.artifacts.run_dir import read_train_log
from vidllm.train import train_stage1, train_stage2
from vidllm.train.checkpoint import CHECKPOINTS_DIR, latest_checkpoint
from vidllm.train.loop import learning_rate

LEARN = ["train.stage1.steps=16", "train.stage2.steps=16", "train.stage1.warmup_steps=2",
         "train.stage2.warmup_steps=2", "train.stage1.checkpoint_every=8", "train.stage2.checkpoint_every=8",
         "train.stage1.log_every=1", "train.stage2.log_every=1"]


def _with_teachers(cfg, teachers):
    return cfg.model_copy(update={"teachers": teachers})


def _rows(log, stage: str, term: str) -> np.ndarray:
    mask = np.array([s == stage for s in log.stages])
    values = log.losses[term][mask]
    return values[np.isfinite(values)]


@pytest.fixture(scope="module")
def two_stage_run(train_shards, teachers_and_cache, tmp_path_factory):
    teachers, cache = teachers_and_cache
    cfg = _with_teachers(tiny_config(*LEARN), teachers)
    run = tmp_path_factory.mktemp("run")
    stage1 = train_stage1(cfg, str(train_shards), str(cache), run, progress=False)
    stage2 = train_stage2(cfg, str(train_shards), run, init_model=stage1.model_dir, progress=False)
    return cfg, run, stage1, stage2


def test_stage1_distillation_learns(two_stage_run):
    cfg, run, stage1, _ = two_stage_run
    assert stage1.steps == 16 and stage1.model_dir == run / "stage1_model"
    log = read_train_log(run / "train_log.csv")
    total, geo = _rows(log, "stage1", "total"), _rows(log, "stage1", "geo")
    assert len(total) == 16
    # Student features move towards the (random but fixed) teachers: a large, steady drop.
    assert total[-3:].mean() < 0.6 * total[:3].mean() and geo[-3:].mean() < 0.6 * geo[:3].mean()
    assert set(stage1.final_losses) == {"total", "geo", "lang", "sc"}
    header = (run / "train_log.csv").read_text().splitlines()[0].split(",")
    assert header[:7] == ["step", "stage", "lr", "samples_per_s", "tokens_per_s", "data_wait_share", "mfu"]
    row = (run / "train_log.csv").read_text().splitlines()[1].split(",")
    assert float(row[3]) > 0 and float(row[4]) > 0 and 0 <= float(row[5]) < 1
    # The LR follows warm-up + cosine.
    assert np.allclose(log.lr[:16], [learning_rate(s, cfg.train.stage1) for s in range(16)])


def test_stage2_starts_from_stage1_and_learns(two_stage_run, train_shards):
    from vidllm.artifacts.model_dir import load_pretrained
    from vidllm.train.stage2 import build_stage2_model

    cfg, run, stage1, stage2 = two_stage_run
    # Stage-1 encoder + CTA are carried into the Stage-2 model.
    student = load_file(str(stage1.model_dir / "model.safetensors"))
    model, _ = build_stage2_model(cfg, str(train_shards), stage1.model_dir)
    state = model.state_dict()
    for key in ("encoder.backbone.embeddings.patch_embeddings.projection.weight", "cta.bridge_tokens"):
        assert torch.equal(state[key], student[key])

    assert stage2.steps == 16 and stage2.model_dir == run / "model"
    log = read_train_log(run / "train_log.csv")
    assert len(_rows(log, "stage1", "total")) == 16  # both stages share the log
    recon, lm = _rows(log, "stage2", "recon"), _rows(log, "stage2", "lm")
    assert recon[-3:].mean() < 0.8 * recon[:3].mean()
    assert lm[-2:].mean() < lm[:2].mean()
    # The exported model is a normal model directory with trained LoRA adapters.
    trained, tokenizer = load_pretrained(stage2.model_dir)
    assert tokenizer is not None
    lora_b = [p for n, p in trained.named_parameters() if "lora_B" in n]
    assert lora_b and any(float(p.detach().abs().max()) > 0 for p in lora_b)  # B starts at zero: it was trained
    assert not torch.equal(trained.state_dict()["encoder.backbone.embeddings.patch_embeddings.projection.weight"],
                           student["encoder.backbone.embeddings.patch_embeddings.projection.weight"])


@pytest.mark.parametrize("stage", [1, 2])
def test_resume_after_interruption_gives_the_same_weights(stage, train_shards, teachers_and_cache, tmp_path):
    teachers, cache = teachers_and_cache
    cfg = _with_teachers(tiny_config(f"train.stage{stage}.steps=4", f"train.stage{stage}.checkpoint_every=2"), teachers)

    def run(run_dir, stop_after=None):
        if stage == 1:
            return train_stage1(cfg, str(train_shards), str(cache), run_dir, stop_after=stop_after, progress=False)
        return train_stage2(cfg, str(train_shards), run_dir, init_model=None, stop_after=stop_after, progress=False)

    straight = run(tmp_path / "straight")
    interrupted = run(tmp_path / "resumed", stop_after=2)
    assert interrupted.steps == 2 and not interrupted.model_dir.exists()
    ckpt = latest_checkpoint(tmp_path / "resumed" / CHECKPOINTS_DIR / f"stage{stage}")
    assert ckpt is not None and ckpt.name == "step-00000002"
    resumed = run(tmp_path / "resumed")
    assert resumed.resumed_from == 2 and resumed.steps == 4
    a = load_file(str(straight.model_dir / "model.safetensors"))
    b = load_file(str(resumed.model_dir / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    if stage == 2:
        a = load_file(str(straight.model_dir / "adapters" / "adapter_model.safetensors"))
        b = load_file(str(resumed.model_dir / "adapters" / "adapter_model.safetensors"))
        assert a.keys() == b.keys() and any("trainable_tokens_delta" in k for k in a)  # Vid-LLM token rows
        assert all(torch.equal(a[k], b[k]) for k in a)
    # The log continues: steps 1..4 once each, with the uninterrupted run's losses.
    log_a, log_b = read_train_log(tmp_path / "straight" / "train_log.csv"), read_train_log(
        tmp_path / "resumed" / "train_log.csv")
    assert log_b.steps.tolist() == [1, 2, 3, 4]
    assert np.allclose(log_a.losses["total"], log_b.losses["total"])
    # A re-run of a finished stage does no training.
    again = run(tmp_path / "resumed")
    assert again.resumed_from == 4 and again.steps == 4


def test_cli_trains_both_stages_and_reports_errors(train_shards, teachers_and_cache, tmp_path, capsys):
    from vidllm.cli import main

    teachers, cache = teachers_and_cache
    run = tmp_path / "cli_run"
    common = ["--shards", str(train_shards), "--run-dir", str(run), "--recipe", "tiny", "--json", "--no-progress",
              "--set", "train.stage1.steps=2", "--set", "train.stage2.steps=2"]
    assert main(["train", "--stage", "1", "--teacher-cache", str(cache), "--geometry-teacher", teachers.geometry,
                 "--semantic-teacher", teachers.semantic, *common]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["steps"] == 2 and out["model_dir"].endswith("stage1_model") and "geo" in out["final_losses"]
    assert main(["train", "--stage", "2", "--init-model", out["model_dir"], *common]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["steps"] == 2 and (run / "model" / "config.json").is_file() and "recon" in out["final_losses"]

    assert main(["train", "--stage", "1", *common]) == 2
    assert "--teacher-cache is required" in capsys.readouterr().err
    assert main(["train", "--stage", "2", "--init-model", str(tmp_path / "missing"), *common]) == 2
    assert "missing" in capsys.readouterr().err
