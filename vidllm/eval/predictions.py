"""Prediction files: one JSON object per line, validated line by line.

    {"id": "<question_id | scene|object|ann | scene|object|name | scene>",
     "text": "...",                              # QA answers and captions
     "boxes": [[cx, cy, cz, dx, dy, dz], ...],   # grounding; metres, ScanNet axis-aligned world
     "geometry": "geometry/scene0000_00.npz"}    # recon; path relative to the JSONL file

A sidecar `<name>.meta.json` (written by `vidllm predict`) records the benchmark, model and
evaluation protocol card (`protocol` P0/P1/P2, `proposals` own/external/gt; `vidllm.eval.protocols`)
with, per scene, the map applied and the camera centres (`scene_frames`), so `vidllm score` can
report them and rescore P1 predictions under P2 and back.
"""

from __future__ import annotations

import json
import math
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vidllm.artifacts.files import atomic_write_text
from vidllm.config import EvalConfig
from vidllm.errors import DataError
from vidllm.eval.benchmarks.registry import BENCHMARKS, choices

# The evaluation protocols (cards in vidllm.eval.protocols), as the config declares them.
PROTOCOLS: tuple[str, ...] = typing.get_args(EvalConfig.model_fields["protocol"].annotation)


@dataclass
class Prediction:
    id: str
    line: int
    text: str | None = None
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 6)))
    geometry: Path | None = None


def _check_boxes(path: Path, line_no: int, value: Any) -> np.ndarray:
    where = f"line {line_no}"
    if not isinstance(value, list):
        raise DataError(path, f"{where}: 'boxes' must be a list of [cx,cy,cz,dx,dy,dz] lists, got {type(value).__name__}")
    for k, box in enumerate(value):
        if not isinstance(box, list) or len(box) != 6:
            got = f"length {len(box)}" if isinstance(box, list) else type(box).__name__
            raise DataError(path, f"{where}: box {k} must have 6 numbers [cx,cy,cz,dx,dy,dz], got {got}")
        for v in box:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise DataError(path, f"{where}: box {k} holds a non-number {v!r}")
            if not math.isfinite(v):
                raise DataError(path, f"{where}: box {k} holds a non-finite value ({v})")
        if any(v < 0 for v in box[3:]):
            raise DataError(path, f"{where}: box {k} has a negative size {box[3:]}")
    return np.asarray(value, dtype=np.float64).reshape(-1, 6)


def read_predictions(path: str | Path, benchmark: str) -> dict[str, Prediction]:
    """Read and validate a predictions JSONL for `benchmark`; errors name the file and line."""
    path = Path(path)
    if benchmark not in BENCHMARKS:
        raise DataError(path, f"unknown benchmark '{benchmark}' (choose from {', '.join(choices())})")
    kind = BENCHMARKS[benchmark].task.kind  # what each line must carry
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(path, "predictions file not found") from None
    except UnicodeDecodeError as exc:
        raise DataError(path, f"not UTF-8 text: {exc}") from None
    predictions: dict[str, Prediction] = {}
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"line {line_no}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(path, f"{where}: not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise DataError(path, f"{where}: must be a JSON object, got {type(record).__name__}")
        pred_id = record.get("id")
        if not isinstance(pred_id, str) or not pred_id:
            raise DataError(path, f"{where}: 'id' must be a non-empty string, got {pred_id!r}")
        if pred_id in predictions:
            raise DataError(path, f"{where}: duplicate id {pred_id!r} (first on line {predictions[pred_id].line})")
        pred = Prediction(id=pred_id, line=line_no)
        if "text" in record:
            if not isinstance(record["text"], str):
                raise DataError(path, f"{where}: 'text' must be a string, got {type(record['text']).__name__}")
            pred.text = record["text"]
        if "boxes" in record:
            pred.boxes = _check_boxes(path, line_no, record["boxes"])
        if "geometry" in record:
            if not isinstance(record["geometry"], str) or not record["geometry"]:
                raise DataError(path, f"{where}: 'geometry' must be a path string")
            pred.geometry = path.parent / record["geometry"]
        if kind == "text" and pred.text is None:
            raise DataError(path, f"{where}: {benchmark} predictions need a 'text' field (id {pred_id!r})")
        if kind == "box" and "boxes" not in record:
            raise DataError(path, f"{where}: {benchmark} predictions need a 'boxes' field (id {pred_id!r})")
        if kind == "geometry" and pred.geometry is None:
            raise DataError(path, f"{where}: {benchmark} predictions need a 'geometry' field (id {pred_id!r})")
        if kind == "geometry" and not pred.geometry.is_file():
            raise DataError(path, f"{where}: geometry file {record['geometry']!r} not found (relative to this file)")
        predictions[pred_id] = pred
    if not predictions:
        raise DataError(path, "no predictions in file")
    return predictions


def match_ids(path: str | Path, predictions: dict[str, Prediction], gt_ids: Sequence[str]) -> None:
    """Every ground-truth id needs exactly one prediction, and no prediction may be unknown."""
    gt_set = set(gt_ids)
    extra = sorted((p for p in predictions.values() if p.id not in gt_set), key=lambda p: p.line)
    if extra:
        raise DataError(path, f"line {extra[0].line}: id {extra[0].id!r} is not in the ground truth")
    missing = [i for i in gt_ids if i not in predictions]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise DataError(path, f"no prediction for ground-truth id {missing[0]!r}{more}")


def write_predictions(path: str | Path, records: Iterable[dict[str, Any]], meta: dict[str, Any] | None = None) -> None:
    """Write prediction records (and the `.meta.json` sidecar) atomically."""
    path = Path(path)
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    atomic_write_text(path, "\n".join(lines) + ("\n" if lines else ""))
    if meta is not None:
        atomic_write_text(meta_path(path), json.dumps(meta, indent=2) + "\n")


def meta_path(predictions_path: str | Path) -> Path:
    p = Path(predictions_path)
    return p.with_name(p.name.removesuffix(".jsonl") + ".meta.json")


def read_meta(predictions_path: str | Path) -> dict[str, Any]:
    p = meta_path(predictions_path)
    if not p.is_file():
        return {}
    try:
        meta = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(p, f"not valid JSON: {exc.msg}") from None
    if not isinstance(meta, dict):
        raise DataError(p, "must hold a JSON object")
    return meta
