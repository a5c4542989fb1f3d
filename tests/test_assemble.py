"""Pretrained parts compose: after `vidllm init` and at step 0 of Stage 2, every part equals its source."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from tests.shard_fixtures import write_tiny_shards
from vidllm.config import load_config


@pytest.fixture(scope="module")
def shards(synthetic_dataset_3, tmp_path_factory):
    return write_tiny_shards(synthetic_dataset_3, tmp_path_factory.mktemp("assemble") / "shards")


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Three sources with distinct random weights: a Stage-1 dir, a VGGT-named checkpoint of the
    reconstruction branch, and a Hugging Face causal-LM directory with its tokenizer."""
    from transformers import AutoModelForCausalLM

    from vidllm.models.encoder import SharedEncoder
    from vidllm.models.llm import llm_config
    from vidllm.models.reconstruction import ReconstructionBranch
    from vidllm.tokenizer import train_tokenizer
    from vidllm.train.stage1 import DistillStudent, save_stage1_model

    root = tmp_path_factory.mktemp("sources")
    cfg = load_config("tiny")
    torch.manual_seed(11)
    student = DistillStudent(cfg.model, 32, 32)
    stage1_dir = save_stage1_model(student, cfg, root / "stage1_model")
    torch.manual_seed(12)
    recon = ReconstructionBranch(cfg.model, SharedEncoder(cfg.model.encoder).hidden_size)
    # Aggregator and heads carry VGGT's own names; the metric depth model is ours only.
    vggt = {k: v.clone() for k, v in recon.state_dict().items() if not k.startswith("metric_depth.")}
    vggt["track_head.some.weight"] = torch.zeros(2)
    save_file(vggt, str(root / "vggt.safetensors"))
    torch.manual_seed(13)
    llm = AutoModelForCausalLM.from_config(llm_config(cfg.model.llm, cfg.model.llm.vocab_size))
    llm.save_pretrained(str(root / "llm"))
    train_tokenizer(["a chair by the window"], vocab_size=cfg.model.llm.vocab_size).save_pretrained(str(root / "llm"))
    return {"stage1": stage1_dir, "student": student, "vggt": root / "vggt.safetensors", "vggt_state": vggt,
            "llm": root / "llm", "llm_state": llm.state_dict()}


def _assert_parts_equal_sources(model, tokenizer, src) -> None:
    from vidllm.tokenizer import load_tokenizer

    student = src["student"].state_dict()
    for part in ("encoder", "cta"):
        mine = getattr(model, part).state_dict()
        theirs = {k[len(part) + 1:]: v for k, v in student.items() if k.startswith(part + ".")}
        assert mine.keys() == theirs.keys()
        for key, value in theirs.items():
            assert torch.equal(mine[key], value), f"{part}.{key} differs from the Stage-1 directory"
    recon = model.reconstruction.state_dict()
    loaded = [k for k in src["vggt_state"] if not k.startswith("track_head.")]
    assert set(loaded) == {k for k in recon if not k.startswith("metric_depth.")}
    for key in loaded:
        assert torch.equal(recon[key], src["vggt_state"][key]), f"reconstruction.{key} differs from the VGGT checkpoint"
    llm = model.llm.get_base_model() if hasattr(model.llm, "get_base_model") else model.llm
    # LoRA wraps each target Linear and the token rows (weights move to `.base_layer`); the
    # adapters start at zero, so the base weights are what the LLM computes with at step 0.
    base = {k.replace(".token_adapter", "").replace(".base_layer", ""): v for k, v in llm.state_dict().items()
            if "lora_" not in k and "trainable_tokens_delta" not in k}
    for key, value in src["llm_state"].items():
        assert torch.equal(base[key], value), f"llm.{key} differs from the Hugging Face directory"
    assert tokenizer.get_vocab() == load_tokenizer(src["llm"]).get_vocab()


def test_vidllm_init_assembles_stage1_vggt_and_llm(sources, tmp_path, capsys):
    from vidllm.artifacts.model_dir import load_pretrained
    from vidllm.cli import main

    out = tmp_path / "model"
    assert main(["init", "--recipe", "tiny", "--stage1", str(sources["stage1"]), "--vggt", str(sources["vggt"]),
                 "--llm", str(sources["llm"]), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"encoder         Stage 1 {sources['stage1']}" in printed
    assert f"reconstruction  VGGT {sources['vggt']}" in printed
    assert "metric_depth    random init" in printed
    model, tokenizer = load_pretrained(out)
    _assert_parts_equal_sources(model, tokenizer, sources)
    assert model.config.init.vggt == str(sources["vggt"])  # the directory records where it came from


def test_stage2_from_a_stage1_dir_keeps_the_vggt_and_llm_init_at_step_0(sources, shards):
    from vidllm.train.jobs import StageInputs, stage2_setup

    cfg = load_config("tiny", overrides=[f"model.init.vggt={sources['vggt']}", f"model.llm.pretrained={sources['llm']}"])
    setup = stage2_setup(cfg, StageInputs(str(shards), init_model=sources["stage1"]))
    model = setup.job.objective.model
    _assert_parts_equal_sources(model, setup.tokenizer, sources)
    assert model.config.init.stage1 == str(sources["stage1"])


def test_single_stage_ablation_refuses_stage1(sources, shards, tmp_path):
    from vidllm.config import ConfigError
    from vidllm.errors import DataError
    from vidllm.train.jobs import train_stage1
    from vidllm.train.stage2 import build_stage2_model

    cfg = load_config("tiny", overrides=["train.single_stage=true"])
    with pytest.raises(DataError, match="single_stage"):
        build_stage2_model(cfg, str(shards), sources["stage1"])
    with pytest.raises(ConfigError, match="no Stage 1 to run"):
        train_stage1(cfg, str(shards), str(tmp_path / "cache"), tmp_path / "run")
    model, _ = build_stage2_model(cfg, str(shards), None)  # Stage 2 alone builds from the config
    assert model.reconstruction.metric_depth is not None


def test_missing_sources_are_one_line_errors(tmp_path):
    from vidllm.assemble import assemble_model
    from vidllm.errors import DataError
    from vidllm.tokenizer import train_tokenizer

    cfg = load_config("tiny").model
    tokenizer = train_tokenizer([], vocab_size=cfg.llm.vocab_size)
    bad_stage1 = cfg.model_copy(update={"init": cfg.init.model_copy(update={"stage1": str(tmp_path)})})
    with pytest.raises(DataError, match="not a Stage-1 directory"):
        assemble_model(bad_stage1, tokenizer)
    bad_vggt = cfg.model_copy(update={"init": cfg.init.model_copy(update={"vggt": str(tmp_path / "none.pt")})})
    with pytest.raises(DataError, match="none.pt"):
        assemble_model(bad_vggt, tokenizer)
