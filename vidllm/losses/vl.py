"""3D vision-language losses (L_VL of eq. 8) from `VidLLM.forward`'s predictions and the batch's targets.

Terms: `lm`, next-token cross-entropy over the supervised answer tokens (it also trains the
zero-target answer, "none" without `<ground>`); and per `<ground>` slot, against the target a
Hungarian matcher assigns it (`assign_targets`, DETR-style): `box` (L1 of the direct box),
`giou` (axis-aligned 3D GIoU on the same pairs: L1 fixes the coordinates, GIoU the overlap
independent of object size), `match` (cross-entropy of the target's proposal, or of the "not
among them" column) and `refine` (L1 of that proposal refined by the slot). The model never sees
the targets: the matcher and every comparison with a target live here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
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


def assignment_cost(pred: Tensor, targets: Tensor) -> Tensor:
    """Cost of supervising each predicted box with each target: pred `[..., G, 6]`, targets
    `[..., T, 6]` → `[..., G, T]` = L1 over centre and size (mean of the 6) + (1 − GIoU), the
    two box terms of the loss with unit weights."""
    pred, targets = pred[..., :, None, :].float(), targets[..., None, :, :].float()
    return (pred - targets).abs().mean(-1) + 1.0 - box_iou_3d(pred, targets)[1]


@torch.no_grad()
def assign_targets(pred: Tensor, pred_mask: Tensor, targets: Tensor, target_mask: Tensor) -> Tensor:
    """Which target each `<ground>` of a row is supervised with (box, GIoU, match, refine).

    The targets of a row are a set: no benchmark fixes an order for them in the text
    (Multi3DRefer lists object ids, "all the chairs" has no first chair), so the k-th `<ground>`
    is not tied to the k-th id. Instead each row's `<ground>`s and targets are matched
    one-to-one by the Hungarian algorithm on `assignment_cost` of the current predictions
    (DETR-style; computed without gradient). With fewer `<ground>`s than targets (an answer cut
    by the token budget) the extra targets go unsupervised, and vice versa; a single target
    goes to the single `<ground>`.

    Args:
        pred: `[B, G, 6]` predicted boxes, one per `<ground>` slot; pred_mask `[B, G]` real slots.
        targets: `[B, T, 6]` target boxes; target_mask `[B, T]` real targets.
    Returns:
        `[B, G]` long: index into the row's targets, −1 for a slot without a target.
    """
    from scipy.optimize import linear_sum_assignment  # scipy only when grounding losses run

    rows, slots = pred_mask.shape
    out = torch.full((rows, slots), -1, dtype=torch.long)
    if slots and targets.shape[1]:
        # Non-finite costs (a diverged prediction) would make the solver raise: make them maximal.
        cost = torch.nan_to_num(assignment_cost(pred, targets), nan=1e6, posinf=1e6, neginf=1e6).cpu()
        pred_mask, target_mask = pred_mask.cpu(), target_mask.cpu()
        for b in range(rows):
            g = pred_mask[b].nonzero().flatten()
            t = target_mask[b].nonzero().flatten()
            if len(g) and len(t):
                chosen_g, chosen_t = linear_sum_assignment(cost[b][g][:, t].numpy())
                out[b, g[chosen_g]] = t[chosen_t]
    return out.to(pred.device)


def grounding_terms(outputs: dict, targets: dict) -> dict[str, Tensor]:
    """Per-`<ground>`-slot terms against the assigned targets (B rows, G slots, T targets, M proposals).

    Args:
        outputs: `VidLLM.forward` result: ground_mask `[B, G]`, box_pred `[B, G, 6]`, and with
            proposals match_logits `[B, G, M + 1]` and refined_boxes `[B, G, M, 6]`.
        targets: box_targets `[B, T, 6]` (or `[B, 6]`: one per row), target_mask `[B, T]`
            (default all real), target_proposals `[B, T]` (optional: each target's index among
            its row's proposals, −1 = not among them).
    Returns:
        assignment `[B, G]` (target index, −1 = none), assigned `[B, G]` (bool), assigned_targets
        `[B, G, 6]` (box_pred's dtype) and box_l1 `[B, G]`; with match_logits and
        target_proposals also match_nll `[B, G]`; with refined_boxes and target_proposals also
        proposed `[B, G]` (assigned, and its target among the proposals) and refine_l1 `[B, G]`.
        Each slot's own term, 0 where it has none. Empty dict without box_targets.
    """
    box_targets, target_mask = targets.get("box_targets"), targets.get("target_mask")
    target_proposals = targets.get("target_proposals")
    if box_targets is None:
        if target_proposals is not None:
            raise ValueError("target_proposals needs box_targets: <ground>s are assigned to targets by their boxes")
        return {}
    box_pred, ground_mask = outputs["box_pred"], outputs["ground_mask"]
    box_targets = box_targets[:, None] if box_targets.dim() == 2 else box_targets
    if target_mask is None:
        target_mask = torch.ones(box_targets.shape[:2], dtype=torch.bool, device=box_targets.device)
    if box_targets.shape[1] == 0:  # no row has a target: one padding column keeps the gathers valid
        rows = box_targets.shape[0]
        box_targets, target_mask = box_targets.new_zeros(rows, 1, 6), target_mask.new_zeros(rows, 1)
        if target_proposals is not None:
            target_proposals = target_proposals.new_full((rows, 1), -1)
    assignment = assign_targets(box_pred.detach(), ground_mask, box_targets, target_mask.bool())
    assigned = assignment >= 0
    pick = assignment.clamp_min(0)
    assigned_targets = box_targets.gather(1, pick[..., None].expand(-1, -1, 6)).to(box_pred.dtype)
    box_l1 = torch.where(assigned, (box_pred - assigned_targets).abs().mean(-1), 0.0)
    out = {"assignment": assignment, "assigned": assigned, "assigned_targets": assigned_targets, "box_l1": box_l1}
    if target_proposals is None:
        return out
    target_index = target_proposals.gather(1, pick)  # [B, G] the assigned target's proposal, −1 = none
    match_logits = outputs.get("match_logits")
    if match_logits is not None:
        index = torch.where(target_index >= 0, target_index, match_logits.shape[-1] - 1)  # not proposed → last column
        log_probs = torch.log_softmax(match_logits.float(), dim=-1)
        out["match_nll"] = -log_probs.gather(-1, index[..., None]).squeeze(-1).masked_fill(~assigned, 0.0)
    refined_boxes = outputs.get("refined_boxes")
    if refined_boxes is not None:
        # The target's proposal, refined by the slot: trained on every assigned `<ground>` whose
        # target is among the proposals (jittered in training), as inference refines its choice.
        proposed = assigned & (target_index >= 0)
        out["proposed"] = proposed
        if proposed.any():  # else there may be no proposal to gather (M = 0)
            chosen = target_index.clamp_min(0)[..., None, None].expand(-1, -1, 1, 6)
            refined = refined_boxes.gather(2, chosen).squeeze(2)  # [B, G, 6]
            refine_l1 = (refined.float() - assigned_targets.float()).abs().mean(-1)
            out["refine_l1"] = torch.where(proposed, refine_l1, 0.0)
    return out


def vl_loss(outputs: dict, targets: dict | None = None, weights: VLLossWeights | None = None) -> dict[str, Tensor]:
    """Weighted L_VL of one batch.

    Args:
        outputs: `VidLLM.forward` result; uses supervised_logits `[N, V]` / supervised_targets
            `[N]` (the LM term, absent when N = 0 or no labels were given) and the `<ground>`
            predictions `grounding_terms` reads.
        targets: the batch's box_targets / target_mask / target_proposals (`grounding_terms`);
            without box_targets only the LM term is computed.
    Returns:
        dict of scalars: total and each present term — lm (mean CE over supervised tokens), box
        (mean L1 over assigned `<ground>`s), giou (mean 1 − GIoU over them), match (mean CE over
        them), refine (mean L1 over the proposed ones); absent terms are omitted. total is 0 (no
        graph) if no term is present.
    """
    weights = weights or VLLossWeights()
    terms: dict[str, Tensor] = {}
    logits = outputs.get("supervised_logits")
    if logits is not None and logits.shape[0]:
        terms["lm"] = F.cross_entropy(logits.float(), outputs["supervised_targets"])
    slots = grounding_terms(outputs, targets or {})
    if slots and bool(slots["assigned"].any()):
        assigned = slots["assigned"]
        terms["box"] = slots["box_l1"][assigned].mean()
        if "match_nll" in slots:
            terms["match"] = slots["match_nll"][assigned].mean()
        if "refine_l1" in slots:
            terms["refine"] = slots["refine_l1"][slots["proposed"]].mean()
        if weights.giou > 0:
            terms["giou"] = giou_3d_loss(outputs["box_pred"][assigned], slots["assigned_targets"][assigned])
    if not terms:
        return {"total": torch.zeros(())}
    total = sum(getattr(weights, name) * value for name, value in terms.items())
    return {"total": total, **terms}
