"""SQA3D: situated question answering (the situation text precedes the question), exact match
overall and per question type."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from vidllm.data.scannet.annotations import SQA3D, SQA3D_QUESTION_TYPES, Instruction
from vidllm.eval.benchmarks.ground_truth import require_answers
from vidllm.eval.benchmarks.registry import BenchmarkSpec, ScoreInputs, register
from vidllm.eval.benchmarks.tables import QA, Column, Table, TableColumns
from vidllm.eval.captions import exact_match

if TYPE_CHECKING:
    from vidllm.eval.predictions import Prediction


def score_sqa3d(instructions: Sequence[Instruction], preds: Mapping[str, Prediction], gt_path: str) -> dict[str, Any]:
    from vidllm.eval.grounding import mean_or_none

    require_answers(instructions, gt_path)
    rows = []  # one per question: the per-sample output, and what the metrics average
    for inst in instructions:
        match, refined_match = exact_match(preds[inst.id].text or "", inst.answers)
        rows.append({"id": inst.id, "scene": inst.scene_id,
                     "question_type": inst.eval_subgroup.get("question_type", "others"),
                     "EM@1": float(match), "EM@1-refined": float(refined_match)})
    em_arr, ref_arr = np.asarray([r["EM@1"] for r in rows]), np.asarray([r["EM@1-refined"] for r in rows])
    qtype_arr = np.asarray([r["question_type"] for r in rows])
    subgroups = {
        t: {"EM@1": mean_or_none(em_arr[qtype_arr == t]), "EM@1-refined": mean_or_none(ref_arr[qtype_arr == t]),
            "count": int((qtype_arr == t).sum())}
        for t in SQA3D_QUESTION_TYPES
    }
    return {"metrics": {"EM@1": float(em_arr.mean()), "EM@1-refined": float(ref_arr.mean())},
            "subgroups": subgroups, "count": len(instructions), "per_sample": rows}


def _score(inputs: ScoreInputs) -> dict[str, Any]:
    return score_sqa3d(inputs.instructions, inputs.predictions, inputs.gt)


# Shown under Table 1 when SQA3D was scored.
BY_TYPE = Table(None, number=1.5, first_header="SQA3D EM@1 by type", paper_label=None, only_if_scored=True)

SPEC = register(BenchmarkSpec(
    SQA3D, _score,
    tables=(TableColumns(QA, (Column("SQA3D EM@1", "EM@1", paper="57.3"),)),
            TableColumns(BY_TYPE, tuple(Column(t, "EM@1", t) for t in SQA3D_QUESTION_TYPES))),
))
