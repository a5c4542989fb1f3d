"""VSI-Bench: visual-spatial questions on scene videos (Yang et al., "Thinking in Space"), read
from its release's question file (`vidllm.data.scannet.annotations.load_vsibench`: ScanNet rows
only, the scenes being ScanNet scans).

Scoring as VSI-Bench: multiple choice by the option letter (accuracy), numeric answers by mean
relative accuracy (MRA); per question type, and overall as the mean over the task categories
(eight in the release), the three relative-direction levels counting as one (their mean).
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from vidllm.data.scannet.annotations import (
    VSIBENCH,
    VSIBENCH_CHOICE_TYPES,
    VSIBENCH_NUMBER,
    VSIBENCH_NUMERIC_TYPES,
    VSIBENCH_QUESTION_TYPES,
    Instruction,
)
from vidllm.eval.benchmarks.ground_truth import require_answers
from vidllm.eval.benchmarks.registry import BenchmarkSpec, ScoreInputs, register
from vidllm.eval.benchmarks.tables import Column, Table, TableColumns

if TYPE_CHECKING:
    from vidllm.eval.predictions import Prediction

# The overall score counts the three relative-direction levels as one category, their mean.
REL_DIRECTION = "object_rel_direction"
REL_DIRECTION_LEVELS = ("object_rel_direction_easy", "object_rel_direction_medium", "object_rel_direction_hard")

# MRA's confidence thresholds θ = 0.50, 0.55, ..., 0.95, in hundredths so the comparison is exact.
MRA_THRESHOLDS_PCT = tuple(range(50, 100, 5))

_STRIPPED = string.punctuation + string.whitespace
_NUMBER_STRIPPED = "".join(c for c in _STRIPPED if c not in "+-.")  # a number keeps its sign and point


# ----------------------------------------------------------------------------- metrics


def parse_number(text: str) -> Fraction | None:
    """The number a numeric answer starts with, exactly ("3.5 meters" -> 7/2); None if none."""
    words = text.split()
    token = words[0].strip(_NUMBER_STRIPPED).rstrip(".") if words else ""
    return Fraction(token) if VSIBENCH_NUMBER.fullmatch(token) else None


def mean_relative_accuracy(prediction: str, truth: str) -> Fraction:
    """Mean over θ ∈ {0.50, 0.55, ..., 0.95} of 1[|pred − gt| / gt < 1 − θ]; 0 for an unparsable answer."""
    pred, gt = parse_number(prediction), parse_number(truth)
    if pred is None or gt is None or gt <= 0:
        return Fraction(0)
    # |pred − gt| / gt < 1 − t/100  ⇔  100·|pred − gt| < (100 − t)·gt, for gt > 0
    hits = sum(100 * abs(pred - gt) < (100 - t) * gt for t in MRA_THRESHOLDS_PCT)
    return Fraction(hits, len(MRA_THRESHOLDS_PCT))


def answer_letter(prediction: str) -> str:
    """The option letter a multiple-choice answer gives: its first word without punctuation ("b." -> "B")."""
    words = prediction.split()
    return words[0].strip(_STRIPPED).upper() if words else ""


def choice_accuracy(prediction: str, truth: str) -> Fraction:
    return Fraction(int(answer_letter(prediction) == truth.strip().upper()))


def _mean(values: Sequence[Fraction]) -> Fraction:
    return sum(values, Fraction(0)) / len(values)


def score_vsibench(instructions: Sequence[Instruction], preds: Mapping[str, Prediction], gt_path: str
                   ) -> dict[str, Any]:
    require_answers(instructions, gt_path)
    by_type: dict[str, list[Fraction]] = {}
    rows = []  # one per question, the per-sample output
    for inst in instructions:
        question_type = inst.eval_subgroup["question_type"]
        is_numeric = question_type in VSIBENCH_NUMERIC_TYPES
        value = (mean_relative_accuracy if is_numeric else choice_accuracy)(preds[inst.id].text or "", inst.answers[0])
        by_type.setdefault(question_type, []).append(value)
        rows.append({"id": inst.id, "scene": inst.scene_id, "question_type": question_type,
                     "MRA" if is_numeric else "accuracy": float(value)})
    type_scores = {t: _mean(by_type[t]) for t in VSIBENCH_QUESTION_TYPES if t in by_type}
    subgroups: dict[str, dict[str, Any]] = {
        t: {"MRA" if t in VSIBENCH_NUMERIC_TYPES else "accuracy": float(s), "count": len(by_type[t])}
        for t, s in type_scores.items()}
    categories = {t: s for t, s in type_scores.items() if t not in REL_DIRECTION_LEVELS}
    levels = [type_scores[t] for t in REL_DIRECTION_LEVELS if t in type_scores]
    if levels:
        categories[REL_DIRECTION] = _mean(levels)
        subgroups[REL_DIRECTION] = {"accuracy": float(categories[REL_DIRECTION]),
                                    "count": sum(len(by_type[t]) for t in REL_DIRECTION_LEVELS if t in by_type)}
    choice = [s for t in VSIBENCH_CHOICE_TYPES for s in by_type.get(t, [])]
    numeric = [s for t in VSIBENCH_NUMERIC_TYPES for s in by_type.get(t, [])]
    metrics = {"overall": float(_mean(list(categories.values()))),
               "accuracy": float(_mean(choice)) if choice else None,  # over every multiple-choice question
               "MRA": float(_mean(numeric)) if numeric else None}  # over every numeric question
    return {"metrics": metrics, "subgroups": subgroups, "count": len(instructions), "per_sample": rows}


def _score(inputs: ScoreInputs) -> dict[str, Any]:
    return score_vsibench(inputs.instructions, inputs.predictions, inputs.gt)


# ----------------------------------------------------------------------------- the spec

# Not a table of the Vid-LLM paper, hence no paper row; columns in VSI-Bench's own order.
VSI_TABLE = Table("VSI-Bench — visual-spatial intelligence (ScanNet questions)", number=10,
                  note="Multiple choice: accuracy of the option letter; numeric: mean relative accuracy over "
                       "θ = 0.50, 0.55, …, 0.95. Avg. = the mean over the categories asked (eight in the release; "
                       "Rel. Dir. = the mean of its easy, medium and hard levels), as VSI-Bench reports it.",
                  paper_label=None, only_if_scored=True)

SPEC = register(BenchmarkSpec(
    VSIBENCH, _score,
    tables=(TableColumns(VSI_TABLE, (
        Column("Avg.", "overall"), Column("Obj. Count", "MRA", "object_counting"),
        Column("Abs. Dist.", "MRA", "object_abs_distance"), Column("Obj. Size", "MRA", "object_size_estimation"),
        Column("Room Size", "MRA", "room_size_estimation"), Column("Rel. Dist.", "accuracy", "object_rel_distance"),
        Column("Rel. Dir.", "accuracy", REL_DIRECTION), Column("Route Plan", "accuracy", "route_planning"),
        Column("Appr. Order", "accuracy", "obj_appearance_order"))),),
    ablation_columns=(Column("VSI avg", "overall"),),
))
