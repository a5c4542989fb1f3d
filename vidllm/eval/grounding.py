"""3D grounding metrics on axis-aligned boxes `[cx, cy, cz, dx, dy, dz]` (metres, ScanNet axis-aligned world).

- ScanRefer Acc@k: IoU(pred, GT) ≥ k, overall / unique / multiple.
- Multi3DRefer F1@k (M3DRef-CLIP): Hungarian matching on −IoU, TP = matched pairs with IoU ≥ k,
  F1 = 2·TP / (P + G); zero-target queries score 1 iff nothing is predicted.
- Nr3D/Sr3D (ReferIt3D): the prediction selects one of the scene's GT instances (the GT box it
  overlaps most); accuracy = selected == target. Subsets: easy (≤ 1 same-class distractor) / hard,
  view-dependent / view-independent.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

# ReferIt3D's view-dependent vocabulary (analysis/deepnet_predictions.py).
VIEW_DEPENDENT_WORDS = frozenset(
    {"front", "behind", "back", "right", "left", "facing", "leftmost", "rightmost", "looking", "across"}
)


def as_boxes(boxes: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """Any list of boxes → float64 `[N, 6]` (an empty list gives `[0, 6]`)."""
    arr = np.asarray(boxes, dtype=np.float64)
    return arr.reshape(-1, 6)


def box_iou_matrix(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """Axis-aligned 3D IoU of every pair: `[N, 6]`, `[M, 6]` → `[N, M]`."""
    a, b = as_boxes(boxes_a), as_boxes(boxes_b)
    a_min, a_max = a[:, None, :3] - a[:, None, 3:] / 2, a[:, None, :3] + a[:, None, 3:] / 2
    b_min, b_max = b[None, :, :3] - b[None, :, 3:] / 2, b[None, :, :3] + b[None, :, 3:] / 2
    overlap = np.clip(np.minimum(a_max, b_max) - np.maximum(a_min, b_min), 0.0, None).prod(-1)
    volume_a = np.clip(a[:, 3:], 0.0, None).prod(-1)[:, None]
    volume_b = np.clip(b[:, 3:], 0.0, None).prod(-1)[None, :]
    union = volume_a + volume_b - overlap
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, overlap / union, 0.0)
    return iou


def box_iou(box_a: Sequence[float], box_b: Sequence[float]) -> float:
    return float(box_iou_matrix(as_boxes(box_a), as_boxes(box_b))[0, 0])


def multi3drefer_f1(pred_boxes: np.ndarray, gt_boxes: np.ndarray, threshold: float) -> float:
    """F1 of one query. Zero-target queries (no GT box): 1 iff there is no predicted box."""
    pred, gt = as_boxes(pred_boxes), as_boxes(gt_boxes)
    if len(gt) == 0:
        return 1.0 if len(pred) == 0 else 0.0
    if len(pred) == 0:
        return 0.0
    iou = box_iou_matrix(pred, gt)
    rows, cols = linear_sum_assignment(-iou)
    true_positives = int((iou[rows, cols] >= threshold).sum())
    return 2.0 * true_positives / (len(pred) + len(gt))


def is_view_dependent(text: str) -> bool:
    words = {w.strip(".,;:!?\"'()") for w in text.lower().split()}
    return not VIEW_DEPENDENT_WORDS.isdisjoint(words)


def select_gt_instance(pred_box: np.ndarray, scene_boxes: np.ndarray) -> int | None:
    """Index of the scene GT box the prediction overlaps most (None if it overlaps none)."""
    if len(scene_boxes) == 0:
        return None
    iou = box_iou_matrix(as_boxes(pred_box), scene_boxes)[0]
    best = int(iou.argmax())
    return best if iou[best] > 0 else None


def mean_or_none(values: Sequence[float] | np.ndarray) -> float | None:
    """Mean of a subgroup; None (JSON null) for an empty subgroup rather than NaN."""
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()) if arr.size else None
