"""NYUv2 monocular depth (the paper's Table 8): every image of the exported labelled set
(`vidllm.data.geometry_sets.nyuv2`) on its own, scored inside the Eigen crop with
1e-3 < GT < 10 m after scaling the prediction by its median ratio to the GT
(`vidllm.eval.geometry_metrics.median_aligned_depth_metrics`), averaged over images."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vidllm.data.scannet.annotations import Task
from vidllm.errors import DataError
from vidllm.eval.benchmarks.registry import BenchmarkSpec, DatasetSpec, ScoreInputs, register
from vidllm.eval.benchmarks.tables import DEPTH, TableColumns, raw

if TYPE_CHECKING:
    from vidllm.eval.predictions import Prediction

MAX_DEPTH = 10.0
MIN_DEPTH = 1e-3


def _load(root: Path, split: str | None, frames: int | None, seed: int) -> list[Any]:
    from vidllm.data.geometry_sets.nyuv2 import load_nyuv2

    return load_nyuv2(root, split)


def score_nyuv2(preds: Mapping[str, Prediction]) -> dict[str, Any]:
    """Depth metrics per image from geometry files holding `depth_pred` `[1,h,w]` and `depth_gt` `[1,H,W]`."""
    from vidllm.artifacts.run_dir import read_geometry
    from vidllm.data.geometry_sets.nyuv2 import eigen_crop_mask
    from vidllm.eval.geometry_metrics import median_aligned_depth_metrics

    rows = []
    for pred in sorted(preds.values(), key=lambda p: p.id):
        geo = read_geometry(pred.geometry, required=("depth_pred", "depth_gt"))
        if geo["depth_pred"].ndim != 3 or geo["depth_gt"].ndim != 3 or len(geo["depth_pred"]) != len(geo["depth_gt"]):
            raise DataError(pred.geometry, f"depth_pred and depth_gt must both be [N,H,W] with the same N, got "
                                           f"{list(geo['depth_pred'].shape)} and {list(geo['depth_gt'].shape)}")
        for p, g in zip(geo["depth_pred"], geo["depth_gt"], strict=True):
            metrics, scale = median_aligned_depth_metrics(p, g, eigen_crop_mask(*g.shape), MIN_DEPTH, MAX_DEPTH)
            rows.append({"id": pred.id, "scene": pred.id, "scale": scale,
                         **{f"depth/{k}": v for k, v in metrics.items() if k != "num_images"}})
    keys = [k for k in rows[0] if k.startswith("depth/")]
    metrics = {k: float(np.nanmean([r[k] for r in rows])) for k in keys}
    return {"metrics": metrics, "subgroups": {}, "count": len(rows),
            "scored": int(sum(np.isfinite(r["depth/abs_rel"]) for r in rows)), "per_sample": rows}


def _score(inputs: ScoreInputs) -> dict[str, Any]:
    return {"gt": "geometry files (depth_gt from the exported depth maps)", **score_nyuv2(inputs.predictions)}


SPEC = register(BenchmarkSpec(
    Task("nyuv2", "geometry"), _score,
    tables=(TableColumns(DEPTH, (raw("NYUv2 δ1 ↑", "depth/delta1", "0.987"),
                                 raw("NYUv2 AbsRel ↓", "depth/abs_rel", "0.025"),
                                 raw("NYUv2 RMSE ↓", "depth/rmse", "0.109"),
                                 raw("NYUv2 log10 ↓", "depth/log10", "0.010")),
                         position=1,
                         note=lambda _: "NYUv2: Eigen crop, 1e-3 < GT < 10 m, per-image median scale alignment."),),
    dataset=DatasetSpec("NYUv2", _load, "depth"),
))
