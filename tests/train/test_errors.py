"""Training and loading failures end in one line naming the problem, never a traceback."""

from __future__ import annotations

import json

from vidllm.cli import main


def _one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("vidllm ")]
    assert len(err) == 1, err
    return err[0]


def test_a_non_finite_loss_names_the_step_and_the_scenes(train_shards, tmp_path, capsys):
    # lr = 1e30 is finite (accepted) but the first update sends every weight to ~1e30: the next loss is not finite.
    code = main(["train", "--stage", "2", "--shards", str(train_shards), "--run-dir", str(tmp_path / "run"),
                 "--recipe", "tiny", "--no-progress", "--set", "train.stage2.lr=1e30", "--set", "train.stage2.steps=4",
                 "--set", "train.stage2.warmup_steps=0"])
    line = _one_error_line(capsys)
    assert code == 2 and "Traceback" not in line
    assert line.startswith("vidllm train: error: stage2 step ") and "non-finite loss" in line
    assert "on scene(s) scene000" in line and "train.stage2.lr" in line


def test_a_model_whose_weights_do_not_fit_its_config_is_one_line(train_shards, tmp_path, capsys):
    model_dir = tmp_path / "m"
    assert main(["init", "--recipe", "tiny", "--out", str(model_dir)]) == 0
    meta = json.loads((model_dir / "config.json").read_text())
    meta["model"]["grounding"]["hidden"] = 48  # the grounding heads' saved weights are 32 wide
    (model_dir / "config.json").write_text(json.dumps(meta))
    capsys.readouterr()
    code = main(["predict", "--model", str(model_dir), "--benchmark", "scanqa", "--shards", str(train_shards),
                 "--out", str(tmp_path / "p.jsonl")])
    line = _one_error_line(capsys)
    assert code == 2 and f"{model_dir / 'model.safetensors'}: weights do not fit this model" in line
    assert "size mismatch for " in line and "torch.Size([48, 64])" in line and "more)" in line
