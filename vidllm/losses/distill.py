"""Stage-1 dual-teacher distillation losses (paper §3.4, eq. 5–7), as pure functions.

    L_distill = L_geo + L_lang + λ · L_sc                                           (5)
    L_geo     = 1/N Σ_i ‖Norm(T'_geom,i) − Norm(T^geo_tea,i)‖²                       (6)
    L_lang    = 1 − cos(Pool(T'_lang), Pool(T^lang_tea))                             (6)
    L_sc      = 1/M² ‖Z_stu Z_stuᵀ − Z_tea Z_teaᵀ‖²_F,  Z = [Norm(T_geom); Norm(T_lang)]  (7)

Norm is L2 normalisation over channels, Pool is mean pooling over the patches of a frame
(CLIP's global embedding is per image, so pooling is per frame and the loss is averaged over
frames). The paper applies "lightweight linear projection layers" to the student before
these losses: they are trainable modules and live with the trainer; every function here
expects student and teacher features already in the same channel width.

Token correspondence: student token i and teacher token i must be the same image patch.
Teachers with another patch grid (e.g. CLIP-336 at 24×24 vs DINO-518 at 37×37) are brought
onto the student grid with `resample_tokens` first.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _check_same_shape(student: Tensor, teacher: Tensor, what: str) -> None:
    if student.shape != teacher.shape:
        raise ValueError(
            f"{what}: student {tuple(student.shape)} and teacher {tuple(teacher.shape)} differ; "
            "project the student to the teacher width and resample the teacher grid first"
        )


def resample_tokens(tokens: Tensor, src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> Tensor:
    """Patch tokens on one grid → another grid by bilinear interpolation.

    Args:
        tokens: `[B, S, P, C]` with P = src_h · src_w, row-major.
    Returns:
        `[B, S, dst_h · dst_w, C]`.
    """
    batch, frames, patches, channels = tokens.shape
    if patches != src_hw[0] * src_hw[1]:
        raise ValueError(f"{patches} tokens do not form a {src_hw[0]}x{src_hw[1]} grid")
    if tuple(src_hw) == tuple(dst_hw):
        return tokens
    grid = tokens.reshape(batch * frames, src_hw[0], src_hw[1], channels).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=dst_hw, mode="bilinear", align_corners=False).to(tokens.dtype)
    return grid.permute(0, 2, 3, 1).reshape(batch, frames, dst_hw[0] * dst_hw[1], channels)


def geometry_feature_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """Eq. 6, L_geo: mean over tokens of the squared L2 distance of L2-normalised features.

    Args:
        student: `[B, S, P, C]` projected T'_geom; teacher: `[B, S, P, C]` DINO (VGGT) patch tokens.
    Returns:
        scalar in [0, 4] (0 iff every student token points the same way as its teacher token).
    """
    _check_same_shape(student, teacher, "geometry_feature_loss")
    diff = F.normalize(student.float(), dim=-1) - F.normalize(teacher.float(), dim=-1)
    return diff.pow(2).sum(dim=-1).mean()


def mean_pool(tokens: Tensor) -> Tensor:
    """Pool(·) of eq. 6: mean over the patches of each frame, `[B, S, P, C]` → `[B, S, C]`."""
    return tokens.mean(dim=-2)


def semantic_feature_loss(student_pooled: Tensor, teacher_pooled: Tensor) -> Tensor:
    """Eq. 6, L_lang = 1 − cos(Pool(student), Pool(teacher)), averaged over all leading dims.

    Args:
        student_pooled, teacher_pooled: `[..., C]` (e.g. `[B, S, C]` from `mean_pool`).
    Returns:
        scalar in [0, 2].
    """
    _check_same_shape(student_pooled, teacher_pooled, "semantic_feature_loss")
    return (1.0 - F.cosine_similarity(student_pooled.float(), teacher_pooled.float(), dim=-1, eps=1e-8)).mean()


def sample_token_indices(num_available: int, num_tokens: int, batch: int, generator: torch.Generator | None,
                         device: torch.device) -> Tensor:
    """`[B, n]` token indices drawn without replacement per scene (all tokens if n ≥ available)."""
    if num_tokens >= num_available:
        return torch.arange(num_available, device=device).expand(batch, -1)
    scores = torch.rand(batch, num_available, generator=generator)
    return scores.argsort(dim=-1)[:, :num_tokens].to(device)


def structural_consistency_loss(
    student_geom: Tensor,
    student_lang: Tensor,
    teacher_geom: Tensor,
    teacher_lang: Tensor,
    num_tokens: int = 256,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Eq. 7 on a bounded random sample of token positions.

    The same `n = num_tokens` positions (out of S·P per scene) are drawn for all four inputs,
    so Z_stu and Z_tea are `[M = 2n, C]`: the n geometry tokens followed by the n semantic
    tokens, each L2-normalised. S = Z Zᵀ holds all pairwise cosine similarities (within and
    across the two streams); L_sc = ‖S_stu − S_tea‖²_F / M², averaged over scenes. Sampling
    keeps the cost O(n²·C) instead of O((S·P)²·C); the full set is used when S·P ≤ n.

    Args:
        student_geom, student_lang, teacher_geom, teacher_lang: `[B, S, P, C]`, one common C
            (the Gram matrix mixes the two streams, so they must share a width).
        num_tokens: positions sampled per scene.
        generator: CPU generator for the sample (reproducible runs).
    Returns:
        scalar in [0, 4].
    """
    others = {"student_lang": student_lang, "teacher_geom": teacher_geom, "teacher_lang": teacher_lang}
    for name, tensor in others.items():
        _check_same_shape(student_geom, tensor, f"structural_consistency_loss ({name} vs student_geom)")
    if num_tokens < 1:
        raise ValueError(f"num_tokens must be ≥ 1, got {num_tokens}")
    batch, channels = student_geom.shape[0], student_geom.shape[-1]
    available = student_geom.shape[1] * student_geom.shape[2]
    index = sample_token_indices(available, num_tokens, batch, generator, student_geom.device)
    gather_index = index[..., None].expand(-1, -1, channels)

    def stacked(geom: Tensor, lang: Tensor) -> Tensor:
        picked = [torch.gather(t.float().reshape(batch, available, channels), 1, gather_index) for t in (geom, lang)]
        return F.normalize(torch.cat(picked, dim=1), dim=-1)  # [B, M, C]

    z_student = stacked(student_geom, student_lang)
    z_teacher = stacked(teacher_geom, teacher_lang)
    gram_student = z_student @ z_student.transpose(1, 2)  # [B, M, M]
    gram_teacher = z_teacher @ z_teacher.transpose(1, 2)
    num_rows = z_student.shape[1]
    return (gram_student - gram_teacher).pow(2).sum(dim=(1, 2)).mean() / num_rows**2


def distill_loss(
    student_geom: Tensor,
    student_lang: Tensor,
    teacher_geom: Tensor,
    teacher_lang: Tensor,
    sc_weight: float = 0.1,
    sc_tokens: int = 256,
    generator: torch.Generator | None = None,
    teachers: str = "both",
) -> dict[str, Tensor]:
    """Eq. 5: total = geo + lang + λ·sc (λ = `sc_weight`, `train.distill_lambda` in the config).

    Args:
        student_geom: `[B, S, P, C_g]` projected T'_geom; teacher_geom `[B, S, P, C_g]` (DINO).
        student_lang: `[B, S, P, C_l]` projected T'_lang; teacher_lang `[B, S, P, C_l]` (CLIP,
            on the student's patch grid).
        The structural term needs C_g = C_l (as in the paper: ViT-L teachers, 1024 both); with
            λ = 0 it is skipped, so teachers of different widths still work.
        teachers: "both", or "geometry" / "semantic" for the one-teacher ablation: total is that
            teacher's feature loss alone (L_sc relates the two streams, so it needs both); the
            other terms are still reported, detached, for comparison.
    Returns:
        dict of scalars: total, geo, lang, sc.
    """
    if teachers not in ("both", "geometry", "semantic"):
        raise ValueError(f"teachers must be both, geometry or semantic, got {teachers!r}")
    geo = geometry_feature_loss(student_geom, teacher_geom)
    lang = semantic_feature_loss(mean_pool(student_lang), mean_pool(teacher_lang))
    if teachers == "geometry":
        return {"total": geo, "geo": geo, "lang": lang.detach(), "sc": geo.new_zeros(())}
    if teachers == "semantic":
        return {"total": lang, "geo": geo.detach(), "lang": lang, "sc": lang.new_zeros(())}
    if sc_weight > 0:
        sc = structural_consistency_loss(student_geom, student_lang, teacher_geom, teacher_lang, sc_tokens, generator)
    else:
        sc = geo.new_zeros(())
    return {"total": geo + lang + sc_weight * sc, "geo": geo, "lang": lang, "sc": sc}
