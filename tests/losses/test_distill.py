import math

import pytest
import torch
import torch.nn.functional as F

from vidllm.losses.distill import (
    distill_loss,
    geometry_feature_loss,
    mean_pool,
    resample_tokens,
    semantic_feature_loss,
    structural_consistency_loss,
)


def feats(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_geometry_loss_zero_when_directions_match_and_known_value():
    teacher = feats(2, 3, 5, 8)
    assert geometry_feature_loss(3.0 * teacher, teacher) < 1e-10  # Norm(·) ignores the length
    # Orthogonal unit vectors: ‖a − b‖² = 2; opposite: 4. Mean over the two tokens = 3.
    student = torch.tensor([[[[1.0, 0.0], [0.0, 2.0]]]])
    teacher = torch.tensor([[[[0.0, 1.0], [0.0, -1.0]]]])
    assert math.isclose(float(geometry_feature_loss(student, teacher)), 3.0, rel_tol=1e-6)


def test_semantic_loss_pools_per_frame():
    student = torch.tensor([[[[1.0, 0.0], [1.0, 2.0]]]])  # pooled (1, 1)
    teacher = torch.tensor([[[[0.0, 3.0], [0.0, 1.0]]]])  # pooled (0, 2)
    expected = 1 - 1 / math.sqrt(2)
    assert math.isclose(float(semantic_feature_loss(mean_pool(student), mean_pool(teacher))), expected, rel_tol=1e-6)
    pooled = feats(2, 3, 8)
    assert semantic_feature_loss(pooled, 2 * pooled) < 1e-6
    assert semantic_feature_loss(pooled, -pooled) == pytest.approx(2.0)


def test_structural_loss_hand_computed_value():
    # One token per stream: Z_stu rows (1,0),(1,0) → S_stu = all ones; Z_tea rows (1,0),(0,1)
    # → S_tea = identity. ‖S_stu − S_tea‖²_F = 2 (the two off-diagonal ones), M = 2 → 2/4.
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    shape = (1, 1, 1, 2)
    loss = structural_consistency_loss(e1.view(shape), 5 * e1.view(shape), e1.view(shape), e2.view(shape), 4)
    assert math.isclose(float(loss), 0.5, rel_tol=1e-6)


def test_structural_loss_invariant_to_rotation_of_feature_space():
    # Only pairwise similarities matter: a student that is an orthogonal transform of the
    # teacher (in the shared space) has zero structural loss but non-zero feature loss.
    geom, lang = feats(2, 2, 6, 8, seed=1), feats(2, 2, 6, 8, seed=2)
    rotation = torch.linalg.qr(feats(8, 8, seed=3))[0]
    gen = torch.Generator().manual_seed(0)
    loss = structural_consistency_loss(geom @ rotation, lang @ rotation, geom, lang, num_tokens=10, generator=gen)
    assert loss < 1e-10
    assert geometry_feature_loss(geom @ rotation, geom) > 0.1
    assert structural_consistency_loss(feats(2, 2, 6, 8, seed=4), lang, geom, lang, num_tokens=10) > 0


def test_structural_loss_sample_is_bounded_and_reproducible():
    geom_s, lang_s, geom_t, lang_t = (feats(1, 4, 50, 16, seed=i) for i in range(4))
    a = structural_consistency_loss(geom_s, lang_s, geom_t, lang_t, 32, torch.Generator().manual_seed(7))
    b = structural_consistency_loss(geom_s, lang_s, geom_t, lang_t, 32, torch.Generator().manual_seed(7))
    c = structural_consistency_loss(geom_s, lang_s, geom_t, lang_t, 32, torch.Generator().manual_seed(8))
    full = structural_consistency_loss(geom_s, lang_s, geom_t, lang_t, 10_000)
    assert a == b and a != c
    assert abs(float(a) - float(full)) < 0.5 * float(full)  # an unbiased-ish estimate of the full loss


def test_distill_loss_total_gradients_and_shape_errors():
    geom_t, lang_t = feats(2, 2, 9, 8, seed=5), feats(2, 2, 9, 8, seed=6)
    geom_s = feats(2, 2, 9, 8, seed=7).requires_grad_()
    lang_s = feats(2, 2, 9, 8, seed=8).requires_grad_()
    gen = torch.Generator().manual_seed(0)
    out = distill_loss(geom_s, lang_s, geom_t, lang_t, sc_weight=0.5, sc_tokens=8, generator=gen)
    assert torch.allclose(out["total"], out["geo"] + out["lang"] + 0.5 * out["sc"])
    assert all(out[k] > 0 for k in ("geo", "lang", "sc"))
    out["total"].backward()
    assert torch.isfinite(geom_s.grad).all() and geom_s.grad.abs().sum() > 0
    assert torch.isfinite(lang_s.grad).all() and lang_s.grad.abs().sum() > 0
    perfect = distill_loss(geom_t, lang_t, geom_t, lang_t, sc_weight=0.5)
    assert float(perfect["total"]) < 1e-6
    with pytest.raises(ValueError, match="student .* and teacher .* differ"):
        geometry_feature_loss(feats(1, 1, 4, 8), feats(1, 1, 4, 6))
    # Teachers of different widths work with λ = 0 (no cross-stream Gram matrix).
    out = distill_loss(geom_t, feats(2, 2, 9, 4), geom_t, feats(2, 2, 9, 4, seed=9), sc_weight=0.0)
    assert out["sc"] == 0 and out["lang"] > 0


def test_resample_tokens_matches_image_interpolation():
    grid = feats(1, 2, 4 * 6, 3)
    out = resample_tokens(grid, (4, 6), (8, 12))
    assert out.shape == (1, 2, 96, 3)
    as_image = grid.reshape(2, 4, 6, 3).permute(0, 3, 1, 2)
    ref = F.interpolate(as_image, size=(8, 12), mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
    assert torch.allclose(out.reshape(2, 8, 12, 3), ref)
    assert resample_tokens(grid, (4, 6), (4, 6)) is grid
    with pytest.raises(ValueError, match="do not form a 5x5 grid"):
        resample_tokens(grid, (5, 5), (4, 4))
