import numpy as np
import pytest

from vidllm.eval.grounding import (
    box_iou,
    box_iou_matrix,
    is_view_dependent,
    multi3drefer_f1,
    select_gt_instance,
)


def test_half_overlap_iou_is_one_third():
    a = [0, 0, 0, 2, 2, 2]
    b = [1, 0, 0, 2, 2, 2]  # shifted by half its width along x
    assert box_iou(a, b) == pytest.approx(1 / 3)
    assert box_iou(a, a) == pytest.approx(1.0)
    assert box_iou(a, [10, 0, 0, 1, 1, 1]) == 0.0
    assert box_iou(a, [0, 0, 0, 1, 1, 1]) == pytest.approx(1 / 8)  # nested


def test_iou_matrix_shapes_and_degenerate_boxes():
    assert box_iou_matrix(np.zeros((0, 6)), np.ones((3, 6))).shape == (0, 3)
    zero_volume = [0, 0, 0, 0, 0, 0]
    assert box_iou(zero_volume, zero_volume) == 0.0


def test_multi3drefer_f1_cases():
    gt = np.array([[0, 0, 0, 1, 1, 1], [5, 0, 0, 1, 1, 1]], float)
    assert multi3drefer_f1(gt, gt, 0.5) == 1.0
    assert multi3drefer_f1(gt[:1], gt, 0.5) == pytest.approx(2 * 1 / 3)
    # Hungarian matching: two predictions on the same object count once.
    assert multi3drefer_f1(np.stack([gt[0], gt[0]]), gt, 0.5) == pytest.approx(2 * 1 / 4)
    # Zero-target query: correct only when nothing is predicted.
    assert multi3drefer_f1(np.zeros((0, 6)), np.zeros((0, 6)), 0.25) == 1.0
    assert multi3drefer_f1(gt[:1], np.zeros((0, 6)), 0.25) == 0.0
    assert multi3drefer_f1(np.zeros((0, 6)), gt, 0.25) == 0.0
    # Half overlap (IoU 1/3) passes 0.25 but not 0.5.
    shifted = gt[:1] + np.array([0.5, 0, 0, 0, 0, 0])
    assert multi3drefer_f1(shifted, gt[:1], 0.25) == 1.0
    assert multi3drefer_f1(shifted, gt[:1], 0.5) == 0.0


def test_referit3d_helpers():
    scene = np.array([[0, 0, 0, 1, 1, 1], [3, 0, 0, 1, 1, 1]], float)
    assert select_gt_instance(np.array([2.9, 0, 0, 1, 1, 1]), scene) == 1
    assert select_gt_instance(np.array([9, 9, 9, 1, 1, 1]), scene) is None
    assert is_view_dependent("the chair on the left of the bed")
    assert is_view_dependent("Facing the window, pick the lamp.")
    assert not is_view_dependent("the largest chair")
