"""Model directories and checkpoints record sha256 digests; `vidllm verify` checks them and loading warns."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from vidllm.artifacts.model_dir import DIGESTS_KEY, load_pretrained, save_pretrained, verify_model_dir
from vidllm.cli import main
from vidllm.config import load_config
from vidllm.lora import apply_lora
from vidllm.models.vidllm import VidLLM
from vidllm.tokenizer import SpecialTokenIds, train_tokenizer
from vidllm.train.checkpoint import save_checkpoint
from vidllm.train.stage1 import DistillStudent, load_encoder_and_cta, save_stage1_model


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(vocab_size=512)


def _save_model(path: Path, tokenizer, lora: bool) -> Path:
    cfg = load_config("tiny").model
    torch.manual_seed(0)
    model = VidLLM(cfg, SpecialTokenIds.from_tokenizer(tokenizer), 512)
    if lora:
        apply_lora(model, cfg.llm)
    return save_pretrained(model, path, tokenizer, recipe="tiny")


def _flip_byte(path: Path, offset: int = -1) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("lora", [False, True])
def test_model_dir_records_digests_and_verify_detects_a_flipped_byte(tmp_path, tokenizer, lora, capsys, caplog):
    model_dir = _save_model(tmp_path / "m", tokenizer, lora)
    recorded = json.loads((model_dir / "config.json").read_text())[DIGESTS_KEY]
    expected = {"model.safetensors"} | ({"adapters/adapter_model.safetensors"} if lora else set())
    assert set(recorded) == expected and all(len(v) == 64 for v in recorded.values())
    assert verify_model_dir(model_dir).ok
    assert main(["verify", str(model_dir)]) == 0
    assert "ok" in capsys.readouterr().out

    damaged = "adapters/adapter_model.safetensors" if lora else "model.safetensors"
    _flip_byte(model_dir / damaged)
    result = verify_model_dir(model_dir)
    assert not result.ok and result.problems == [f"{damaged}: sha256 differs from config.json (modified or corrupted)"]
    assert main(["verify", str(model_dir)]) == 1
    err = capsys.readouterr().err
    assert f"FAIL  model      {model_dir}: {damaged}: sha256 differs" in err and "Traceback" not in err
    with caplog.at_level(logging.WARNING, logger="vidllm.artifacts.model_dir"):
        load_pretrained(model_dir)  # a flipped last byte of a float still loads: loading warns, goes on
    assert any(str(model_dir) in r.getMessage() and damaged in r.getMessage() for r in caplog.records)


def test_missing_unrecorded_and_undigested_files_are_reported(tmp_path, tokenizer):
    model_dir = _save_model(tmp_path / "m", tokenizer, lora=False)
    (model_dir / "extra.safetensors").write_bytes(b"x")
    assert verify_model_dir(model_dir).problems == ["extra.safetensors: not recorded in config.json"]
    (model_dir / "extra.safetensors").unlink()
    (model_dir / "model.safetensors").unlink()
    assert verify_model_dir(model_dir).problems == ["model.safetensors: missing"]
    meta = json.loads((model_dir / "config.json").read_text())
    del meta[DIGESTS_KEY]
    (model_dir / "config.json").write_text(json.dumps(meta))
    old = verify_model_dir(model_dir)
    assert not old.recorded and not old.ok


def test_stage1_dir_records_digests_and_loading_warns(tmp_path, caplog):
    cfg = load_config("tiny")
    torch.manual_seed(0)
    student = DistillStudent(cfg.model, 32, 32)
    out = save_stage1_model(student, cfg, tmp_path / "stage1_model")
    assert verify_model_dir(out).ok and len(verify_model_dir(out).checked) == 2
    _flip_byte(out / "model.safetensors")
    with caplog.at_level(logging.WARNING, logger="vidllm.artifacts.model_dir"):
        load_encoder_and_cta(DistillStudent(cfg.model, 32, 32), out)
    assert any("model.safetensors: sha256 differs" in r.getMessage() for r in caplog.records)


def test_verify_a_run_directory_checks_models_and_every_checkpoint(tmp_path, tokenizer, capsys):
    run = tmp_path / "run"
    _save_model(run / "model", tokenizer, lora=False)
    weights = {"w": torch.ones(4, 4)}
    optimizer = {"state": {}, "param_groups": [{"lr": 1e-3, "params": ["w"]}]}
    for step in (1, 2):
        save_checkpoint(run / "checkpoints" / "stage2" / f"step-{step:08d}", step, weights, optimizer, {})
    assert main(["verify", str(run), "--json"]) == 0
    entries = json.loads(capsys.readouterr().out)
    assert [(e["kind"], e["ok"]) for e in entries] == [("model", True), ("checkpoint", True), ("checkpoint", True)]

    _flip_byte(run / "checkpoints" / "stage2" / "step-00000001" / "optimizer.safetensors")
    assert main(["verify", str(run), "--json"]) == 1
    entries = json.loads(capsys.readouterr().out)
    bad = [e for e in entries if not e["ok"]]
    assert len(bad) == 1 and bad[0]["path"].endswith("step-00000001")
    assert bad[0]["problems"] == ["optimizer.safetensors: sha256 differs from state.json (modified or corrupted)"]


def test_verify_names_a_path_without_artifacts(tmp_path, capsys):
    assert main(["verify", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"vidllm verify: error: {tmp_path}") and len(err.splitlines()) == 1
    assert main(["verify", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
