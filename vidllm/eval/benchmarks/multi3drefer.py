"""Multi3DRefer: grounding with zero, one or several targets, F1@k (M3DRef-CLIP) overall and per
evaluation type."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from vidllm.data.scannet.annotations import MULTI3DREFER, MULTI3DREFER_EVAL_TYPES, Instruction
from vidllm.eval.benchmarks.ground_truth import SceneBoxes, target_boxes
from vidllm.eval.benchmarks.registry import BenchmarkSpec, ScoreInputs, register
from vidllm.eval.benchmarks.tables import GROUNDING, Column, TableColumns

if TYPE_CHECKING:
    from vidllm.eval.predictions import Prediction


def score_multi3drefer(
    instructions: Sequence[Instruction], preds: Mapping[str, Prediction], boxes: SceneBoxes, boxes_source: str,
    thresholds: Sequence[float] = (0.25, 0.5),
) -> dict[str, Any]:
    from vidllm.eval.grounding import mean_or_none, multi3drefer_f1

    rows = []  # one per query: the per-sample output, and what the metrics average
    for inst in instructions:
        gt = target_boxes(boxes, inst, boxes_source)
        eval_type = inst.eval_subgroup.get("eval_type", "mt" if len(gt) > 1 else "st_w_d" if len(gt) else "zt_w_d")
        rows.append({"id": inst.id, "scene": inst.scene_id, "eval_type": eval_type,
                     **{f"F1@{k:g}": multi3drefer_f1(preds[inst.id].boxes, gt, k) for k in thresholds}})
    types = np.asarray([r["eval_type"] for r in rows])
    f1 = {k: [r[f"F1@{k:g}"] for r in rows] for k in thresholds}
    metrics = {f"F1@{k:g}": float(np.mean(f1[k])) for k in thresholds}
    subgroups = {
        t: {**{f"F1@{k:g}": mean_or_none(np.asarray(f1[k])[types == t]) for k in thresholds}, "count": int((types == t).sum())}
        for t in MULTI3DREFER_EVAL_TYPES
    }
    return {"metrics": metrics, "subgroups": subgroups, "count": len(instructions), "per_sample": rows}


def _score(inputs: ScoreInputs) -> dict[str, Any]:
    return score_multi3drefer(inputs.instructions, inputs.predictions, inputs.boxes, inputs.boxes_source)


SPEC = register(BenchmarkSpec(
    MULTI3DREFER, _score, plot_boxes=True,
    tables=(TableColumns(GROUNDING, (Column("Multi3DRefer F1@0.25", "F1@0.25", paper="61.6"),
                                     Column("F1@0.5", "F1@0.5", paper="56.1"))),),
    ablation_columns=(Column("M3DR F1", "F1@0.25"),),
))
