"""Evaluation: benchmark metrics, prediction files, scoring, `predict` and the run report.

- `captions`, `grounding`, `geometry_metrics`: metric definitions (numpy/scipy/pycocoevalcap).
- `predictions`: the prediction JSONL format and its validation.
- `benchmarks`: the benchmark registry, one module per benchmark (its spec, scorer and report
  columns); every list of benchmark names is derived from it.
- `scoring`: `score_predictions`, the one scoring entry point (CLI `vidllm score`, flows, DVC).
- `predict`: model inference over shards (used by `vidllm predict`).
- `geometry_sets`: model inference on the published pose and depth sets (Co3Dv2, RealEstate10K,
  NYUv2; `vidllm predict --data`).
- `run_dir`: the run-directory layout and training-log format shared with training.
- `report`: markdown/HTML report with plots (used by `vidllm report`).
"""
