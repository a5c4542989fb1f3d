"""Scan2Cap: dense captioning of a given object (its box is in the prompt at `<obj>`), captioning
metrics gated by box IoU (m@k). Its records are built from the ScanRefer file, one per object.

`vidllm predict` follows the published protocol: per ground-truth object it captions the proposal
overlapping it most and writes that proposal as the line's box, so the gate measures it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from vidllm.data.scannet.annotations import SCAN2CAP, Instruction
from vidllm.eval.benchmarks.ground_truth import SceneBoxes, load_proposals, require_answers, target_boxes
from vidllm.eval.benchmarks.registry import BenchmarkSpec, ScoreInputs, register
from vidllm.eval.benchmarks.tables import JOINT, Column, Table, TableColumns, fmt
from vidllm.eval.captions import CAPTION_METRICS, TokenizePreset, score_captions

if TYPE_CHECKING:
    from vidllm.eval.predictions import Prediction



def score_scan2cap(
    instructions: Sequence[Instruction], preds: Mapping[str, Prediction], boxes: SceneBoxes, boxes_source: str,
    proposals: Mapping[str, np.ndarray] | None = None, iou_threshold: float = 0.5,
    preset: TokenizePreset = "scan2cap", meteor: bool = True,
) -> dict[str, Any]:
    """m@k = (1/N) Σ_i m_i · 1[IoU(b̂_i, b_i) ≥ k] over all GT objects (the paper's definition).

    b̂_i is the best-overlapping supplied proposal when `proposals` is given (the peers' Mask3D
    protocol), else the prediction's own first box (no box = gate fails).
    """
    from vidllm.eval.grounding import box_iou_matrix

    require_answers(instructions, boxes_source)
    captions = score_captions({i.id: preds[i.id].text or "" for i in instructions},
                              {i.id: i.answers for i in instructions}, preset=preset, meteor=meteor)
    caption_scores = captions.by_id()
    suffix = f"@{iou_threshold:g}"
    gated_names = [name for name in CAPTION_METRICS if name in captions.per_sample]
    rows = []  # one per object: the per-sample output, and what m@k and box_recall average
    for inst in instructions:
        gt = target_boxes(boxes, inst, boxes_source)[:1]
        if proposals is not None:
            candidates = proposals.get(inst.scene_id, np.zeros((0, 6)))
        else:
            candidates = preds[inst.id].boxes[:1]
        best = float(box_iou_matrix(candidates, gt).max()) if len(candidates) else 0.0
        passed = best >= iou_threshold
        own = caption_scores[inst.id]  # ungated
        rows.append({"id": inst.id, "scene": inst.scene_id, "IoU": best, "gate": passed, **own,
                     **{name + suffix: own[name] * passed for name in gated_names}})
    gate_arr = np.asarray([r["gate"] for r in rows], float)
    metrics = {name + suffix: float(np.mean([r[name + suffix] for r in rows])) for name in gated_names}
    ungated = dict(captions.corpus)
    return {
        "metrics": metrics,
        "subgroups": {"ungated_corpus": ungated},
        "count": len(instructions),
        "box_recall": float(gate_arr.mean()),
        "gate": "proposals" if proposals is not None else "predicted_box",
        "tokenize": preset,
        "per_sample": rows,
    }


def _score(inputs: ScoreInputs) -> dict[str, Any]:
    proposals = (load_proposals(inputs.proposals, [inst.scene_id for inst in inputs.instructions])
                 if inputs.proposals is not None else None)
    # Tokenised as its peers do (sos … eos).
    result = score_scan2cap(inputs.instructions, inputs.predictions, inputs.boxes, inputs.boxes_source, proposals,
                            inputs.iou_threshold, inputs.tokenize or "scan2cap", inputs.meteor)
    own = "the prediction's own box"
    if inputs.meta.get("scan2cap_prompt_box"):
        own += f", the one captioned ({inputs.meta['scan2cap_prompt_box']})"
    result["gate"] = f"proposals in {inputs.proposals}" if inputs.proposals is not None else own
    return result


def _gate_note(result: Mapping[str, Any]) -> str:
    return f"IoU gate against {result.get('gate', '—')}; boxes passing the gate: {fmt(result.get('box_recall'))}%."


CAPTIONING = Table("Table 2 — 3D dense captioning (Scan2Cap)", number=2)

SPEC = register(BenchmarkSpec(
    SCAN2CAP, _score,
    tables=(
        TableColumns(CAPTIONING, (Column("C@0.5", "CIDEr@0.5", paper="81.5"),
                                  Column("B-4@0.5", "BLEU-4@0.5", paper="40.9"),
                                  Column("M@0.5", "METEOR@0.5", paper="28.7"),
                                  Column("R@0.5", "ROUGE-L@0.5", paper="61.8")), note=_gate_note),
        TableColumns(JOINT, (Column("Scan2Cap", tuple(f"{m}@0.5" for m in CAPTION_METRICS), paper="53.2"),),
                     position=2),
    ),
    ablation_columns=(Column("Cap CIDEr", "CIDEr@0.5"),),
))
