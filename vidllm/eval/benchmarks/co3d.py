"""Co3Dv2 camera pose (the paper's Table 7): clips of 10 frames drawn per test sequence from the
published layout (`vidllm.data.geometry_sets.co3d`), AUC@30 pooled per category and averaged
over categories, as VGGT reports it (`vidllm.eval.benchmarks.pose_sets`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vidllm.data.scannet.annotations import Task
from vidllm.eval.benchmarks.pose_sets import score_pose_set
from vidllm.eval.benchmarks.registry import BenchmarkSpec, DatasetSpec, ScoreInputs, register
from vidllm.eval.benchmarks.tables import POSE, Column, TableColumns


def _load(root: Path, split: str | None, frames: int | None, seed: int) -> list[Any]:
    from vidllm.data.geometry_sets.co3d import load_co3d

    return load_co3d(root, split, frames=frames, seed=seed)


def _score(inputs: ScoreInputs) -> dict[str, Any]:
    return {"gt": "geometry files (camera_to_world_gt from frame_annotations.jgz)",
            "frames": inputs.meta.get("frames"), "split": inputs.meta.get("split"),
            **score_pose_set(inputs.predictions, group_of=lambda clip_id: clip_id.split("/", 1)[0],
                             group_label="category")}


SPEC = register(BenchmarkSpec(
    Task("co3d", "geometry"), _score,
    tables=(TableColumns(POSE, (Column("Co3Dv2 RRA@15", "pose/RRA@15", paper="96.8"),
                                Column("Co3Dv2 RTA@15", "pose/RTA@15", paper="93.4"),
                                Column("Co3Dv2 AUC@30", "pose/AUC@30", paper="88.5")), position=1,
                         note=lambda r: f"Co3Dv2: {r.get('frames') or 10} random frames per sequence, pairs "
                                        "pooled per category, mean over categories."),),
    dataset=DatasetSpec("Co3Dv2", _load, "pose", default_split="test", default_frames=10),
))
