"""ScanRefer: single-object visual grounding, Acc@k with the first predicted box, overall and for
unique / multiple (another object of the target's class in the scene)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from vidllm.data.scannet.annotations import SCANREFER, Instruction
from vidllm.eval.benchmarks.ground_truth import SceneBoxes, target_boxes
from vidllm.eval.benchmarks.registry import BenchmarkSpec, ScoreInputs, register
from vidllm.eval.benchmarks.tables import GROUNDING, JOINT, Column, TableColumns

if TYPE_CHECKING:
    from vidllm.eval.predictions import Prediction


def score_scanrefer(
    instructions: Sequence[Instruction], preds: Mapping[str, Prediction], boxes: SceneBoxes, boxes_source: str,
    thresholds: Sequence[float] = (0.25, 0.5),
) -> dict[str, Any]:
    """Acc@k with the first predicted box (an empty list is a miss)."""
    from vidllm.eval.grounding import box_iou_matrix, mean_or_none

    rows = []  # one per query: the per-sample output, and what the metrics average
    for inst in instructions:
        gt = target_boxes(boxes, inst, boxes_source)
        pred = preds[inst.id].boxes
        iou = float(box_iou_matrix(pred[:1], gt[:1])[0, 0]) if len(pred) else 0.0
        rows.append({"id": inst.id, "scene": inst.scene_id, "unique": bool(inst.eval_subgroup.get("unique", False)),
                     "IoU": iou, **{f"Acc@{k:g}": float(iou >= k) for k in thresholds}})
    iou_arr, unique_arr = np.asarray([r["IoU"] for r in rows]), np.asarray([r["unique"] for r in rows], bool)
    metrics, subgroups = {}, {"unique": {}, "multiple": {}}
    for k in thresholds:
        hit = np.asarray([r[f"Acc@{k:g}"] for r in rows])
        metrics[f"Acc@{k:g}"] = float(hit.mean())
        subgroups["unique"][f"Acc@{k:g}"] = mean_or_none(hit[unique_arr])
        subgroups["multiple"][f"Acc@{k:g}"] = mean_or_none(hit[~unique_arr])
    subgroups["unique"]["count"] = int(unique_arr.sum())
    subgroups["multiple"]["count"] = int((~unique_arr).sum())
    metrics["mean_IoU"] = float(iou_arr.mean())
    return {"metrics": metrics, "subgroups": subgroups, "count": len(instructions), "per_sample": rows}


def _score(inputs: ScoreInputs) -> dict[str, Any]:
    return score_scanrefer(inputs.instructions, inputs.predictions, inputs.boxes, inputs.boxes_source)


SPEC = register(BenchmarkSpec(
    SCANREFER, _score, first_box_only=True, plot_boxes=True,
    tables=(
        TableColumns(GROUNDING, (Column("ScanRefer Acc@0.25", "Acc@0.25", paper="63.2"),
                                 Column("Acc@0.5", "Acc@0.5", paper="56.4"),
                                 Column("unique @0.25", "Acc@0.25", "unique"),
                                 Column("multiple @0.25", "Acc@0.25", "multiple"))),
        TableColumns(JOINT, (Column("ScanRefer", ("Acc@0.25", "Acc@0.5"), paper="59.8"),), position=3),
    ),
    ablation_columns=(Column("Ref@.25", "Acc@0.25"), Column("Ref@.5", "Acc@0.5")),
))
