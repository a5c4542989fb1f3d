"""Report tables as data: each benchmark's spec lists the columns it adds to which `Table`, and
`vidllm.eval.report` renders every table some registered benchmark fills, in `number` order.

The paper's tables that several benchmarks share are defined here; a table only one benchmark
fills lives in that benchmark's module.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# The paper's own Vid-LLM rows (real ScanNet data) are shown under ours for comparison; a column's
# `paper` value is the paper's number in it. Tables 7 and 8 are on other datasets (Co3Dv2, NYU-v2):
# their paper values sit in those datasets' columns, the ScanNet columns beside them have none.
PAPER = "Vid-LLM (paper)"
OURS = "Vid-LLM (this run)"


@dataclass(frozen=True)
class Column:
    """One column: a metric of a score result (or, as a tuple, the mean of several) and its format."""

    header: str
    # A tuple is summarised by its mean, "—" unless every one was scored (the paper's per-benchmark summary).
    metric: str | tuple[str, ...]
    group: str | None = None  # read from result["subgroups"][group] instead of result["metrics"]
    scale: float = 100.0  # fractions are shown as percentages ...
    digits: int = 1  # ... with one decimal; raw values use scale 1 and 3 digits
    paper: str = "—"


def raw(header: str, metric: str, paper: str = "—") -> Column:
    """A column shown as computed (metres, ratios), three decimals."""
    return Column(header, metric, scale=1.0, digits=3, paper=paper)


# A table-level note from the run's metrics and the table's (benchmark, column) pairs.
TableNote = Callable[[Mapping[str, Any], Sequence[tuple[str, Column]]], str]


@dataclass(frozen=True)
class Table:
    title: str | None  # None: a sub-table under the previous one, without heading or protocol line
    number: float  # place in the report
    note: str | TableNote = ""  # after the "Evaluation protocol: ..." line
    first_header: str = "Method"
    paper_label: str | None = PAPER  # first cell of the paper's row; None: no paper row
    only_if_scored: bool = False  # left out unless one of its benchmarks has a result
    # Columns of run-level values rather than a benchmark's (read from {"metrics": {...}}), after the others.
    run_columns: tuple[Column, ...] = ()


@dataclass(frozen=True)
class TableColumns:
    """A benchmark's columns in one table."""

    table: Table
    columns: tuple[Column, ...]
    position: int = 0  # order among the table's benchmarks (ties: registration order)
    note: Callable[[Mapping[str, Any]], str] | None = None  # from this benchmark's result ({} when absent)


def fmt(value: float | None, scale: float = 100.0, digits: int = 1) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value * scale:.{digits}f}"


def ground_truth_boxes_note(metrics: Mapping[str, Any], columns: Sequence[tuple[str, Column]]) -> str:
    benchmarks = dict.fromkeys(name for name, _ in columns)
    sources = sorted({str(metrics[b]["gt_boxes"]) for b in benchmarks
                      if isinstance(metrics.get(b), dict) and metrics[b].get("gt_boxes")})
    return f"Ground-truth boxes: {'; '.join(sources)}." if sources else ""


def summary_note(metrics: Mapping[str, Any], columns: Sequence[tuple[str, Column]]) -> str:
    parts = "; ".join(f"{b}: mean of {', '.join(c.metric)}" for b, c in columns if isinstance(c.metric, tuple))
    return f"Each 3D VL column is the mean of that benchmark's metrics, as in the paper ({parts})."


# The paper's tables several benchmarks fill.
QA = Table("Table 1 — 3D question answering (ScanQA, SQA3D)", number=1)
GROUNDING = Table("Table 3 — 3D visual grounding (ScanRefer, Multi3DRefer)", number=3, note=ground_truth_boxes_note)
REFERIT3D = Table("Table 4 — 3D visual grounding (Nr3D, Sr3D)", number=4,
                  note="Accuracy = the predicted box selects the target among the ground-truth instances (ReferIt3D).")
# Table 5 summarises a benchmark by "the mean of the metrics for each benchmark" (paper §4.1): Scan2Cap
# 53.2 = mean(81.5, 40.9, 28.7, 61.8), ScanRefer 59.8 = mean(63.2, 56.4). The paper does not list
# ScanQA's; we take its five Table-1 metrics. Its column order (`position`): recon 0, scanqa 1,
# scan2cap 2, scanrefer 3, as in the paper.
JOINT = Table("Table 5 — joint reconstruction and 3D VL reasoning", number=5, note=summary_note,
              run_columns=(Column("Time (s / scene)", "seconds_per_scene", scale=1.0, digits=2, paper="1.6"),))
# Tables 7 and 8: ScanNet clips (recon) beside the paper's own datasets (co3d, re10k, nyuv2).
POSE = Table("Table 7 — camera pose", number=7,
             note="All frame pairs per clip; AUC@30 over the larger of the rotation and translation-direction errors.")
DEPTH = Table("Table 8 — depth", number=8)
