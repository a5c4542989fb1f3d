"""One Ray Train job (2 gloo workers, DDP, checkpoints on the S3 server) re-run with the same name: it resumes."""

from __future__ import annotations

import numpy as np
import pytest

from tests.train.helpers import tiny_config
from vidllm.artifacts.run_dir import read_train_log
from vidllm.train import train_stage2
from vidllm.train.loop import learning_rate
from vidllm.train.ray_launcher import run_name


def test_ray_train_two_workers_resumes_with_the_same_name(train_shards, ray_session, s3_server, tmp_path):
    from vidllm.artifacts import storage
    from vidllm.artifacts.model_dir import load_pretrained

    run_dir = tmp_path / "ray_run"
    common = ["train.num_workers=2", f"train.storage_path={s3_server.uri('ray-results')}",
              "train.stage2.checkpoint_every=1", "train.stage2.warmup_steps=0"]
    first = train_stage2(tiny_config("train.stage2.steps=2", *common), str(train_shards), run_dir,
                         init_model=None, use_ray=True)
    assert first.steps == 2
    log = read_train_log(run_dir / "train_log.csv")
    assert log.steps.tolist() == [1, 2]
    # 2 workers share the two scene clips: samples/s counts both ranks.
    assert (log.samples_per_s > 0).all() and np.isfinite(log.losses["total"]).all()

    # Same run name, more steps: continues from the step-2 checkpoint stored on S3.
    longer = tiny_config("train.stage2.steps=4", *common)
    second = train_stage2(longer, str(train_shards), run_dir, init_model=None, use_ray=True)
    assert second.steps == 4 and "recon" in second.final_losses
    log = read_train_log(run_dir / "train_log.csv")
    assert log.steps.tolist() == [1, 2, 3, 4]
    # Rows 1-2 are the first job's (its 2-step cosine schedule); a fresh 4-step
    # job would have logged the 4-step schedule there. Rows 3-4 follow the 4-step schedule.
    assert log.lr[1] == pytest.approx(learning_rate(1, tiny_config("train.stage2.steps=2", *common).train.stage2))
    assert log.lr[1] != pytest.approx(learning_rate(1, longer.train.stage2))
    assert np.allclose(log.lr[2:], [learning_rate(s, longer.train.stage2) for s in (2, 3)])
    stored = storage.list_dirs(s3_server.uri("ray-results", run_name(run_dir, "stage2")))
    assert "step-00000004" in stored
    model, tokenizer = load_pretrained(second.model_dir)
    assert tokenizer is not None and model.config.llm.lora_r == 4
