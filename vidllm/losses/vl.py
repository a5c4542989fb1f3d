"""3D vision-language losses (L_VL of eq. 8): LM cross-entropy, box regression, matching.

`VidLLM.forward` already computes the terms that need its internals — `loss_lm` (next-token
CE over answer tokens; it also trains the zero-target answer, "none" without `<ground>`),
`loss_box` (L1 between every `<ground>`'s box and the target it is assigned, see
`vidllm.models.grounding.assign_targets`) and `loss_match` (cross-entropy of that target's
proposal) — so they are taken from its outputs, never recomputed. This module adds the one term
the model does not compute, an axis-aligned 3D GIoU on the same assigned pairs (as in DETR-style
box regression: L1 fixes the coordinates, GIoU the overlap independent of object size), and
weights everything.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class VLLossWeights:
    lm: float = 1.0
    box: float = 1.0
    giou: float = 1.0
    match: float = 1.0
    refine: float = 1.0


def box_corners(boxes: Tensor) -> tuple[Tensor, Tensor]:
    """Boxes `[..., 6]` (cx, cy, cz, dx, dy, dz) → (min corner `[..., 3]`, max corner `[..., 3]`)."""
    half = 0.5 * boxes[..., 3:].clamp_min(0)
    return boxes[..., :3] - half, boxes[..., :3] + half


def box_iou_3d(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Axis-aligned 3D IoU and GIoU of paired boxes `[..., 6]` → (iou `[...]`, giou `[...]`).

    GIoU = IoU − (|C| − |A ∪ B|) / |C| with C the smallest box enclosing both (in [−1, 1]).
    """
    p_lo, p_hi = box_corners(pred)
    t_lo, t_hi = box_corners(target)
    inter = (torch.minimum(p_hi, t_hi) - torch.maximum(p_lo, t_lo)).clamp_min(0).prod(-1)
    vol_p, vol_t = (p_hi - p_lo).prod(-1), (t_hi - t_lo).prod(-1)
    union = vol_p + vol_t - inter
    iou = inter / union.clamp_min(1e-9)
    hull = (torch.maximum(p_hi, t_hi) - torch.minimum(p_lo, t_lo)).prod(-1)
    giou = iou - (hull - union) / hull.clamp_min(1e-9)
    return iou, giou


def giou_3d_loss(pred: Tensor, target: Tensor) -> Tensor:
    """mean(1 − GIoU) over paired boxes `[N, 6]`; 0 for identical boxes, up to 2."""
    return (1.0 - box_iou_3d(pred, target.to(pred.dtype))[1]).mean()


def vl_loss(outputs: dict, weights: VLLossWeights | None = None) -> dict[str, Tensor]:
    """Weighted L_VL from a `VidLLM.forward` result.

    Args:
        outputs: the model's dict; uses loss_lm, loss_box, loss_match when present, and for the
            GIoU term box_pred `[B, G, 6]`, assigned_targets `[B, G, 6]` and assignment `[B, G]`
            (−1 = a `<ground>` slot without target; no assignment, e.g. no box targets given,
            skips GIoU).
    Returns:
        dict of scalars: total and each present term (lm, box, giou, match, refine); absent terms are
        omitted. total is 0 (no graph) if no term is present.
    """
    weights = weights or VLLossWeights()
    terms: dict[str, Tensor] = {}
    for key, name in (("loss_lm", "lm"), ("loss_box", "box"), ("loss_match", "match"), ("loss_refine", "refine")):
        if outputs.get(key) is not None:
            terms[name] = outputs[key]
    assignment = outputs.get("assignment")
    if assignment is not None and weights.giou > 0 and bool((assignment >= 0).any()):
        assigned = assignment >= 0
        terms["giou"] = giou_3d_loss(outputs["box_pred"][assigned], outputs["assigned_targets"][assigned])
    if not terms:
        return {"total": torch.zeros(())}
    total = sum(getattr(weights, name) * value for name, value in terms.items())
    return {"total": total, **terms}
