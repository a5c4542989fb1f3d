"""ScanQA: free-form 3D question answering, scored with captioning metrics and exact match,
broken down by question family."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from vidllm.data.scannet.annotations import SCANQA, Instruction
from vidllm.eval.benchmarks.ground_truth import require_answers
from vidllm.eval.benchmarks.registry import BenchmarkSpec, ScoreInputs, register
from vidllm.eval.benchmarks.tables import JOINT, QA, Column, TableColumns
from vidllm.eval.captions import CAPTION_METRICS, TokenizePreset, exact_match, raw_exact_match, score_captions

if TYPE_CHECKING:
    from vidllm.eval.predictions import Prediction

# Question families of ScanQA-style questions, recognised by their opening words.
SCANQA_FAMILIES = ("count", "colour", "existence", "relative_position", "other")
_RELATIVE = ("next to", "left of", "right of", "behind", "in front of", "near", "between", "on top of", "under")


def scanqa_family(question: str) -> str:
    """count ("how many"), colour ("what colo(u)r"), existence ("is there", "are there"),
    relative_position (a spatial relation: "what is next to ..."), else other."""
    q = question.strip().lower()
    if q.startswith("how many"):
        return "count"
    if q.startswith(("what color", "what colour")):
        return "colour"
    if q.startswith(("is there", "are there")):
        return "existence"
    if any(f" {r} " in f" {q} " for r in _RELATIVE):
        return "relative_position"
    return "other"


def score_scanqa(
    instructions: Sequence[Instruction], preds: Mapping[str, Prediction], gt_path: str,
    preset: TokenizePreset = "coco_ptb", meteor: bool = True,
) -> dict[str, Any]:
    from vidllm.eval.grounding import mean_or_none

    require_answers(instructions, gt_path)
    captions = score_captions({i.id: preds[i.id].text or "" for i in instructions},
                              {i.id: i.answers for i in instructions}, preset=preset, meteor=meteor)
    caption_scores = captions.by_id()
    rows = []  # one per question: the per-sample output, and what EM@1 and its families average
    for inst in instructions:
        text = preds[inst.id].text or ""
        match, refined_match = exact_match(text, inst.answers)
        rows.append({"id": inst.id, "scene": inst.scene_id, "family": scanqa_family(inst.text), "EM@1": float(match),
                     "EM@1-refined": float(refined_match), "EM@1-raw": float(raw_exact_match(text, inst.answers)),
                     **caption_scores[inst.id]})
    # BLEU-4 and METEOR are corpus-level statistics (not the mean of the per-question values), CIDEr and ROUGE-L means.
    metrics = {name: captions.corpus[name] for name in CAPTION_METRICS if name in captions.corpus}
    metrics.update({k: float(np.mean([r[k] for r in rows])) for k in ("EM@1", "EM@1-refined", "EM@1-raw")})
    families = np.asarray([r["family"] for r in rows])
    em_arr = np.asarray([r["EM@1"] for r in rows])
    subgroups = {f: {"EM@1": mean_or_none(em_arr[families == f]), "count": int((families == f).sum())}
                 for f in SCANQA_FAMILIES if (families == f).any()}
    return {"metrics": metrics, "subgroups": subgroups, "count": len(instructions), "tokenize": preset,
            "per_sample": rows}


def _score(inputs: ScoreInputs) -> dict[str, Any]:
    # Tokenised as coco-caption, as the ScanQA evaluation does.
    preset = inputs.tokenize or "coco_ptb"
    return score_scanqa(inputs.instructions, inputs.predictions, inputs.gt, preset, inputs.meteor)


def _tokenize_note(result: Mapping[str, Any]) -> str:
    return f"ScanQA captions tokenised with '{result.get('tokenize')}'." if result.get("tokenize") else ""


SPEC = register(BenchmarkSpec(
    SCANQA, _score,
    tables=(
        TableColumns(QA, (Column("ScanQA C", "CIDEr", paper="101.9"), Column("B-4", "BLEU-4", paper="15.8"),
                          Column("M", "METEOR", paper="18.3"), Column("R", "ROUGE-L", paper="49.5"),
                          Column("EM@1", "EM@1", paper="27.6")), note=_tokenize_note),
        TableColumns(JOINT, (Column("ScanQA", (*CAPTION_METRICS, "EM@1"), paper="45.7"),), position=1),
    ),
    ablation_columns=(Column("QA EM", "EM@1"), Column("count", "EM@1", "count"), Column("colour", "EM@1", "colour"),
                      Column("exist", "EM@1", "existence"), Column("rel-pos", "EM@1", "relative_position")),
))
