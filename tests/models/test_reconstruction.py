import pytest
import torch

from vidllm.config import load_config
from vidllm.geometry import pose_encoding_to_extri_intri
from vidllm.models.reconstruction import ReconstructionBranch


def _branch(overrides: list[str] | None = None) -> tuple[ReconstructionBranch, int]:
    cfg = load_config("tiny", overrides=overrides).model
    torch.manual_seed(0)
    return ReconstructionBranch(cfg, in_dim=cfg.encoder.hidden_size), cfg.encoder.hidden_size


def _inputs(channels: int, batch: int = 2, frames: int = 3, height: int = 42, width: int = 56):
    grid = (height // 14) * (width // 14)
    geom = torch.randn(batch, frames, grid, channels, requires_grad=True)
    base = torch.randn(batch, frames, grid, channels, requires_grad=True)
    return geom, torch.rand(batch, frames, 3, height, width), base


def test_output_contract_shapes():
    branch, channels = _branch()
    geom, images, base = _inputs(channels)
    out = branch(geom, images, base)
    b, s, h, w = 2, 3, 42, 56
    assert out["pose_enc"].shape == (b, s, 9)
    assert len(out["pose_enc_list"]) == load_config("tiny").model.heads.camera_iters
    for key in ("depth", "depth_conf", "metric_depth", "depth_metric_aligned", "world_points_conf"):
        assert out[key].shape == (b, s, h, w), key
    assert out["world_points"].shape == (b, s, h, w, 3)
    assert out["metric"]["probs"].shape[:3] == (b, s, load_config("tiny").model.metric_depth.num_bins)
    assert out["scale"].shape == (b,) and torch.all(out["scale"] > 0)
    assert out["extrinsics"].shape == (b, s, 3, 4) and out["intrinsics"].shape == (b, s, 3, 3)


def test_alignment_scales_depth_and_translations_only():
    branch, channels = _branch()
    geom, images, base = _inputs(channels)
    out = branch(geom, images, base)
    scale = out["scale"].view(-1, 1, 1, 1)
    assert torch.allclose(out["depth_metric_aligned"], out["depth"] * scale)
    extr, intr = pose_encoding_to_extri_intri(out["pose_enc"], (42, 56))
    assert torch.allclose(out["extrinsics"][..., :3], extr[..., :3])
    assert torch.allclose(out["extrinsics"][..., 3], extr[..., 3] * scale[..., 0])
    assert torch.allclose(out["intrinsics"], intr)
    assert not out["scale"].requires_grad  # a statistic, not a differentiable path
    # Aligned depth is much closer to the metric depth than the raw relative depth is.
    err_aligned = (out["depth_metric_aligned"] - out["metric_depth"]).abs().median()
    assert err_aligned <= (out["depth"] - out["metric_depth"]).abs().median() + 1e-6


def test_md_without_alignment_uses_metric_depth_directly_and_no_point_head():
    # Table 6 'MD w/o alignment': the metric depth model's depth builds the 3D patches, unscaled cameras.
    branch, channels = _branch(["model.alignment.enabled=false", "model.heads.point_head=false"])
    out = branch(*_inputs(channels, batch=1, frames=2))
    assert torch.equal(out["scale"], torch.ones(1))
    assert torch.equal(out["depth_metric_aligned"], out["metric_depth"])
    extr, _ = pose_encoding_to_extri_intri(out["pose_enc"], (42, 56))
    assert torch.allclose(out["extrinsics"], extr)
    assert "world_points" not in out and branch.point_head is None


def test_without_metric_depth_there_is_no_md_model_and_relative_geometry():
    # Table 6 'w/o MD': no metric depth model, no alignment; the relative depth builds the 3D patches.
    branch, channels = _branch(["model.metric_depth.enabled=false"])
    assert branch.metric_depth is None
    assert not any(k.startswith("metric_depth.") for k in branch.state_dict())
    out = branch(*_inputs(channels, batch=2, frames=2))
    assert "metric_depth" not in out and "metric" not in out
    assert torch.equal(out["scale"], torch.ones(2))
    assert torch.equal(out["depth_metric_aligned"], out["depth"])


def test_alignment_draws_its_images_from_the_scene_seeds():
    branch, channels = _branch(["model.alignment.images_per_scene=2"])
    geom, images, base = _inputs(channels, batch=1, frames=6)
    with torch.no_grad():
        eval_a, eval_b = branch(geom, images, base)["scale"], branch(geom, images, base)["scale"]
        seeded = [branch(geom, images, base, alignment_seeds=[seed])["scale"] for seed in (1, 1, 2, 3, 4)]
    assert torch.equal(eval_a, eval_b)  # evaluation: evenly spaced images, deterministic
    assert torch.equal(seeded[0], seeded[1])  # same (step, scene) seed → same images → same scale
    assert len({float(s) for s in seeded}) > 1  # other seeds draw other images


def test_recon_loss_reaches_inputs():
    branch, channels = _branch()
    geom, images, base = _inputs(channels, batch=1, frames=2)
    out = branch(geom, images, base)
    loss = out["pose_enc"].abs().mean() + out["depth_metric_aligned"].mean() + out["world_points"].abs().mean()
    loss = loss + (out["metric_depth"] - 2.0).abs().mean()
    loss.backward()
    assert geom.grad is not None and geom.grad.abs().sum() > 0
    assert base.grad is not None and base.grad.abs().sum() > 0
    frozen = [n for n, p in branch.named_parameters() if p.grad is None]
    assert frozen == [], frozen


def test_rejects_image_size_not_multiple_of_patch():
    branch, channels = _branch()
    geom, _, base = _inputs(channels, batch=1, frames=2)
    with pytest.raises(ValueError, match="multiple of patch size"):
        branch(geom, torch.rand(1, 2, 3, 42, 50), base)


def test_heads_stay_fp32_under_bf16_autocast():
    branch, channels = _branch()
    geom, images, base = _inputs(channels, batch=1, frames=2)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = branch(geom, images, base)
    for key in ("pose_enc", "depth", "depth_conf", "metric_depth", "extrinsics", "depth_metric_aligned"):
        assert out[key].dtype == torch.float32, key
        assert torch.isfinite(out[key]).all(), key
