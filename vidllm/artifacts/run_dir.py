"""The run directory layout — the single source of truth shared by training, `predict`, `score` and `report`.

    RUN_DIR/
      config.yaml                     the resolved VidLLMConfig (config_to_yaml)
      train_log.csv                   one row per logged step: TRAIN_LOG_COLUMNS, then one
                                      `loss/<term>` column per loss term (any number)
      metrics.json                    {benchmark: `vidllm score --json` output, ...}
      predictions/<benchmark>.jsonl   prediction lines (vidllm.eval.predictions) + .meta.json
      predictions/per_sample/<benchmark>.jsonl   every item's scores (`vidllm score --per-sample`)
      geometry/<scene_id>.npz         GEOMETRY_KEYS (pred and GT, same frames)
      report.md, report.html, plots/*.png   written by `vidllm report`

All metric values in metrics.json are fractions or metres, as computed; the report scales
VL metrics and pose accuracies to percent, as the paper's tables do.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vidllm.artifacts.files import atomic_path, atomic_write_text
from vidllm.errors import DataError

CONFIG_FILE = "config.yaml"
TRAIN_LOG_FILE = "train_log.csv"
METRICS_FILE = "metrics.json"
PREDICTIONS_DIR = "predictions"
PER_SAMPLE_DIR = "per_sample"  # under PREDICTIONS_DIR: one JSONL of per-item scores per benchmark
GEOMETRY_DIR = "geometry"
PLOTS_DIR = "plots"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"

# Fixed leading columns of train_log.csv; loss terms follow as `loss/<term>` (e.g. loss/total,
# loss/geo, loss/lang, loss/sc, loss/recon, loss/vl, loss/md). `stage` is optional when reading.
TRAIN_LOG_COLUMNS = ("step", "stage", "lr", "samples_per_s")
REQUIRED_TRAIN_LOG_COLUMNS = ("step", "lr", "samples_per_s")
LOSS_PREFIX = "loss/"

# geometry/<scene>.npz keys. Frames are the model's input frames; GT depth is resampled to the
# prediction grid by the writer or left at native size (metrics resize the prediction to GT).
GEOMETRY_KEYS = {
    "frame_ids": "int [N] source frame ids",
    "depth_pred": "float32 [N,h,w] metres",
    "depth_gt": "float32 [N,H,W] metres, 0 = invalid",
    "camera_to_world_pred": "float64 [N,4,4] ScanNet axis-aligned world, after the protocol",
    "camera_to_world_gt": "float64 [N,4,4] ScanNet axis-aligned world",
    "points_pred": "float32 [K,3] predicted point cloud, same frame as the GT",
    "points_gt": "float32 [M,3] GT point cloud (back-projected GT depth)",
    "boxes_pred": "float32 [P,6] predicted boxes (optional)",
    "boxes_gt": "float32 [G,6] GT object boxes (optional)",
    "colors": "uint8 [N,H,W,3] input frames (optional)",
}


def train_log_header(loss_terms: list[str]) -> list[str]:
    return [*TRAIN_LOG_COLUMNS, *(LOSS_PREFIX + t for t in loss_terms)]


def format_train_log_row(step: int, stage: str, lr: float, samples_per_s: float, losses: Mapping[str, float]) -> dict[str, Any]:
    """One row for `csv.DictWriter(..., fieldnames=train_log_header(terms))`."""
    row: dict[str, Any] = {"step": step, "stage": stage, "lr": lr, "samples_per_s": samples_per_s}
    row.update({LOSS_PREFIX + k: float(v) for k, v in losses.items()})
    return row


@dataclass
class TrainLog:
    steps: np.ndarray  # [T] int
    stages: list[str]
    lr: np.ndarray  # [T]
    samples_per_s: np.ndarray  # [T]
    losses: dict[str, np.ndarray]  # term -> [T], NaN where a row did not log the term


def _as_float(path: Path, line: int, column: str, value: str | None) -> float:
    if value is None or value == "":
        return math.nan
    try:
        return float(value)
    except ValueError:
        raise DataError(path, f"line {line}: column '{column}' is not a number: {value!r}") from None


def read_train_log(path: str | Path) -> TrainLog:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(path, "training log not found") from None
    reader = csv.DictReader(io.StringIO(text))
    header = reader.fieldnames or []
    missing = [c for c in REQUIRED_TRAIN_LOG_COLUMNS if c not in header]
    if missing:
        raise DataError(path, f"header lacks column(s) {', '.join(missing)} (expected {', '.join(TRAIN_LOG_COLUMNS)}, loss/<term>...)")
    terms = [c[len(LOSS_PREFIX):] for c in header if c.startswith(LOSS_PREFIX)]
    steps, stages, lr, sps = [], [], [], []
    losses: dict[str, list[float]] = {t: [] for t in terms}
    for line, row in enumerate(reader, start=2):
        step = _as_float(path, line, "step", row["step"])
        if not math.isfinite(step):
            raise DataError(path, f"line {line}: 'step' is missing")
        steps.append(int(step))
        stages.append(row.get("stage") or "")
        lr.append(_as_float(path, line, "lr", row["lr"]))
        sps.append(_as_float(path, line, "samples_per_s", row["samples_per_s"]))
        for t in terms:
            losses[t].append(_as_float(path, line, LOSS_PREFIX + t, row[LOSS_PREFIX + t]))
    return TrainLog(np.asarray(steps, np.int64), stages, np.asarray(lr), np.asarray(sps),
                    {t: np.asarray(v) for t, v in losses.items()})


def jsonable(data: Any) -> Any:
    """NaN/inf → None and numpy scalars → Python, so the JSON is strict (no bare NaN)."""
    if isinstance(data, dict):
        return {str(k): jsonable(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [jsonable(v) for v in data]
    if isinstance(data, (np.floating, float)):
        return float(data) if math.isfinite(data) else None
    if isinstance(data, np.integer):
        return int(data)
    if isinstance(data, np.bool_):
        return bool(data)
    return data


def write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(jsonable(data), indent=2, allow_nan=False) + "\n")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except json.JSONDecodeError as exc:
        raise DataError(path, f"not valid JSON: {exc.msg} (line {exc.lineno})") from None


def write_geometry(path: str | Path, **arrays: np.ndarray) -> None:
    """Atomically write geometry/<scene>.npz; keys must be from GEOMETRY_KEYS."""
    unknown = set(arrays) - set(GEOMETRY_KEYS)
    if unknown:
        raise ValueError(f"unknown geometry keys {sorted(unknown)} (known: {', '.join(GEOMETRY_KEYS)})")
    with atomic_path(path, keep_suffix=True) as tmp:  # savez appends ".npz" to other names
        np.savez_compressed(tmp, **{k: np.asarray(v) for k, v in arrays.items()})


def read_geometry(path: str | Path, required: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise DataError(path, "geometry file not found") from None
    except (ValueError, OSError) as exc:
        raise DataError(path, f"not a readable .npz: {exc}") from None
    missing = [k for k in required if k not in arrays]
    if missing:
        raise DataError(path, f"lacks key(s) {', '.join(missing)}")
    return arrays
