import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from vidllm.eval.geometry_metrics import (
    backproject_depth,
    depth_metrics,
    point_cloud_metrics,
    pose_auc,
    pose_errors,
    pose_metrics,
    voxel_down_sample,
)


def _random_trajectory(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    poses = np.tile(np.eye(4), (n, 1, 1))
    poses[:, :3, :3] = Rotation.random(n, random_state=seed).as_matrix()
    poses[:, :3, 3] = rng.uniform(-3, 3, size=(n, 3))
    return poses


def test_depth_metrics_known_values():
    gt = np.full((1, 4, 4), 2.0)
    pred = np.full((1, 4, 4), 2.2)  # 10% too far everywhere
    m = depth_metrics(pred, gt)
    assert m["abs_rel"] == pytest.approx(0.1)
    assert m["rmse"] == pytest.approx(0.2)
    assert m["log10"] == pytest.approx(np.log10(1.1))
    assert m["delta1"] == 1.0
    pred_far = np.full((1, 4, 4), 3.0)  # ratio 1.5 > 1.25 everywhere
    assert depth_metrics(pred_far, gt)["delta1"] == 0.0


def test_depth_mask_ignores_invalid_and_far_pixels_and_resizes_prediction():
    gt = np.array([[[0.0, 2.0], [12.0, 4.0]]])  # 0 = invalid, 12 m beyond the 10 m cap
    pred = np.array([[[9.0, 2.0], [1.0, 4.0]]])
    m = depth_metrics(pred, gt)
    assert m["abs_rel"] == 0.0 and m["delta1"] == 1.0 and m["num_images"] == 1
    big_pred = np.kron(pred, np.ones((1, 3, 3)))  # [1,6,6] nearest-resized back to [1,2,2]
    assert depth_metrics(big_pred, gt)["rmse"] == 0.0


def test_perfect_poses_give_auc_one_and_are_invariant_to_global_rigid_transform():
    gt = _random_trajectory(8)
    m = pose_metrics(gt, gt)
    assert m["AUC@30"] == pytest.approx(1.0) and m["RRA@15"] == 1.0 and m["RTA@15"] == 1.0
    assert m["num_pairs"] == 28

    noisy = gt.copy()
    noisy[:, :3, 3] += np.random.default_rng(1).normal(0, 0.3, size=(8, 3))
    base = pose_metrics(noisy, gt)
    transform = np.eye(4)
    transform[:3, :3] = Rotation.from_euler("xyz", [30, -70, 110], degrees=True).as_matrix()
    transform[:3, 3] = [5.0, -2.0, 1.0]
    moved = pose_metrics(transform @ noisy, gt)
    assert moved == pytest.approx(base)
    # Translation error is a direction angle, so a global scale does not change it either.
    scaled = noisy.copy()
    scaled[:, :3, 3] *= 3.0
    assert pose_metrics(scaled, gt) == pytest.approx(base)


def test_pose_errors_known_rotation():
    gt = np.tile(np.eye(4), (2, 1, 1))
    gt[1, :3, 3] = [1.0, 0.0, 0.0]
    pred = gt.copy()
    pred[1, :3, :3] = Rotation.from_euler("z", 20.5, degrees=True).as_matrix()
    rot_err, trans_err = pose_errors(pred, gt)
    assert rot_err[0] == pytest.approx(20.5)
    # AUC: the pair counts for thresholds 21..30 → 10/30.
    assert pose_auc(rot_err, np.zeros_like(rot_err)) == pytest.approx(10 / 30)


def test_translation_error_is_a_sign_agnostic_direction_angle_and_auc_takes_the_max():
    gt = np.tile(np.eye(4), (2, 1, 1))
    gt[1, :3, 3] = [2.0, 0.0, 0.0]
    sideways, backwards = gt.copy(), gt.copy()
    sideways[1, :3, 3] = [0.0, 0.5, 0.0]
    backwards[1, :3, 3] = [-1.0, 0.0, 0.0]
    rot_err, trans_err = pose_errors(sideways, gt)
    assert rot_err[0] == pytest.approx(0.0, abs=1e-6) and trans_err[0] == pytest.approx(90.0)
    assert pose_errors(backwards, gt)[1][0] == pytest.approx(0.0, abs=1e-6)
    m = pose_metrics(sideways, gt)
    assert m["RRA@15"] == 1.0 and m["RTA@15"] == 0.0 and m["AUC@30"] == 0.0  # max(rot, trans), not min


def test_point_cloud_metrics_known_offset():
    rng = np.random.default_rng(0)
    gt = rng.uniform(0, 2, size=(20000, 3))
    m_same = point_cloud_metrics(gt, gt)
    assert m_same["Acc"] == 0.0 and m_same["F-score"] == 1.0
    far = gt + np.array([1.0, 0.0, 0.0]) * 10  # nowhere near
    m_far = point_cloud_metrics(far, gt)
    assert m_far["Precision"] == 0.0 and m_far["Recall"] == 0.0 and m_far["F-score"] == 0.0
    # Half of the prediction is correct, the other half far away → precision 1/2, recall 1.
    grid = np.stack(np.meshgrid(*[np.arange(0, 1, 0.1)] * 3, indexing="ij"), -1).reshape(-1, 3) + 0.05
    half = np.concatenate([grid, grid + 100.0])
    m_half = point_cloud_metrics(half, grid)
    assert m_half["Precision"] == pytest.approx(0.5) and m_half["Recall"] == 1.0
    assert m_half["F-score"] == pytest.approx(2 * 0.5 / 1.5)


def test_voxel_down_sample_averages_per_voxel():
    pts = np.array([[0.001, 0.001, 0.001], [0.011, 0.011, 0.011], [0.5, 0.5, 0.5]])
    out = voxel_down_sample(pts, 0.02)
    assert len(out) == 2
    assert np.allclose(sorted(out[:, 0]), [0.006, 0.5])


def test_backproject_depth_centre_pixel():
    k = np.array([[100.0, 0, 1.0], [0, 100.0, 1.0], [0, 0, 1]])
    depth = np.zeros((3, 3))
    depth[1, 1] = 2.0
    pose = np.eye(4)
    pose[:3, 3] = [1, 2, 3]
    assert np.allclose(backproject_depth(depth, k, pose), [[1, 2, 5]])
