"""Experiment tracking for every training loop: TensorBoard event files, and MLflow when asked.

The loop's `Trainer.log` hands each logged step's scalars to `Tracker.log` on the main rank:

- TensorBoard: `RUN_DIR/tensorboard/<stage>/events.out.tfevents.*`, written by torch's own
  `SummaryWriter` (`tensorboard --logdir RUN_DIR/tensorboard` shows both stages side by side);
- MLflow: when `MLFLOW_TRACKING_URI` is set (a server, or `sqlite:///path/mlflow.db` locally), one MLflow
  run per stage, named `<run dir name>-<stage>`, with the same scalars as metrics at the same steps.
  `MLFLOW_EXPERIMENT_NAME` picks the experiment (default "vidllm").

Scalar names: `loss/<term>` for every loss term, `lr`, `grad_norm` (before clipping),
`samples_per_s`, `tokens_per_s`, `data_wait_share` and `mfu` (GPU only). Both backends are
imported only here, and only when a loop runs.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

log = logging.getLogger(__name__)

TENSORBOARD_DIR = "tensorboard"
MLFLOW_ENV = "MLFLOW_TRACKING_URI"


class Tracker:
    """Writes a stage's logged scalars to TensorBoard (always) and MLflow (with MLFLOW_TRACKING_URI)."""

    def __init__(self, run_dir: Path, stage: str, params: dict[str, object] | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / TENSORBOARD_DIR / stage))
        self.mlflow = None
        if os.environ.get(MLFLOW_ENV):
            import mlflow

            mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", "vidllm"))
            self.mlflow = mlflow
            self.mlflow_run = mlflow.start_run(run_name=f"{Path(run_dir).name}-{stage}")
            if params:
                mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
            log.info("MLflow: run %s in %s", self.mlflow_run.info.run_id, os.environ[MLFLOW_ENV])

    def log(self, step: int, scalars: dict[str, float]) -> None:
        finite = {k: float(v) for k, v in scalars.items() if v is not None and math.isfinite(float(v))}
        for name, value in finite.items():
            self.writer.add_scalar(name, value, global_step=step)
        self.writer.flush()  # readable while training runs (the TensorBoard UI, a crashed run)
        if self.mlflow is not None:
            self.mlflow.log_metrics(finite, step=step)

    def close(self) -> None:
        self.writer.close()
        if self.mlflow is not None:
            self.mlflow.end_run()
            self.mlflow = None
