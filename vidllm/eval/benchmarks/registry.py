"""The benchmark registry: one `BenchmarkSpec` per benchmark, registered by its module in this package.

A spec is the benchmark's `Task` (what the data layer and training know: name, kind, published
files and their reader; `vidllm.data.scannet.annotations`) plus what evaluation needs: its scorer,
how predictions read its answers, and its report and ablation columns. Every list of benchmark
names evaluation uses is derived here, at call time; registering a spec whose task the data layer
does not declare adds the task there, so a new benchmark is one definition in one module.

Importing this module imports the package, which registers the built-in benchmarks first.
Modules the benchmark modules themselves import (e.g. `vidllm.eval.predictions`, for its types)
import this module directly: importing the package from them would be an import cycle.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vidllm.data.scannet.annotations import TASKS, Task, register_task, unregister_task
from vidllm.errors import VidLLMError
from vidllm.eval.benchmarks.tables import Column, TableColumns


@dataclass(frozen=True)
class ScoreInputs:
    """What `vidllm.eval.scoring.score_predictions` hands a benchmark's scorer."""

    predictions: Mapping[str, Any]  # id -> vidllm.eval.predictions.Prediction, matched to the ground truth
    meta: Mapping[str, Any]  # the predictions' .meta.json ({} without one)
    instructions: Sequence[Any] = ()  # the ground-truth Instructions; empty without annotation files
    gt: str = ""  # where they were read from, for messages
    boxes: Mapping[str, Mapping[int, Any]] = field(default_factory=dict)  # scene -> object id -> GT box [6]
    boxes_source: str = ""
    proposals: str | Path | None = None  # detector proposals folder (Scan2Cap's IoU gate), as given
    tokenize: str | None = None  # caption tokenisation; None = the benchmark's default
    meteor: bool = True
    iou_threshold: float = 0.5
    # scene -> map (vidllm.eval.protocols.WorldMap) of predicted geometry from the world as predicted
    # to the world under the protocol scored, when that differs (recon); boxes come already mapped.
    world_maps: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DatasetSpec:
    """A benchmark whose clips come from its own published dataset folder (`vidllm predict --data
    ROOT`, `vidllm.eval.geometry_sets`) instead of the ScanNet shards."""

    title: str  # as the paper names it, e.g. "Co3Dv2"
    # (root, split, frames per clip or None = all, seed) -> [vidllm.data.geometry_sets.GeometryClip]
    load: Callable[[Path, str | None, int | None, int], Sequence[Any]]
    measures: str  # "pose": camera poses of multi-frame clips; "depth": monocular depth of single images
    default_split: str | None = None
    default_frames: int | None = None  # frames drawn per clip (VGGT's pose protocol: 10)


@dataclass(frozen=True)
class BenchmarkSpec:
    task: Task
    # -> {"metrics", "subgroups", "count", ...}, merged into the result, and "per_sample": one row per item,
    # {"id", "scene", <subgroup labels>, <its metrics>}, the values the metrics are computed from
    # (`vidllm score --per-sample`; not kept in the result).
    score: Callable[[ScoreInputs], dict[str, Any]]
    first_box_only: bool = False  # a prediction line keeps the first <ground>'s box only (one referent)
    # With ground-truth proposals, the answer is the chosen instance's own box (ReferIt3D's protocol).
    answers_with_gt_instance: bool = False
    plot_boxes: bool = False  # its predicted boxes are drawn on the report's top-down plots (ids start "scene|")
    tables: tuple[TableColumns, ...] = ()  # its columns in the report's tables
    ablation_columns: tuple[Column, ...] = ()  # its columns in `vidllm ablate`'s table
    dataset: DatasetSpec | None = None  # its own dataset folder; None = the ScanNet shards

    @property
    def name(self) -> str:  # the CLI, metrics.json and Instruction.task name
        return self.task.name


# name -> spec, in registration order: the order `vidllm evaluate` runs them and metrics.json lists them.
BENCHMARKS: dict[str, BenchmarkSpec] = {}
_ADDED_TASKS: set[str] = set()  # tasks registered here because the data layer does not declare them


def register(spec: BenchmarkSpec) -> BenchmarkSpec:
    if spec.name in BENCHMARKS:
        raise ValueError(f"benchmark '{spec.name}' is already registered")
    known = TASKS.get(spec.name)
    if known is None:
        register_task(spec.task)
        _ADDED_TASKS.add(spec.name)
    elif known != spec.task:
        raise ValueError(f"benchmark '{spec.name}': its task differs from the one the data layer declares")
    BENCHMARKS[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    del BENCHMARKS[name]
    if name in _ADDED_TASKS:
        _ADDED_TASKS.discard(name)
        unregister_task(name)


def get(name: str) -> BenchmarkSpec:
    spec = BENCHMARKS.get(name)
    if spec is None:
        raise VidLLMError(f"unknown benchmark '{name}' (choose from {', '.join(choices())})")
    return spec


def specs() -> tuple[BenchmarkSpec, ...]:
    return tuple(BENCHMARKS.values())


def names() -> tuple[str, ...]:
    """Every benchmark run on the ScanNet shards, in registration order (what `vidllm evaluate`
    runs by default); those reading their own dataset (`dataset_benchmarks`) are left out."""
    return tuple(name for name, spec in BENCHMARKS.items() if spec.dataset is None)


def dataset_benchmarks() -> tuple[str, ...]:
    """Benchmarks on their own published dataset folder (`vidllm predict --data`), in registration order."""
    return tuple(name for name, spec in BENCHMARKS.items() if spec.dataset is not None)


def _of_kind(kind: str) -> tuple[str, ...]:
    return tuple(s.name for s in BENCHMARKS.values() if s.task.kind == kind)


def text_benchmarks() -> tuple[str, ...]:
    return _of_kind("text")


def box_benchmarks() -> tuple[str, ...]:
    return _of_kind("box")


def geometry_benchmarks() -> tuple[str, ...]:
    return _of_kind("geometry")


def choices() -> tuple[str, ...]:
    """Every benchmark as the CLI and error messages list them: text, then box, then geometry ones."""
    return text_benchmarks() + box_benchmarks() + geometry_benchmarks()
