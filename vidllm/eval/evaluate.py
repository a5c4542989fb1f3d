"""Evaluate a trained model on every benchmark of a shard dataset: predict, score, write metrics.json.

`evaluate_run(model_dir, shards_uri, run_dir, annotations=..., scans=...)` is the one function the
`vidllm evaluate` command, the Prefect `train-full` flow and the DVC `evaluate` stage call. Per
benchmark it runs `vidllm.eval.predict.predict` into RUN_DIR/predictions/<benchmark>.jsonl
(recon geometry into RUN_DIR/geometry/) and `vidllm.eval.scoring.score_predictions` (every item's
scores into RUN_DIR/predictions/per_sample/<benchmark>.jsonl), then writes RUN_DIR/metrics.json (layout in `vidllm.artifacts.run_dir`) atomically. Keys of metrics.json
that are not benchmarks are kept.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vidllm.artifacts import run_dir as rd
from vidllm.artifacts import storage
from vidllm.errors import DataError, VidLLMError
from vidllm.eval.benchmarks import registry
from vidllm.eval.protocols import CARDS, canonical_protocol, card_key, proposal_source

log = logging.getLogger(__name__)

BY_PROTOCOL = "by_protocol"  # metrics.json key: {"<protocol>/<proposals>": {benchmark: result}}

_NO_INSTRUCTIONS = "instructions in these shards"  # predict's message when a benchmark has nothing to answer


@dataclass
class EvaluationSummary:
    run_dir: Path
    metrics: dict[str, Any]  # benchmark -> score_predictions output
    skipped: dict[str, str] = field(default_factory=dict)  # benchmark -> why it was not scored
    seconds: float = 0.0

    def line(self) -> str:
        scored = ", ".join(self.metrics) or "nothing"
        skipped = f"; skipped {', '.join(self.skipped)}" if self.skipped else ""
        return f"evaluated {scored}{skipped} in {self.seconds:.1f} s → {self.run_dir / rd.METRICS_FILE}"


def _local_dir(uri: str | Path | None, what: str) -> Path | None:
    if uri is None:
        return None
    if storage.is_s3(uri):
        raise VidLLMError(f"{uri}: scoring reads {what} from a local folder; copy it locally first")
    path = Path(uri)
    if not path.exists():
        raise DataError(path, f"{what} not found")
    return path


def evaluate_run(
    model_dir: str | Path,
    shards_uri: str,
    run_dir: str | Path,
    *,
    annotations: str | Path | None,
    scans: str | Path | None,
    split: str | None = "val",
    benchmarks: Sequence[str] | None = None,
    protocol: str | None = None,
    max_new_tokens: int = 32,
    meteor: bool = True,
    progress: Callable[[str], None] | None = None,
    proposals: str | Path = "own",
    also_score_under: Sequence[str] = (),
) -> EvaluationSummary:
    """Predict and score `benchmarks` on `split`; write RUN_DIR/metrics.json; see the module docstring.

    annotations: folder with the published annotation files (ground truth of the VL benchmarks).
    scans: ScanNet scans folder giving the ground-truth object boxes (grounding, Scan2Cap).
    A benchmark without any instruction in the shards (for this split) is skipped and reported,
    not scored; every other failure raises. `proposals`: what the grounding benchmarks choose
    among (`vidllm.eval.predict.predict`), recorded with their metrics. `benchmarks` default:
    every registered one, in registration order. `protocol`: P0, P1 or P2 (`predict`'s default
    when None). metrics.json also keeps every evaluation's results under
    "by_protocol" / "<protocol>/<proposals>" (e.g. "P1/own"), so a run evaluated under two
    protocols reports both; the top-level benchmark entries are the latest evaluation's.
    `also_score_under`: protocols the same predictions are rescored under (no new predictions; see
    `score_predictions`), recorded under "by_protocol" only; a benchmark whose predictions cannot
    be rescored (their inputs depended on the protocol) is left out of that protocol, with a warning.
    """
    from vidllm.eval.predict import predict
    from vidllm.eval.scoring import score_predictions

    start = time.monotonic()
    benchmarks = registry.names() if benchmarks is None else benchmarks
    unknown = [b for b in benchmarks if b not in registry.BENCHMARKS]
    if unknown:
        raise VidLLMError(f"unknown benchmark(s) {', '.join(unknown)} (choose from {', '.join(registry.choices())})")
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    annotations_dir = _local_dir(annotations, "annotation folder")
    scans_dir = _local_dir(scans, "ScanNet scans folder")
    if annotations_dir is None and any(registry.get(b).task.annotation_files for b in benchmarks):
        raise VidLLMError("the VL benchmarks need --annotations (the published annotation files)")

    summary = EvaluationSummary(run_dir=run, metrics={})
    rescored: dict[str, dict[str, Any]] = {canonical_protocol(p): {} for p in also_score_under}
    also_score_under = list(rescored)
    for benchmark in benchmarks:
        if progress is not None:
            progress(benchmark)
        pred_path = run / rd.PREDICTIONS_DIR / f"{benchmark}.jsonl"
        try:
            predict(model_dir, benchmark, shards_uri, pred_path, protocol=protocol, split=split,
                    max_new_tokens=max_new_tokens, geometry_dir=run / rd.GEOMETRY_DIR, proposals=proposals)
        except DataError as exc:
            if _NO_INSTRUCTIONS not in str(exc):
                raise
            summary.skipped[benchmark] = str(exc)
            log.warning("evaluate: %s skipped: %s", benchmark, exc)
            continue
        # Without annotation files (recon) the ground truth is in the predictions' geometry files.
        gt = annotations_dir if registry.get(benchmark).task.annotation_files else None
        per_sample = run / rd.PREDICTIONS_DIR / rd.PER_SAMPLE_DIR / f"{benchmark}.jsonl"
        summary.metrics[benchmark] = score_predictions(benchmark, pred_path, gt, split=split, scans=scans_dir,
                                                       meteor=meteor, per_sample=per_sample)  # predict's protocol
        for other in also_score_under:
            if other == summary.metrics[benchmark]["protocol"]:
                continue
            first = summary.metrics[benchmark]
            task = registry.get(benchmark).task
            if task.annotation_files and not task.needs_boxes:  # text answers: no coordinate to map
                rescored[other][benchmark] = {**first, "protocol": other, "protocol_card": CARDS[other],
                                              "rescored_from": first["protocol"]}
                continue
            try:
                rescored[other][benchmark] = score_predictions(benchmark, pred_path, gt, split=split, scans=scans_dir,
                                                               meteor=meteor, protocol=other)
            except VidLLMError as exc:  # DataError included: e.g. predictions that record no scene frames
                log.warning("evaluate: %s not rescored under %s: %s", benchmark, other, exc)

    metrics_path = run / rd.METRICS_FILE
    kept = rd.read_json(metrics_path) if metrics_path.is_file() else {}
    kept = {k: v for k, v in kept.items() if k not in registry.BENCHMARKS} if isinstance(kept, dict) else {}
    by_protocol = kept.get(BY_PROTOCOL) if isinstance(kept.get(BY_PROTOCOL), dict) else {}
    source = proposal_source(str(proposals))
    for key in {card_key(r["protocol"], source) for r in summary.metrics.values()}:
        by_protocol[key] = {**by_protocol.get(key, {}),
                            **{b: r for b, r in summary.metrics.items() if r["protocol"] == key.split("/")[0]}}
    for other, results in rescored.items():
        if results:
            by_protocol[card_key(other, source)] = {**by_protocol.get(card_key(other, source), {}), **results}
    rd.write_json(metrics_path, {**summary.metrics, **kept, **({BY_PROTOCOL: by_protocol} if by_protocol else {})})
    summary.seconds = time.monotonic() - start
    return summary


def add_to_metrics(run_dir: str | Path, result: dict[str, Any]) -> Path:
    """Put one `score_predictions` result into RUN_DIR/metrics.json (e.g. a benchmark `evaluate` does
    not run, such as Co3Dv2): its top-level benchmark entry, and "by_protocol" beside the run's own
    evaluation under the same protocol (or its own "<protocol>/<proposals>" key). Written atomically."""
    path = Path(run_dir) / rd.METRICS_FILE
    metrics = rd.read_json(path) if path.is_file() else {}
    if not isinstance(metrics, dict):
        raise DataError(path, "is not a JSON object")
    benchmark, protocol = result["benchmark"], result["protocol"]
    by_protocol = metrics.get(BY_PROTOCOL) if isinstance(metrics.get(BY_PROTOCOL), dict) else {}
    key = next((k for k in by_protocol if k.split("/")[0] == protocol),
               card_key(protocol, proposal_source(result.get("proposals"))))
    by_protocol[key] = {**by_protocol.get(key, {}), benchmark: result}
    rd.write_json(path, {**metrics, benchmark: result, BY_PROTOCOL: by_protocol})
    return path


def format_metrics_table(metrics: dict[str, Any]) -> str:
    """One line per benchmark: `benchmark  count  name value, ...` (values as computed: fractions, metres)."""
    lines = []
    for benchmark in registry.choices():
        result = metrics.get(benchmark)
        if not isinstance(result, dict):
            continue
        values = ", ".join(f"{k} {v:.3f}" if isinstance(v, (int, float)) else f"{k} {v}"
                           for k, v in (result.get("metrics") or {}).items())
        lines.append(f"{benchmark:<13} n={result.get('count', '?'):<5} {values}")
    return "\n".join(lines)
