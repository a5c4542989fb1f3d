"""RealEstate10K camera pose (Table 7's second dataset): clips of 10 frames drawn per test
sequence from the camera files and extracted frames (`vidllm.data.geometry_sets.re10k`), every
clip's pairs pooled into one AUC@30 (`vidllm.eval.benchmarks.pose_sets`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vidllm.data.scannet.annotations import Task
from vidllm.eval.benchmarks.pose_sets import score_pose_set
from vidllm.eval.benchmarks.registry import BenchmarkSpec, DatasetSpec, ScoreInputs, register
from vidllm.eval.benchmarks.tables import POSE, Column, TableColumns


def _load(root: Path, split: str | None, frames: int | None, seed: int) -> list[Any]:
    from vidllm.data.geometry_sets.re10k import load_re10k

    return load_re10k(root, split or "test", frames=frames, seed=seed)


def _score(inputs: ScoreInputs) -> dict[str, Any]:
    return {"gt": "geometry files (camera_to_world_gt from the camera files)", "frames": inputs.meta.get("frames"),
            "split": inputs.meta.get("split"), **score_pose_set(inputs.predictions)}


SPEC = register(BenchmarkSpec(
    Task("re10k", "geometry"), _score,
    tables=(TableColumns(POSE, (Column("RE10K RRA@15", "pose/RRA@15"), Column("RE10K RTA@15", "pose/RTA@15"),
                                Column("RE10K AUC@30", "pose/AUC@30")), position=2,
                         note=lambda r: f"RealEstate10K: {r.get('frames') or 10} random frames per sequence, "
                                        "all pairs pooled."),),
    dataset=DatasetSpec("RealEstate10K", _load, "pose", default_split="test", default_frames=10),
))
