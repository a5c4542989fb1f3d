"""LoRA on the LLM (peft), kept out of the model files.

`apply_lora` wraps `model.llm` in a peft model on `cfg.lora_targets` and freezes the LLM's
base weights; every other module (encoder, CTA, reconstruction, 3D patches, projector,
grounding) stays trainable. The embedding and LM-head rows of the Vid-LLM tokens (`</s>`,
`<image>`, `<ground>`, `<obj>`) are added to the LLM's vocabulary at random init, so they
train too, through peft's `trainable_token_indices` (only those rows, not the whole
matrices). `merge_lora` folds the adapters and the trained rows into the base weights.
"""

from __future__ import annotations

from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from vidllm.config import LLMConfig
from vidllm.tokenizer import SpecialTokenIds


def trainable_token_ids(special_ids: SpecialTokenIds) -> list[int]:
    """Vocabulary rows to train under LoRA: the tokens Vid-LLM adds. `<pad>` is left out: it
    only sits at masked positions and is never a label."""
    return sorted({special_ids.eos, special_ids.image, special_ids.ground, special_ids.obj})


def _module_name(llm: nn.Module, module: nn.Module | None) -> str | None:
    return next((name for name, m in llm.named_modules() if m is module), None) if module is not None else None


def trainable_token_indices(llm: nn.Module, token_ids: list[int]) -> dict[str, list[int]]:
    """peft's `trainable_token_indices` for `llm`: the input embedding, plus the LM head when it
    is a separate matrix. With tied embeddings peft ties the head to the embedding's rows
    itself (and a separate head entry would then be skipped anyway)."""
    embed_name = _module_name(llm, llm.get_input_embeddings())
    if embed_name is None:
        raise ValueError("the LLM has no input embedding module to train token rows in")
    indices = {embed_name: list(token_ids)}
    tied = bool(getattr(llm.config, "tie_word_embeddings", False))
    head_name = _module_name(llm, llm.get_output_embeddings())
    if head_name is not None and not tied:
        indices[head_name] = list(token_ids)
    return indices


def lora_config(cfg: LLMConfig, token_indices: dict[str, list[int]] | None = None) -> LoraConfig:
    return LoraConfig(
        r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.lora_targets), bias="none", task_type="CAUSAL_LM",
        trainable_token_indices=token_indices or None,
    )


def has_lora(model: nn.Module) -> bool:
    return isinstance(getattr(model, "llm", None), PeftModel)


def apply_lora(model: nn.Module, cfg: LLMConfig, token_ids: list[int] | None = None) -> nn.Module:
    """Wrap `model.llm` with LoRA adapters (no-op when `cfg.lora_r == 0` or already wrapped).

    `token_ids` are the vocabulary rows (embedding and untied LM head) that train alongside the
    adapters; by default the model's Vid-LLM tokens (`model.special_ids`), none if it has none.
    """
    if cfg.lora_r == 0 or has_lora(model):
        return model
    if token_ids is None:
        special_ids = getattr(model, "special_ids", None)
        token_ids = trainable_token_ids(special_ids) if special_ids is not None else []
    indices = trainable_token_indices(model.llm, token_ids) if token_ids else None
    model.llm = get_peft_model(model.llm, lora_config(cfg, indices))  # freezes the LLM's base weights
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold the adapters (and trained token rows) into the LLM weights (plain transformers model afterwards)."""
    if has_lora(model):
        model.llm = model.llm.merge_and_unload()
    return model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
