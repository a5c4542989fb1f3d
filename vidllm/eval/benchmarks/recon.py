"""Reconstruction from the video alone: depth, camera pose and point-cloud metrics per scene,
averaged over scenes. The ground truth travels in each prediction's geometry file."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from vidllm.data.scannet.annotations import Task
from vidllm.errors import DataError
from vidllm.eval.benchmarks.registry import BenchmarkSpec, ScoreInputs, register
from vidllm.eval.benchmarks.tables import DEPTH, JOINT, POSE, Column, Table, TableColumns, raw

if TYPE_CHECKING:
    from vidllm.eval.predictions import Prediction


def score_recon(preds: Mapping[str, Prediction], threshold: float = 0.05, voxel_size: float = 0.02,
                world_maps: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Depth, pose and point-cloud metrics per scene from geometry npz files, averaged over scenes.

    `world_maps` (scene -> `vidllm.eval.protocols.WorldMap`): rescoring under another protocol
    maps the predicted poses and points, and scales the predicted depth, before scoring.
    """
    from vidllm.artifacts.run_dir import read_geometry
    from vidllm.eval.geometry_metrics import depth_metrics, point_cloud_metrics, pose_metrics

    per_scene: dict[str, dict[str, float]] = {}
    for pred in sorted(preds.values(), key=lambda p: p.id):
        geo = read_geometry(pred.geometry, required=("depth_pred", "depth_gt", "camera_to_world_pred",
                                                    "camera_to_world_gt", "points_pred", "points_gt"))
        for key in ("camera_to_world_pred", "camera_to_world_gt"):
            if geo[key].ndim != 3 or geo[key].shape[1:] != (4, 4) or not np.isfinite(geo[key]).all():
                raise DataError(pred.geometry, f"'{key}' must be finite [N,4,4], got shape {list(geo[key].shape)}")
        if len(geo["depth_pred"]) != len(geo["depth_gt"]) or len(geo["camera_to_world_pred"]) != len(geo["camera_to_world_gt"]):
            raise DataError(pred.geometry, "prediction and ground truth hold different numbers of frames")
        remap = (world_maps or {}).get(pred.id)
        if remap is not None:
            geo["camera_to_world_pred"] = remap.poses(geo["camera_to_world_pred"])
            geo["points_pred"] = remap.points(geo["points_pred"])
            geo["depth_pred"] = geo["depth_pred"] * remap.scale
        scene = {f"depth/{k}": v for k, v in depth_metrics(geo["depth_pred"], geo["depth_gt"]).items()}
        scene.update({f"pose/{k}": v for k, v in pose_metrics(geo["camera_to_world_pred"], geo["camera_to_world_gt"]).items()})
        try:
            cloud = point_cloud_metrics(geo["points_pred"], geo["points_gt"], threshold, voxel_size)
        except ValueError as exc:
            raise DataError(pred.geometry, str(exc)) from None
        scene.update({f"recon/{k}": v for k, v in cloud.items()})
        per_scene[pred.id] = scene
    keys = [k for k in next(iter(per_scene.values())) if not k.endswith(("num_images", "num_pairs"))]
    metrics = {k: float(np.nanmean([s[k] for s in per_scene.values()])) for k in keys}
    # A prediction's id is its scene id.
    rows = [{"id": scene_id, "scene": scene_id, **scene} for scene_id, scene in per_scene.items()]
    return {"metrics": metrics, "subgroups": {"per_scene": per_scene}, "count": len(per_scene), "per_sample": rows}


def _score(inputs: ScoreInputs) -> dict[str, Any]:
    return {"gt": "geometry files (depth_gt, camera_to_world_gt, points_gt)",
            **score_recon(inputs.predictions, world_maps=inputs.world_maps)}


RECONSTRUCTION = Table("Table 9 — reconstruction", number=9, note="Metres; 2 cm voxel down-sampling, 5 cm threshold.")

# The one task the data layer does not declare: it has no annotation file and no training row.
SPEC = register(BenchmarkSpec(
    Task("recon", "geometry"), _score,
    tables=(
        TableColumns(JOINT, (raw("Recon ScanNet F-score", "recon/F-score", paper="0.582"),), position=0),
        # The paper reports Tables 7-8 on Co3Dv2 and NYU-v2 only: its numbers are in those columns.
        TableColumns(POSE, (Column("ScanNet RRA@15", "pose/RRA@15"), Column("ScanNet RTA@15", "pose/RTA@15"),
                            Column("ScanNet AUC@30", "pose/AUC@30")), position=0,
                     note=lambda _: "ScanNet: averaged over scenes."),
        TableColumns(DEPTH, (raw("ScanNet δ1 ↑", "depth/delta1"), raw("ScanNet AbsRel ↓", "depth/abs_rel"),
                             raw("ScanNet RMSE ↓", "depth/rmse"), raw("ScanNet log10 ↓", "depth/log10")),
                     position=0,
                     note=lambda _: "ScanNet: valid mask 0 < GT < 10 m, metric scale (no per-image alignment)."),
        TableColumns(RECONSTRUCTION, (raw("Comp ↓", "recon/Comp", "0.071"), raw("Acc ↓", "recon/Acc", "0.042"),
                                      raw("Recall ↑", "recon/Recall", "0.634"),
                                      raw("Prec ↑", "recon/Precision", "0.885"),
                                      raw("F-score ↑", "recon/F-score", "0.582"))),
    ),
    ablation_columns=(Column("AUC@30", "pose/AUC@30"), Column("δ1", "depth/delta1")),
))
