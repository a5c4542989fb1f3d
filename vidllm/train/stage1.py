"""Stage 1 (paper §3.4): dual-teacher distillation of the shared encoder and the Cross-Task Adapter.

Student = SharedEncoder + CrossTaskAdapter + two trainable linear projections ("lightweight
linear projection layers") from the student width to each teacher's width:

    L = L_geo(P_geo(T'_geom), T_DINO) + L_lang(P_lang(T'_lang), T_CLIP) + λ · L_sc     (eq. 5–7)

with teacher features read from the content-addressed cache. Teacher grids are resampled onto
the student's patch grid (`resample_tokens`). The projections exist only for training; the
stage-1 output keeps encoder + CTA weights under the names `VidLLM` uses, so Stage 2 starts
from them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from vidllm.artifacts.files import atomic_dir
from vidllm.artifacts.model_dir import DIGESTS_KEY, load_state_fitting, warn_if_modified, weight_digests
from vidllm.config import ModelConfig, VidLLMConfig
from vidllm.errors import DataError
from vidllm.losses.distill import distill_loss, resample_tokens
from vidllm.models.cross_task_adapter import CrossTaskAdapter
from vidllm.models.encoder import SharedEncoder

STAGE1_FORMAT = "vidllm-stage1"
STAGE1_FORMAT_VERSION = 1
STUDENT_WEIGHTS = "model.safetensors"
PROJECTION_WEIGHTS = "distill_projections.safetensors"
CONFIG_NAME = "config.json"


class DistillStudent(nn.Module):
    """Encoder + CTA + projections to the teacher widths; `forward` returns the Stage-1 losses."""

    def __init__(self, cfg: ModelConfig, geometry_dim: int, semantic_dim: int, encoder_hf_config=None):
        super().__init__()
        self.encoder = SharedEncoder(cfg.encoder, hf_config=encoder_hf_config)
        dim = self.encoder.hidden_size
        self.cta = CrossTaskAdapter(cfg.cta, dim)
        self.proj_geom = nn.Linear(dim, geometry_dim)
        self.proj_lang = nn.Linear(dim, semantic_dim)

    def student_tokens(self, images: Tensor) -> tuple[Tensor, Tensor, tuple[int, int]]:
        """images `[B, S, 3, H, W]` → projected (T'_geom `[B,S,P,Cg]`, T'_lang `[B,S,P,Cl]`, grid (h, w))."""
        t_base = self.encoder(images)
        t_geom, t_lang = self.cta(t_base)
        grid = self.encoder.patch_grid(images.shape[-2], images.shape[-1])
        return self.proj_geom(t_geom), self.proj_lang(t_lang), grid

    def forward(self, batch: dict[str, Any], sc_weight: float, sc_tokens: int,
                generator: torch.Generator | None = None, teachers: str = "both") -> dict[str, Tensor]:
        """batch: images `[B,S,3,H,W]`, teacher_geom `[B,S,Pg,Cg]`, teacher_lang `[B,S,Pl,Cl]` (+ grids)
        → {total, geo, lang, sc}; `teachers` as `distill_loss`."""
        student_geom, student_lang, grid = self.student_tokens(batch["images"])
        teacher_geom = resample_tokens(batch["teacher_geom"], tuple(batch["geom_grid"]), grid)
        teacher_lang = resample_tokens(batch["teacher_lang"], tuple(batch["lang_grid"]), grid)
        weight = sc_weight if student_geom.shape[-1] == student_lang.shape[-1] else 0.0  # L_sc needs one width
        return distill_loss(student_geom, student_lang, teacher_geom.to(student_geom.dtype),
                            teacher_lang.to(student_lang.dtype), weight, sc_tokens, generator, teachers)


def student_state(student: DistillStudent) -> dict[str, Tensor]:
    """Encoder + CTA weights under VidLLM's names (`encoder.*`, `cta.*`)."""
    return {k: v.detach().contiguous().cpu() for k, v in student.state_dict().items()
            if k.startswith(("encoder.", "cta."))}


def save_stage1_model(student: DistillStudent, cfg: VidLLMConfig, out_dir: str | Path) -> Path:
    """Write the Stage-1 model directory atomically: config.json, model.safetensors (encoder + CTA),
    distill_projections.safetensors."""
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        save_file(student_state(student), str(tmp / STUDENT_WEIGHTS), metadata={"format": "pt"})
        projections = {k: v.detach().contiguous().cpu() for k, v in student.state_dict().items()
                       if k.startswith(("proj_geom.", "proj_lang."))}
        save_file(projections, str(tmp / PROJECTION_WEIGHTS), metadata={"format": "pt"})
        encoder_config = student.encoder.backbone.config.to_dict()
        for key in ("_name_or_path", "transformers_version", "architectures"):
            encoder_config.pop(key, None)
        meta = {"format": STAGE1_FORMAT, "format_version": STAGE1_FORMAT_VERSION, "recipe": cfg.recipe,
                "model": cfg.model.model_dump(mode="json"), "encoder_hf_config": encoder_config,
                "teacher_dims": [student.proj_geom.out_features, student.proj_lang.out_features]}
        meta[DIGESTS_KEY] = weight_digests(tmp)
        (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=2))
    return out_dir


def is_stage1_dir(path: str | Path) -> bool:
    config = Path(path) / CONFIG_NAME
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("format") == STAGE1_FORMAT
    except json.JSONDecodeError:
        return False


def load_encoder_and_cta(model: nn.Module, model_dir: str | Path) -> None:
    """Copy encoder + CTA weights from a Stage-1 dir (or a VidLLM model dir) into `model`
    (anything with `.encoder` and `.cta`); a shape or name mismatch is a DataError naming the file."""
    weights = Path(model_dir) / STUDENT_WEIGHTS
    if not weights.is_file():
        raise DataError(weights, "weights file is missing")
    if (Path(model_dir) / CONFIG_NAME).is_file():
        warn_if_modified(model_dir)
    state = load_file(str(weights))
    for prefix in ("encoder.", "cta."):
        part = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        try:
            getattr(model, prefix[:-1]).load_state_dict(part, strict=True)
        except RuntimeError as exc:
            raise DataError(weights, f"{prefix[:-1]} weights do not fit this config: {str(exc)[:300]}") from None


def build_student(cfg: VidLLMConfig, geometry_dim: int, semantic_dim: int,
                  init_model: str | Path | None = None) -> DistillStudent:
    """A student from the config; `init_model` (a Stage-1 dir or a VidLLM model dir) provides the
    encoder + CTA (and, for a Stage-1 dir with matching widths, the projections). Without it the
    encoder starts from `model.encoder.pretrained` (DINOv2) if given, else from the VGGT
    checkpoint's DINO patch embed (`model.init.vggt`), else random (`vidllm.assemble`'s order)."""
    if init_model is None:
        student = DistillStudent(cfg.model, geometry_dim, semantic_dim)
        if cfg.model.init.vggt and not cfg.model.encoder.pretrained:
            from vidllm.models.convert import load_vggt_into, read_checkpoint

            report = load_vggt_into({"encoder": student.encoder}, read_checkpoint(cfg.model.init.vggt))
            if report.loaded == 0:
                raise DataError(cfg.model.init.vggt, "no VGGT patch-embed weights in this checkpoint")
        return student
    config_path = Path(init_model) / CONFIG_NAME
    if not config_path.is_file():
        raise DataError(init_model, f"not a model directory (no {CONFIG_NAME})")
    meta = json.loads(config_path.read_text())
    from vidllm.artifacts.model_dir import hf_config_from_dict

    student = DistillStudent(cfg.model, geometry_dim, semantic_dim,
                             encoder_hf_config=hf_config_from_dict(meta["encoder_hf_config"]))
    load_encoder_and_cta(student, init_model)
    projections = Path(init_model) / PROJECTION_WEIGHTS
    if meta.get("format") == STAGE1_FORMAT and projections.is_file() and \
            meta.get("teacher_dims") == [geometry_dim, semantic_dim]:
        load_state_fitting(student, load_file(str(projections)), projections, strict=False)
    return student
