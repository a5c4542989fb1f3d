import math

import pytest
import torch

from vidllm.geometry import (
    extrinsics_relative_to_first,
    first_camera_to_gravity,
    pose_encoding_to_extri_intri,
    quat_to_mat,
)
from vidllm.losses.recon import camera_loss, depth_loss, point_loss, reconstruction_targets, scene_rotation_loss

H, W = 12, 16


def random_rotation(n: int, gen: torch.Generator) -> torch.Tensor:
    return quat_to_mat(torch.randn(n, 4, generator=gen, dtype=torch.float64))


def scannet_like(batch=2, frames=3, seed=0):
    """Random camera-to-world poses, pinhole intrinsics, positive depth with holes, axis alignments."""
    gen = torch.Generator().manual_seed(seed)
    c2w = torch.eye(4, dtype=torch.float64).repeat(batch, frames, 1, 1)
    c2w[..., :3, :3] = random_rotation(batch * frames, gen).view(batch, frames, 3, 3)
    c2w[..., :3, 3] = torch.randn(batch, frames, 3, generator=gen, dtype=torch.float64) * 2
    intr = torch.tensor([[14.0, 0, 7.3], [0, 13.0, 5.6], [0, 0, 1]], dtype=torch.float64).expand(batch, frames, 3, 3)
    depth = 0.5 + 3 * torch.rand(batch, frames, H, W, generator=gen, dtype=torch.float64)
    depth[:, :, 0, :4] = 0.0  # ScanNet holes
    depth[:, 1, 5, 5] = float("nan")
    align = torch.eye(4, dtype=torch.float64).repeat(batch, 1, 1)
    align[:, :3, :3] = random_rotation(batch, gen)
    align[:, :3, 3] = torch.randn(batch, 3, generator=gen, dtype=torch.float64)
    return c2w, intr, depth, align


def test_targets_pose_encoding_round_trip_and_gravity():
    c2w, intr, depth, align = scannet_like()
    t = reconstruction_targets(c2w, intr, depth, align, (H, W))
    extrinsics, _ = pose_encoding_to_extri_intri(t["pose_enc"], (H, W))
    expected = extrinsics_relative_to_first(c2w)
    expected = torch.cat([expected[..., :3], expected[..., 3:] / t["scale"].view(-1, 1, 1, 1)], dim=-1)
    assert (extrinsics - expected).abs().max() <= 1e-5
    first = t["extrinsics"][:, 0]
    assert torch.allclose(first, torch.eye(4, dtype=first.dtype)[:3].expand_as(first), atol=1e-12)
    for b in range(c2w.shape[0]):
        assert torch.allclose(t["scene_rotation"][b], first_camera_to_gravity(c2w[b, 0], align[b]))
    # FoVs come from the focal lengths.
    assert torch.allclose(t["pose_enc"][..., 7], 2 * torch.atan(torch.tensor(H / 2 / 13.0, dtype=torch.float64)))
    # Without an axis alignment the gravity target is just the first camera's rotation.
    assert torch.allclose(reconstruction_targets(c2w, intr, depth, None, (H, W))["scene_rotation"], c2w[:, 0, :3, :3])


def test_targets_points_depth_scale_and_mask():
    c2w, intr, depth, align = scannet_like()
    t = reconstruction_targets(c2w, intr, depth, align, (H, W))
    valid = t["valid_mask"]
    assert not valid[:, :, 0, :4].any() and not valid[:, 1, 5, 5].any() and valid.sum() == valid.numel() - 2 * 3 * 4 - 2
    # s = mean distance of valid GT points from the first camera → normalised mean ≈ 1.
    mean_dist = (t["points"].norm(dim=-1) * valid).flatten(1).sum(-1) / valid.flatten(1).sum(-1)
    assert torch.allclose(mean_dist, torch.ones_like(mean_dist), rtol=1e-4)
    assert torch.equal(t["depth_metric"] == 0, ~valid)
    assert torch.allclose(t["depth"] * t["scale"].view(-1, 1, 1, 1), t["depth_metric"])
    # Points, mapped back to the scan world with the first camera pose, match a direct
    # back-projection of pixel (u, v) with the frame's own camera-to-world pose.
    b, s, v, u = 1, 2, 7, 9
    d = depth[b, s, v, u]
    cam = torch.stack([(u - intr[b, s, 0, 2]) / intr[b, s, 0, 0] * d, (v - intr[b, s, 1, 2]) / intr[b, s, 1, 1] * d, d])
    world = c2w[b, s, :3, :3] @ cam + c2w[b, s, :3, 3]
    point = t["points"][b, s, v, u] * t["scale"][b]
    assert torch.allclose(c2w[b, 0, :3, :3] @ point + c2w[b, 0, :3, 3], world, atol=1e-9)
    assert t["sequence_valid"].all()
    assert not reconstruction_targets(c2w, intr, depth, align, (H, W), min_valid_pixels=H * W)["sequence_valid"].any()


def test_targets_reject_bad_input():
    c2w, intr, depth, align = scannet_like()
    with pytest.raises(ValueError, match="image_hw"):
        reconstruction_targets(c2w, intr, depth, align, (W, H))
    bad = c2w.clone()
    bad[0, 1] = float("-inf")
    with pytest.raises(ValueError, match="non-finite"):
        reconstruction_targets(bad, intr, depth, align, (H, W))


def test_camera_loss_gamma_weighting_hand_value():
    gt = torch.randn(2, 3, 9)
    first, last = gt.clone(), gt.clone()
    first[..., :3] += 1.0  # iteration 1 of 2: weight 0.6
    last[..., :3] += 0.5  # iteration 2 of 2: weight 1
    last[..., 7:] -= 0.2
    out = camera_loss([first, last], gt, gamma=0.6)
    assert out["trans"] == pytest.approx((0.6 * 1.0 + 1.0 * 0.5) / 2, rel=1e-5)
    assert out["rot"] == pytest.approx(0.0, abs=1e-7)
    assert out["fov"] == pytest.approx(0.2 / 2, rel=1e-5)
    assert out["total"] == pytest.approx(0.55 + 0.5 * 0.1, rel=1e-5)
    assert camera_loss([gt, gt], gt)["total"] == 0
    # Huber is quadratic below delta: 0.5·0.5² on the last iteration only.
    huber = camera_loss([gt, last], gt, loss_type="huber", weight_fov=0.0)
    assert huber["trans"] == pytest.approx(0.125 / 2, rel=1e-5)
    # Invalid scenes are ignored; all invalid keeps a zero loss with a graph.
    pred = (gt + 1).requires_grad_()
    masked = camera_loss([pred], gt, sequence_valid=torch.tensor([False, False]))
    assert masked["total"] == 0 and masked["total"].requires_grad
    with pytest.raises(ValueError, match="loss_type"):
        camera_loss([gt], gt, loss_type="l3")


def test_depth_loss_hand_values():
    gt = torch.ones(1, 1, 2, 2)
    mask = torch.ones(1, 1, 2, 2, dtype=torch.bool)
    conf = torch.full_like(gt, 2.0)
    out = depth_loss(gt + 0.1, conf, gt, mask, alpha=0.2)
    assert out["conf"] == pytest.approx(2 * 0.1 - 0.2 * math.log(2), rel=1e-5)
    assert out["reg"] == pytest.approx(0.1, rel=1e-5)
    assert out["grad"] == pytest.approx(0.0, abs=1e-7)  # a constant offset has no gradient error
    assert float(out["total"]) == pytest.approx(float(out["conf"] + out["reg"]), rel=1e-6)
    # Residual (0, 1) along x: one difference of 1, conf 1, over 2 valid pixels = 0.5 at
    # stride 1; nothing at stride 2 → mean over 2 scales = 0.25.
    gt = torch.ones(1, 1, 1, 2)
    out = depth_loss(gt + torch.tensor([0.0, 1.0]), torch.ones_like(gt), gt, torch.ones_like(gt, dtype=torch.bool),
                     grad_scales=2)
    assert out["grad"] == pytest.approx(0.25, rel=1e-6)
    assert out["reg"] == pytest.approx(0.5, rel=1e-6)


def test_depth_and_point_losses_zero_at_perfect_prediction_with_finite_gradients():
    c2w, intr, depth, align = scannet_like()
    t = reconstruction_targets(c2w, intr, depth, align, (H, W))
    gt_depth, gt_points, mask = t["depth"].float(), t["points"].float(), t["valid_mask"]
    for fn, gt in ((depth_loss, gt_depth), (point_loss, gt_points)):
        pred = gt.clone().requires_grad_()
        conf_logit = torch.full(mask.shape, -30.0, requires_grad=True)  # conf = 1 + exp(x) → 1
        out = fn(pred, 1 + conf_logit.exp(), gt, mask)
        assert abs(out["total"].detach().item()) < 1e-6
        out["total"].backward()
        assert torch.isfinite(pred.grad).all() and torch.isfinite(conf_logit.grad).all()
        noisy = gt + 0.05 * torch.randn(gt.shape, generator=torch.Generator().manual_seed(1))
        worse = fn(noisy, torch.ones(mask.shape), gt, mask)
        assert worse["total"] > 0.01 and worse["grad"] > 0 and worse["reg"] > 0
    # Masked pixels never count, whatever is predicted there.
    garbage = torch.where(mask, gt_depth, torch.full_like(gt_depth, 1e3))
    assert depth_loss(garbage, torch.ones(mask.shape), gt_depth, mask)["total"] < 1e-6


def test_depth_loss_drops_outliers_above_quantile():
    gt = torch.ones(1, 1, 40, 40)
    mask = torch.ones_like(gt, dtype=torch.bool)
    pred = gt + 0.01
    pred[0, 0, 3, 3] = 90.0  # a single wild GT/prediction mismatch among 1600 pixels
    kept = depth_loss(pred, torch.ones_like(gt), gt, mask, grad_weight=0.0, valid_range=0.98)
    raw = depth_loss(pred, torch.ones_like(gt), gt, mask, grad_weight=0.0, valid_range=None)
    assert kept["reg"] == pytest.approx(0.01, rel=1e-3)
    assert raw["reg"] > 0.05


def test_depth_loss_empty_mask_keeps_graph():
    pred = torch.rand(1, 2, 4, 4, requires_grad=True)
    out = depth_loss(pred, torch.ones(1, 2, 4, 4), torch.rand(1, 2, 4, 4), torch.zeros(1, 2, 4, 4, dtype=torch.bool))
    assert out["total"] == 0 and out["total"].requires_grad


def test_scene_rotation_loss_values_and_gradients():
    gen = torch.Generator().manual_seed(3)
    gt = random_rotation(4, gen).float()
    pred = gt.clone().requires_grad_()
    loss = scene_rotation_loss(pred, gt)
    assert loss.item() < 1e-5
    loss.backward()
    assert torch.isfinite(pred.grad).all()
    rz = torch.tensor([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])
    eye = torch.eye(3)
    assert scene_rotation_loss(rz[None], eye[None]) == pytest.approx(math.pi / 2, rel=1e-5)
    assert scene_rotation_loss(rz[None], eye[None], kind="frobenius") == pytest.approx(4.0, rel=1e-6)
    flip = torch.diag(torch.tensor([1.0, -1.0, -1.0]))  # 180° about x: acos-free path stays accurate
    assert scene_rotation_loss(flip[None], eye[None]) == pytest.approx(math.pi, rel=1e-5)
    small = quat_to_mat(torch.tensor([math.sin(0.005), 0, 0, math.cos(0.005)]))  # 0.01 rad about x
    assert scene_rotation_loss(small[None], eye[None]) == pytest.approx(0.01, rel=1e-3)
    with pytest.raises(ValueError, match="rotation loss kind"):
        scene_rotation_loss(eye[None], eye[None], kind="euler")
