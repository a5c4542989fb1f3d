import math

import pytest
import torch

from vidllm import geometry as geo


def _random_rotations(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, 4, generator=g, dtype=torch.float64)
    return geo.quat_to_mat(q)


def _look_at_extrinsics(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    rot = _random_rotations(n, seed)
    trans = torch.randn(n, 3, 1, generator=g, dtype=torch.float64)
    return torch.cat([rot, trans], dim=-1)


def test_quat_mat_round_trip_including_180_degree_rotations():
    rot = _random_rotations(200)
    # Near-π rotations stress the non-w pivots.
    signs = torch.tensor([[1.0, -1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, -1.0, 1.0]], dtype=torch.float64)
    flips = torch.diag_embed(signs)
    rot = torch.cat([rot, flips, torch.eye(3, dtype=torch.float64)[None]])
    quat = geo.mat_to_quat(rot)
    assert torch.all(quat[:, 3] >= 0)
    assert torch.allclose(quat.norm(dim=-1), torch.ones(len(quat), dtype=torch.float64))
    assert torch.allclose(geo.quat_to_mat(quat), rot, atol=1e-10)


def test_quaternion_is_xyzw():
    # 90° about z: q = (0, 0, sin 45°, cos 45°) in XYZW.
    rot = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    quat = geo.mat_to_quat(rot)
    s = math.sqrt(0.5)
    assert torch.allclose(quat, torch.tensor([0.0, 0.0, s, s]), atol=1e-6)


def test_pose_encoding_round_trip():
    extr = _look_at_extrinsics(6).reshape(2, 3, 3, 4).float()
    height, width = 280, 378
    intr = torch.zeros(2, 3, 3, 3)
    intr[..., 0, 0] = torch.tensor([300.0, 310.0, 320.0])
    intr[..., 1, 1] = torch.tensor([290.0, 305.0, 330.0])
    intr[..., 0, 2], intr[..., 1, 2], intr[..., 2, 2] = width / 2, height / 2, 1.0
    enc = geo.extri_intri_to_pose_encoding(extr, intr, (height, width))
    assert enc.shape == (2, 3, 9)
    extr2, intr2 = geo.pose_encoding_to_extri_intri(enc, (height, width))
    assert (extr2 - extr).abs().max() <= 1e-5
    assert ((intr2 - intr).abs() / intr.abs().clamp_min(1)).max() <= 1e-5
    enc2 = geo.extri_intri_to_pose_encoding(extr2, intr2, (height, width))
    assert (enc2 - enc).abs().max() <= 1e-5
    # fov_h = 2·atan(H/2 / fy)
    assert math.isclose(enc[0, 0, 7].item(), 2 * math.atan(140 / 290.0), rel_tol=1e-6)


def test_untrained_fov_decodes_to_finite_focal_lengths():
    # An untrained camera head's ReLU gives FoV 0 (or a tiny value): focal lengths stay finite.
    enc = torch.zeros(1, 2, 9)
    enc[..., 6] = 1.0  # identity quaternion
    enc[0, 1, 7:] = torch.tensor([1e-6, 4.0])
    _, intr = geo.pose_encoding_to_extri_intri(enc, (56, 70))
    assert torch.isfinite(intr).all()
    narrowest, widest = 1 / math.tan(geo.MIN_FOV / 2), 1 / math.tan((math.pi - geo.MIN_FOV) / 2)
    assert torch.allclose(intr[0, :, 1, 1], torch.tensor([28 * narrowest, 28 * narrowest]))  # fov_h 0, 1e-6
    assert torch.allclose(intr[0, :, 0, 0], torch.tensor([35 * narrowest, 35 * widest]))  # fov_w 0, 4 rad


def test_se3_inverse():
    extr = _look_at_extrinsics(5)
    inv = geo.se3_inverse(extr)
    eye = geo.to_homogeneous(extr) @ inv
    assert torch.allclose(eye, torch.eye(4, dtype=torch.float64).expand(5, 4, 4), atol=1e-12)
    assert torch.allclose(geo.se3_inverse(geo.to_homogeneous(extr)), inv)


def test_extrinsics_relative_to_first_makes_first_identity():
    c2w = geo.se3_inverse(_look_at_extrinsics(4))
    extr = geo.extrinsics_relative_to_first(c2w)
    assert torch.allclose(extr[0], torch.eye(4, dtype=torch.float64)[:3], atol=1e-12)
    # A world point seen by camera 2 maps consistently: cam-2 coords are identical either way.
    p_world = torch.tensor([0.3, -0.2, 2.0], dtype=torch.float64)
    p_cam0 = geo.se3_inverse(c2w[0])[:3, :3] @ p_world + geo.se3_inverse(c2w[0])[:3, 3]
    direct = geo.se3_inverse(c2w[2])[:3, :3] @ p_world + geo.se3_inverse(c2w[2])[:3, 3]
    assert torch.allclose(extr[2, :, :3] @ p_cam0 + extr[2, :, 3], direct, atol=1e-12)


def test_unproject_depth_hand_computed():
    depth = torch.full((1, 1, 4, 6), 2.0)
    intr = torch.tensor([[[[10.0, 0, 3.0], [0, 20.0, 2.0], [0, 0, 1]]]])
    extr = torch.eye(4)[:3].reshape(1, 1, 3, 4).clone()
    extr[..., 0, 3] = 1.0  # camera-from-world translation: x_cam = x_world + 1
    pts = geo.unproject_depth(depth, extr, intr)
    assert pts.shape == (1, 1, 4, 6, 3)
    # pixel (u=5, v=0): x_cam = (5-3)/10·2 = 0.4, y_cam = (0-2)/20·2 = -0.2, z = 2 → world x = 0.4 - 1
    assert torch.allclose(pts[0, 0, 0, 5], torch.tensor([-0.6, -0.2, 2.0]))


def test_patch_centers_to_world_eq3_hand_computed():
    # 2x2 patches of size 4 on an 8x8 image; camera rotated 90° about y and translated.
    depth = torch.full((1, 1, 8, 8), 3.0)
    depth[0, 0, 4:, 4:] = 5.0
    depth[0, 0, 4, 4] = 0.0  # an invalid pixel: the median ignores it
    intr = torch.tensor([[[[4.0, 0, 4.0], [0, 4.0, 4.0], [0, 0, 1]]]])
    rot_y = torch.tensor([[0.0, 0, 1], [0, 1, 0], [-1, 0, 0]])  # camera-from-world rotation
    t = torch.tensor([0.5, 0.0, -1.0])
    extr = torch.cat([rot_y, t[:, None]], dim=1).reshape(1, 1, 3, 4)
    pts = geo.patch_centers_to_world(depth, extr, intr, patch_size=4)
    assert pts.shape == (1, 1, 4, 3)
    # Patch (1,1): centre pixel u = v = 1.5·4 − 0.5 = 5.5, depth 5 → x_cam = (5.5−4)/4·5 = 1.875.
    x_cam = torch.tensor([1.875, 1.875, 5.0])
    expected = rot_y.T @ (x_cam - t)
    assert torch.allclose(pts[0, 0, 3], expected, atol=1e-6)
    # Patch (0,0): u = v = 1.5, depth 3 → x_cam = (1.5−4)/4·3 = −1.875.
    expected0 = rot_y.T @ (torch.tensor([-1.875, -1.875, 3.0]) - t)
    assert torch.allclose(pts[0, 0, 0], expected0, atol=1e-6)
    # An all-invalid patch lands on the camera centre (depth 0).
    depth[0, 0, :4, :4] = 0.0
    assert geo.patch_depth(depth, 4)[0, 0, 0] == 0
    centre = -rot_y.T @ t
    assert torch.allclose(geo.patch_centers_to_world(depth, extr, intr, 4)[0, 0, 0], centre, atol=1e-6)


def test_umeyama_recovers_similarity():
    g = torch.Generator().manual_seed(1)
    src = torch.randn(50, 3, generator=g, dtype=torch.float64)
    rot = _random_rotations(1, seed=3)[0]
    dst = 2.5 * src @ rot.T + torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    s, r, t = geo.umeyama_sim3(src, dst)
    assert math.isclose(s.item(), 2.5, rel_tol=1e-9)
    assert torch.allclose(r, rot, atol=1e-9)
    assert torch.allclose(t, torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64), atol=1e-9)
    s1, r1, _ = geo.umeyama_sim3(src, src @ rot.T, with_scale=False)
    assert s1.item() == 1.0 and torch.allclose(r1, rot, atol=1e-9)


def test_weighted_lstsq_scale_closed_form():
    rel = torch.tensor([1.0, 2.0, 3.0])
    metric = torch.tensor([2.0, 4.0, 9.0])
    w = torch.tensor([1.0, 1.0, 0.0])  # the third (off-line) point has no weight
    assert math.isclose(geo.weighted_lstsq_scale(rel, metric, w).item(), 2.0, rel_tol=1e-6)
    w = torch.ones(3)
    expected = (2 + 8 + 27) / (1 + 4 + 9)
    assert math.isclose(geo.weighted_lstsq_scale(rel, metric, w).item(), expected, rel_tol=1e-6)


def test_align_scale_recovers_known_scale_with_outliers():
    g = torch.Generator().manual_seed(0)
    batch, frames, h, w = 2, 24, 32, 32
    true_scale = torch.tensor([3.7, 0.42])
    rel = torch.rand(batch, frames, h, w, generator=g) * 4 + 0.5
    metric = rel * true_scale.view(-1, 1, 1, 1) * (1 + 0.01 * torch.randn(batch, frames, h, w, generator=g))
    conf = 1 + torch.rand(batch, frames, h, w, generator=g) * 5
    # 10% gross outliers in every image, a few images entirely corrupted, invalid pixels.
    outlier = torch.rand(batch, frames, h, w, generator=g) < 0.10
    metric = torch.where(outlier, metric * 4 + 7, metric)
    metric[:, :4] = torch.rand(batch, 4, h, w, generator=g) * 50
    metric[:, :, :3] = 0.0
    rel[:, :, -2:] = float("nan")
    scale = geo.align_scale(rel, metric, conf, images_per_scene=16,
                            generators=[torch.Generator().manual_seed(b) for b in range(batch)])
    assert scale.shape == (2,)
    assert torch.all((scale / true_scale - 1).abs() <= 0.01), scale


def test_align_scale_sampling_is_seeded_and_handles_empty_scene():
    g = torch.Generator().manual_seed(0)
    rel = torch.rand(1, 40, 8, 8, generator=g) + 0.1
    metric = rel * (1 + torch.rand(1, 40, 1, 1, generator=g))  # per-image scales differ
    conf = torch.ones_like(rel)
    a = geo.align_scale(rel, metric, conf, 16, [torch.Generator().manual_seed(5)])
    b = geo.align_scale(rel, metric, conf, 16, [torch.Generator().manual_seed(5)])
    c = geo.align_scale(rel, metric, conf, 16, [torch.Generator().manual_seed(6)])
    assert a.item() == b.item() and a.item() != c.item()
    # Evaluation (no generators): evenly spaced images, the same on every call.
    assert geo.alignment_frames(40, 16) == torch.linspace(0, 39, 16).round().long().tolist()
    assert geo.align_scale(rel, metric, conf, 16).item() == geo.align_scale(rel, metric, conf, 16).item()
    empty = geo.align_scale(rel, torch.zeros_like(rel), conf, 16)
    assert empty.item() == 1.0
    with pytest.raises(ValueError, match="2 generators for 1 scenes"):
        geo.align_scale(rel, metric, conf, 16, [torch.Generator(), torch.Generator()])


def test_align_scale_takes_the_true_median_of_per_image_scales():
    # Four images with exact scales 1, 2, 3, 10: the true median is 2.5 (torch.median gives 2).
    rel = torch.ones(1, 4, 4, 4)
    metric = torch.tensor([1.0, 2.0, 3.0, 10.0]).view(1, 4, 1, 1).expand(1, 4, 4, 4).clone()
    scale = geo.align_scale(rel, metric, torch.ones_like(rel), images_per_scene=16)
    assert scale.item() == pytest.approx(2.5)
    assert geo.true_median(torch.tensor([3.0, 1.0, 2.0])).item() == 2.0


def test_alignment_frames_draws_per_scene_without_replacement():
    picked = geo.alignment_frames(32, 16, torch.Generator().manual_seed(0))
    assert len(set(picked)) == 16 and all(0 <= i < 32 for i in picked)
    assert picked != geo.alignment_frames(32, 16, torch.Generator().manual_seed(1))
    assert geo.alignment_frames(8, 16, torch.Generator().manual_seed(0)) == list(range(8))


def test_scene_frame_round_trip_to_scannet_world():
    cam0_to_world = geo.se3_inverse(_look_at_extrinsics(1, seed=7))[0]
    align = torch.eye(4, dtype=torch.float64)
    angle = 0.3
    align[:2, :2] = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    align[:3, 3] = torch.tensor([-1.0, 2.0, 0.0])
    rot = geo.first_camera_to_gravity(cam0_to_world, align)
    centre = geo.first_camera_center_aligned(cam0_to_world, align)
    assert torch.allclose(rot @ rot.T, torch.eye(3, dtype=torch.float64), atol=1e-12)
    p_cam0 = torch.tensor([[0.2, -0.4, 3.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    p_aligned_gt = (align @ cam0_to_world @ torch.cat([p_cam0, torch.ones(2, 1, dtype=torch.float64)], 1).T).T[:, :3]
    p_scene = p_cam0 @ rot.T
    assert torch.allclose(geo.scene_to_scannet_world(p_scene, centre), p_aligned_gt, atol=1e-12)
    assert torch.allclose(geo.scannet_world_to_scene(p_aligned_gt, centre), p_scene, atol=1e-12)
