"""Camera pose on a published multi-view set, as VGGT reports it (Co3Dv2, RealEstate10K): every
i<j frame pair of a clip gives a rotation error and a translation-direction error
(`vidllm.eval.geometry_metrics.pose_errors`); a group's pairs are pooled and AUC@30 is the mean
over 1°..30° of the fraction of pairs whose larger error is below the threshold (`pose_auc`,
VGGT's `calculate_auc_np`); the set's value is the mean over groups (Co3Dv2: categories; one group
elsewhere). Relative poses make the metric independent of the world frame the model predicts in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from vidllm.errors import DataError

if TYPE_CHECKING:
    from vidllm.eval.predictions import Prediction

THRESHOLD = 15.0  # RRA / RTA threshold, degrees
AUC_MAX = 30


def _summary(rot: np.ndarray, trans: np.ndarray) -> dict[str, float]:
    from vidllm.eval.geometry_metrics import pose_auc

    return {f"pose/RRA@{THRESHOLD:g}": float((rot < THRESHOLD).mean()),
            f"pose/RTA@{THRESHOLD:g}": float((trans < THRESHOLD).mean()),
            f"pose/AUC@{AUC_MAX}": pose_auc(rot, trans, AUC_MAX)}


def score_pose_set(preds: Mapping[str, Prediction], group_of: Callable[[str], str] | None = None,
                   group_label: str = "group") -> dict[str, Any]:
    """Pose metrics from geometry files holding `camera_to_world_pred` and `camera_to_world_gt` `[N,4,4]`.

    `group_of(prediction id)` names the group whose pairs are pooled (None: one group); the
    metrics are the mean over groups, each group's in "subgroups" with its clip and pair counts,
    and every clip's own values in "per_sample" (`group_label`: the group's column name there).
    """
    from vidllm.artifacts.run_dir import read_geometry
    from vidllm.eval.geometry_metrics import pose_errors

    errors: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    rows = []
    for pred in sorted(preds.values(), key=lambda p: p.id):
        geo = read_geometry(pred.geometry, required=("camera_to_world_pred", "camera_to_world_gt"))
        for key in ("camera_to_world_pred", "camera_to_world_gt"):
            if geo[key].ndim != 3 or geo[key].shape[1:] != (4, 4) or not np.isfinite(geo[key]).all():
                raise DataError(pred.geometry, f"'{key}' must be finite [N,4,4], got shape {list(geo[key].shape)}")
        if len(geo["camera_to_world_pred"]) != len(geo["camera_to_world_gt"]):
            raise DataError(pred.geometry, "prediction and ground truth hold different numbers of frames")
        if len(geo["camera_to_world_gt"]) < 2:
            raise DataError(pred.geometry, "a pose clip needs at least 2 frames")
        rot, trans = pose_errors(geo["camera_to_world_pred"], geo["camera_to_world_gt"])
        group = group_of(pred.id) if group_of is not None else "all"
        errors.setdefault(group, []).append((rot, trans))
        row = {"id": pred.id, "scene": pred.id, **_summary(rot, trans), "pose/num_pairs": int(rot.size)}
        if group_of is not None:
            row[group_label] = group
        rows.append(row)
    subgroups: dict[str, dict[str, Any]] = {}
    for group, parts in sorted(errors.items()):
        rot = np.concatenate([r for r, _ in parts])
        trans = np.concatenate([t for _, t in parts])
        subgroups[group] = {k.removeprefix("pose/"): v for k, v in _summary(rot, trans).items()}
        subgroups[group].update(clips=len(parts), pairs=int(rot.size))
    keys = list(_summary(np.zeros(1), np.zeros(1)))
    metrics = {k: float(np.mean([g[k.removeprefix("pose/")] for g in subgroups.values()])) for k in keys}
    return {"metrics": metrics, "subgroups": subgroups if group_of is not None else {},
            "count": len(rows), "pairs": sum(g["pairs"] for g in subgroups.values()), "per_sample": rows}
