"""The training loop's experiment tracking: TensorBoard event files read back with TensorBoard's own
reader, and MLflow against a local store (`MLFLOW_TRACKING_URI=sqlite:///...`: MLflow 3 keeps its plain
file store in maintenance mode and refuses it by default)."""

from __future__ import annotations

import math

import pytest
import torch

STEPS = 4
TERMS = ("total", "fit", "penalty")
SCALARS = ("lr", "grad_norm", "samples_per_s", "tokens_per_s", "data_wait_share")


class TwoTermObjective(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(8, 1)

    def forward(self, batch):
        fit = self.layer(batch["x"]).pow(2).mean()
        penalty = self.layer.weight.abs().mean()
        return {"total": fit + penalty, "fit": fit, "penalty": penalty, "tokens": torch.tensor(32.0)}


def _job(stage: str = "stage2"):
    from vidllm.config import StageConfig, TrainConfig
    from vidllm.train.loop import StageJob

    def batches(start):
        for step in range(start, 1_000):
            yield {"x": torch.randn(4, 8, generator=torch.Generator().manual_seed(step)), "step": step}, 4

    config = StageConfig(steps=STEPS, lr=1e-2, warmup_steps=1, checkpoint_every=STEPS, log_every=1)
    return StageJob(stage, TwoTermObjective(), batches, config, TrainConfig(), lambda batch, device: batch)


def test_tensorboard_event_file_holds_every_term(tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from vidllm.train.loop import learning_rate, run_loop
    from vidllm.train.tracking import TENSORBOARD_DIR

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    job = _job()
    run_loop(job, tmp_path, progress=False)
    events = EventAccumulator(str(tmp_path / TENSORBOARD_DIR / "stage2"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {f"loss/{t}" for t in TERMS} | set(SCALARS) <= tags, tags
    for tag in tags:
        series = events.Scalars(tag)
        assert [e.step for e in series] == list(range(1, STEPS + 1)), tag
        assert all(math.isfinite(e.value) for e in series), tag
    totals = [e.value for e in events.Scalars("loss/total")]
    parts = [a.value + b.value for a, b in zip(events.Scalars("loss/fit"), events.Scalars("loss/penalty"))]
    assert totals == pytest.approx(parts, rel=1e-5)
    assert [e.value for e in events.Scalars("lr")] == pytest.approx(
        [learning_rate(s, job.stage_cfg) for s in range(STEPS)], rel=1e-6)
    assert all(e.value > 0 for e in events.Scalars("grad_norm"))
    # The CSV log carries the same grad norm.
    from vidllm.artifacts import run_dir as rd

    csv = (tmp_path / rd.TRAIN_LOG_FILE).read_text().splitlines()
    assert "grad_norm" in csv[0].split(",")


def test_mlflow_local_store_gets_the_same_metrics(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from vidllm.train.loop import run_loop

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "vidllm-test")
    run_dir = tmp_path / "exp"
    run_loop(_job(), run_dir, progress=False)
    client = MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name("vidllm-test")
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_name for r in runs] == ["exp-stage2"]
    run = runs[0]
    assert run.info.status == "FINISHED"
    for name in [f"loss/{t}" for t in TERMS] + list(SCALARS):
        history = client.get_metric_history(run.info.run_id, name)
        assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(range(1, STEPS + 1)), name
    assert run.data.params["stage2.steps"] == str(STEPS)
    assert mlflow.active_run() is None  # the loop ended its run
