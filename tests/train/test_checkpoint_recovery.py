"""Training checkpoints survive corruption and killed saves; a resume under another config is refused."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.train.helpers import tiny_config
from vidllm.errors import DataError
from vidllm.train import train_stage1
from vidllm.train.checkpoint import (
    CHECKPOINTS_DIR,
    STATE_FILE,
    load_checkpoint,
    load_latest_intact,
    remove_orphaned_checkpoint_dirs,
    save_checkpoint,
)
from vidllm.train.ray_launcher import run_name


def _save(root: Path, step: int) -> Path:
    weights = {"w": torch.full((4, 4), float(step)), "b": torch.arange(4.0)}
    optimizer = {"state": {"w": {"exp_avg": torch.ones(4, 4) * step, "step": torch.tensor(float(step))}},
                 "param_groups": [{"lr": 1e-3, "params": ["w", "b"]}]}
    return save_checkpoint(root / f"step-{step:08d}", step, weights, optimizer, {"final_losses": {"total": 1.0}})


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["truncate_model", "flip_optimizer_byte", "no_state", "bad_state_json"])
def test_corrupt_latest_checkpoint_falls_back_to_the_newest_intact_one(tmp_path, caplog, damage):
    root = tmp_path / "ckpts"
    for step in (1, 2, 3):
        _save(root, step)
    latest = root / "step-00000003"
    if damage == "truncate_model":
        with open(latest / "model.safetensors", "r+b") as f:
            f.truncate(100)
    elif damage == "flip_optimizer_byte":
        _flip_last_byte(latest / "optimizer.safetensors")  # still parses: only the sha256 catches it
    elif damage == "no_state":
        (latest / STATE_FILE).unlink()
    else:
        (latest / STATE_FILE).write_text('{"step": 3, "python_')
    with pytest.raises(DataError, match="unreadable training checkpoint") as info:
        load_checkpoint(latest)
    assert "step-00000003" in str(info.value)
    with caplog.at_level(logging.WARNING, logger="vidllm.train.loop"):
        path, state = load_latest_intact(root)
    assert path == root / "step-00000002" and state["step"] == 2 and "sha256" not in state
    assert torch.equal(state["model"]["w"], torch.full((4, 4), 2.0))
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and str(latest) in warnings[0]


def test_no_intact_checkpoint_is_an_error_and_old_checkpoints_without_digests_load(tmp_path):
    root = tmp_path / "ckpts"
    assert load_latest_intact(root) == (None, None)
    old = _save(root, 1)
    state = json.loads((old / STATE_FILE).read_text())
    del state["sha256"]  # what checkpoints written before the digests look like
    (old / STATE_FILE).write_text(json.dumps(state))
    path, loaded = load_latest_intact(root)
    assert path == old and loaded["step"] == 1
    _flip_last_byte(old / "model.safetensors")  # no digest to catch it: still loads (backwards compatible)
    assert load_checkpoint(old)["step"] == 1
    (old / "model.safetensors").write_bytes(b"xx")
    with pytest.raises(DataError, match="no intact checkpoint"):
        load_latest_intact(root)


def test_orphaned_temporary_checkpoint_dirs_are_removed(tmp_path):
    root = tmp_path / "ckpts"
    keep = _save(root, 2)
    orphan = root / ".step-00000004.tmp-k1ll3d"
    orphan.mkdir()
    (orphan / "model.safetensors").write_bytes(b"partial")
    other = root / "notes"
    other.mkdir()
    assert remove_orphaned_checkpoint_dirs(root) == [orphan]
    assert not orphan.exists() and keep.is_dir() and other.is_dir()


def _stage1(cfg, train_shards, cache, run_dir, **kwargs):
    return train_stage1(cfg, str(train_shards), str(cache), run_dir, progress=False, **kwargs)


def test_stage1_resume_skips_a_corrupt_checkpoint_and_cleans_killed_saves(train_shards, teachers_and_cache,
                                                                         tmp_path, caplog):
    teachers, cache = teachers_and_cache
    cfg = tiny_config("train.stage1.steps=4", "train.stage1.checkpoint_every=1").model_copy(
        update={"teachers": teachers})
    run_dir = tmp_path / "run"
    ckpts = run_dir / CHECKPOINTS_DIR / "stage1"
    assert _stage1(cfg, train_shards, cache, run_dir, stop_after=3).steps == 3
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-00000002", "step-00000003"]
    with open(ckpts / "step-00000003" / "model.safetensors", "r+b") as f:
        f.truncate(64)
    orphan = ckpts / ".step-00000004.tmp-k1ll3d"  # a save killed mid-way
    orphan.mkdir()
    model_orphan = run_dir / ".stage1_model.tmp-k1ll3d"  # an export killed mid-way
    model_orphan.mkdir()
    with caplog.at_level(logging.WARNING):
        resumed = _stage1(cfg, train_shards, cache, run_dir)
    assert (resumed.resumed_from, resumed.steps) == (2, 4) and resumed.model_dir.is_dir()
    assert not orphan.exists() and not model_orphan.exists()
    messages = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(str(ckpts / "step-00000003") in m and "corrupt" in m for m in messages)
    assert load_checkpoint(ckpts / "step-00000004")["step"] == 4


def test_resume_under_another_config_is_refused_unless_fresh(train_shards, teachers_and_cache, tmp_path, capsys):
    from vidllm.cli import main

    teachers, cache = teachers_and_cache
    base = ["train.stage1.steps=4", "train.stage1.checkpoint_every=2"]
    cfg = tiny_config(*base).model_copy(update={"teachers": teachers})
    run_dir = tmp_path / "run"
    assert _stage1(cfg, train_shards, cache, run_dir, stop_after=2).steps == 2
    saved = (run_dir / "config.yaml").read_text()

    changed = tiny_config(*base, "train.stage1.lr=0.002").model_copy(update={"teachers": teachers})
    with pytest.raises(DataError, match=r"train\.stage1\.lr") as info:
        _stage1(changed, train_shards, cache, run_dir)
    message = str(info.value)
    assert str(run_dir) in message and "--fresh" in message and "\n" not in message
    assert (run_dir / "config.yaml").read_text() == saved  # not overwritten before the check

    # The other stage's settings (and sections outside model/train) do not shape stage-1 checkpoints.
    other_stage = tiny_config(*base, "train.stage2.lr=0.002").model_copy(update={"teachers": teachers})
    assert _stage1(other_stage, train_shards, cache, run_dir, stop_after=1).resumed_from == 2

    # The CLI: one-line error (exit 2), then --fresh starts over under the new config.
    argv = ["train", "--stage", "1", "--shards", str(train_shards), "--run-dir", str(run_dir), "--recipe", "tiny",
            "--teacher-cache", str(cache), "--geometry-teacher", teachers.geometry, "--semantic-teacher",
            teachers.semantic, "--json", "--no-progress", *(x for o in [*base, "train.stage1.lr=0.002"]
                                                               for x in ("--set", o))]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "train.stage1.lr" in err and str(run_dir) in err
    assert main([*argv, "--fresh"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["steps"] == 4
    assert "lr: 0.002" in (run_dir / "config.yaml").read_text()
    ckpt = load_file(str(run_dir / CHECKPOINTS_DIR / "stage1" / "step-00000004" / "model.safetensors"))
    assert ckpt and not (run_dir / CHECKPOINTS_DIR / "stage1" / "step-00000003").exists()


def test_ray_run_names_are_unique_per_absolute_run_dir(tmp_path, monkeypatch):
    a, b = tmp_path / "a" / "exp", tmp_path / "b" / "exp"
    name_a, name_b = run_name(a, "stage2"), run_name(b, "stage2")
    assert name_a != name_b
    assert name_a.startswith("exp-") and name_a.endswith("-stage2") and len(name_a) == len("exp-") + 8 + len("-stage2")
    assert run_name(a, "stage1") != name_a and run_name(a, "stage1")[:-1] == name_a[:-1]
    monkeypatch.chdir(tmp_path)
    assert run_name(Path("a/exp"), "stage2") == name_a == run_name(tmp_path / "a" / "x" / ".." / "exp", "stage2")
    assert run_name(a, "stage2") == name_a  # stable
