"""ReferIt3D's protocol, shared by Nr3D and Sr3D: the predicted box selects one of the scene's
ground-truth instances; accuracy overall, easy / hard and view-dependent / -independent."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from vidllm.data.scannet.annotations import Instruction, Task
from vidllm.eval.benchmarks.ground_truth import SceneBoxes, target_boxes
from vidllm.eval.benchmarks.registry import BenchmarkSpec, ScoreInputs
from vidllm.eval.benchmarks.tables import REFERIT3D, Column, TableColumns

if TYPE_CHECKING:
    from vidllm.eval.predictions import Prediction


def score_referit3d(
    instructions: Sequence[Instruction], preds: Mapping[str, Prediction], boxes: SceneBoxes, boxes_source: str,
    thresholds: Sequence[float] = (0.25, 0.5),
) -> dict[str, Any]:
    """ReferIt3D accuracy: the first predicted box selects the GT instance it overlaps most.

    Also reports Acc@k (IoU with the target box), as Video-3D LLM's evaluator does.
    """
    from vidllm.eval.grounding import as_boxes, box_iou_matrix, is_view_dependent, mean_or_none, select_gt_instance

    rows = []  # one per utterance: the per-sample output, and what the metrics average
    for inst in instructions:
        gt = target_boxes(boxes, inst, boxes_source)[0]
        scene = boxes[inst.scene_id]
        ids = sorted(scene)
        pred = preds[inst.id].boxes
        chosen = select_gt_instance(pred[0], as_boxes([scene[i] for i in ids])) if len(pred) else None
        iou = float(box_iou_matrix(pred[:1], gt[None])[0, 0]) if len(pred) else 0.0
        sub = inst.eval_subgroup
        rows.append({
            "id": inst.id, "scene": inst.scene_id, "hard": sub.get("hard"),
            "view_dependent": bool(sub["view_dependent"]) if "view_dependent" in sub else is_view_dependent(inst.text),
            "chosen_object_id": None if chosen is None else ids[chosen],
            "Acc": float(chosen is not None and ids[chosen] == inst.target_object_ids[0]),
            "IoU": iou, **{f"Acc@{k:g}": float(iou >= k) for k in thresholds}})
    acc = np.asarray([r["Acc"] for r in rows])
    view_dep_arr = np.asarray([r["view_dependent"] for r in rows], bool)
    known_hard = np.asarray([r["hard"] is not None for r in rows])
    hard_arr = np.asarray([bool(r["hard"]) for r in rows])
    metrics = {"Acc": float(acc.mean())}
    metrics.update({f"Acc@{k:g}": float(np.mean([r[f"Acc@{k:g}"] for r in rows])) for k in thresholds})
    subgroups = {
        "easy": {"Acc": mean_or_none(acc[known_hard & ~hard_arr]), "count": int((known_hard & ~hard_arr).sum())},
        "hard": {"Acc": mean_or_none(acc[known_hard & hard_arr]), "count": int((known_hard & hard_arr).sum())},
        "view_dependent": {"Acc": mean_or_none(acc[view_dep_arr]), "count": int(view_dep_arr.sum())},
        "view_independent": {"Acc": mean_or_none(acc[~view_dep_arr]), "count": int((~view_dep_arr).sum())},
    }
    return {"metrics": metrics, "subgroups": subgroups, "count": len(instructions), "per_sample": rows}


def _score(inputs: ScoreInputs) -> dict[str, Any]:
    return score_referit3d(inputs.instructions, inputs.predictions, inputs.boxes, inputs.boxes_source)


def referit3d_spec(task: Task, display_name: str, paper: tuple[str, ...]) -> BenchmarkSpec:
    """A ReferIt3D benchmark; `paper` = the paper's overall, easy, hard, view-dependent and
    view-independent accuracy."""
    headers = (f"{display_name} Overall", "Easy", "Hard", "View Dep", "View Indep")
    groups = (None, "easy", "hard", "view_dependent", "view_independent")
    return BenchmarkSpec(
        task, _score, answers_with_gt_instance=True,
        tables=(TableColumns(REFERIT3D, tuple(Column(h, "Acc", g, paper=p) for h, g, p in zip(headers, groups, paper,
                                                                                                strict=True))),),
    )
