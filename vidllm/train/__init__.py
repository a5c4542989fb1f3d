"""Stage-1 distillation and Stage-2 joint training (single process or Ray Train).

Entry points: `train_stage1(cfg, shards_uri, teacher_cache_uri, run_dir, *, init_model=None,
use_ray=False, fresh=False)` and `train_stage2(cfg, shards_uri, run_dir, *, init_model, use_ray=False,
fresh=False)`, both returning `TrainResult(model_dir, steps, final_losses)`. A re-run resumes from the
newest intact checkpoint; under a changed config it is refused unless `fresh` (`vidllm.train.jobs`).
"""

from vidllm.train.jobs import TrainResult, train_stage1, train_stage2

__all__ = ["TrainResult", "train_stage1", "train_stage2"]
