"""Stage-1 distillation and Stage-2 joint training (single process or Ray Train).

Entry point: `train(stage, cfg, StageInputs(shards_uri, cache_uri, init_model), run_dir, *,
use_ray=False, fresh=False)` over the `STAGES` table, returning `TrainResult(model_dir, steps,
final_losses)`; `train_stage1` / `train_stage2` spell it per stage. A re-run resumes from the newest
intact checkpoint; under a changed config it is refused unless `fresh` (`vidllm.train.jobs`).

Layout: `jobs` (STAGES, the stage builders, the entry), `loop` (the Trainer), `checkpoint`
(training checkpoints), `ray_launcher` (the same loop in Ray Train workers), `batches`, `stage1`,
`stage2` (objectives and models per stage).
"""

from vidllm.train.jobs import STAGES, StageInputs, TrainResult, train, train_stage1, train_stage2

__all__ = ["STAGES", "StageInputs", "TrainResult", "train", "train_stage1", "train_stage2"]
