"""LoRA on the LLM (peft), kept out of the model files.

`apply_lora` wraps `model.llm` in a peft model on `cfg.lora_targets` and freezes the LLM's
base weights; every other module (encoder, CTA, reconstruction, 3D patches, projector,
grounding) stays trainable. `merge_lora` folds the adapters into the base weights.
"""

from __future__ import annotations

from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from vidllm.config import LLMConfig


def lora_config(cfg: LLMConfig) -> LoraConfig:
    return LoraConfig(
        r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.lora_targets), bias="none", task_type="CAUSAL_LM",
    )


def has_lora(model: nn.Module) -> bool:
    return isinstance(getattr(model, "llm", None), PeftModel)


def apply_lora(model: nn.Module, cfg: LLMConfig) -> nn.Module:
    """Wrap `model.llm` with LoRA adapters (no-op when `cfg.lora_r == 0` or already wrapped)."""
    if cfg.lora_r == 0 or has_lora(model):
        return model
    model.llm = get_peft_model(model.llm, lora_config(cfg))  # freezes the LLM's base weights
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold the adapters into the LLM weights (plain transformers model afterwards)."""
    if has_lora(model):
        model.llm = model.llm.merge_and_unload()
    return model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
