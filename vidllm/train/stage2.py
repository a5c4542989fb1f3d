"""Stage 2 (paper §3.4, eq. 8–9): joint training of every module, LoRA on the LLM.

`Stage2Objective` wraps a `VidLLM` so one call on a `stage2_batch` gives the `stage2_loss`
terms (L_recon + L_VL + L_MD). Which parameters each term reaches is the model's business
(one-way gradient from VL to geometry).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from vidllm.config import VidLLMConfig
from vidllm.errors import DataError
from vidllm.losses import Stage2LossWeights, stage2_loss
from vidllm.lora import apply_lora


class Stage2Objective(nn.Module):
    def __init__(self, model: nn.Module, weights: Stage2LossWeights | None = None, share_vision_prefix: bool = True):
        super().__init__()
        self.model = model
        self.weights = weights or Stage2LossWeights()
        self.share_vision_prefix = share_vision_prefix

    def compile_targets(self) -> dict[str, nn.Module]:
        """What `train.compile` compiles: the vision modules and the LLM body."""
        from vidllm.models.llm import decoder_of

        m = self.model
        return {"encoder": m.encoder, "cta": m.cta, "reconstruction": m.reconstruction, "llm": decoder_of(m.llm)}

    def forward(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """batch from `stage2_batch` (images `[B,S,3,H,W]`, text rows `[R, L]`) → stage2_loss terms
        (`total`, ...) plus `tokens` (LLM input tokens: text + vision per row, for throughput)."""
        vision = self.model.encode_video(batch["images"], with_points=self.weights.point > 0)
        if batch["input_ids"] is None:  # no instructions in these clips: reconstruction + metric depth only
            losses = stage2_loss({"recon": vision.recon, "scene_rotation": vision.scene_rotation}, batch["targets"],
                                 self.weights)
            return {**losses, "tokens": vision.mask.sum().detach()}
        has_object = bool((batch["input_ids"] == self.model.special_ids.obj).any())
        out = self.model(
            None, batch["input_ids"], batch["attention_mask"], batch["labels"],
            box_targets=batch["box_targets"], proposals=batch["proposals"], proposal_mask=batch["proposal_mask"],
            match_targets=batch["match_targets"], object_boxes=batch["object_boxes"] if has_object else None,
            vision=vision, scene_index=batch["scene_index"], share_prefix=self.share_vision_prefix,
        )
        losses = stage2_loss(out, {**batch["targets"], "box_targets": batch["box_targets"]}, self.weights)
        tokens = batch["attention_mask"].sum() + vision.mask[batch["scene_index"]].sum()
        return {**losses, "tokens": tokens.detach()}


def annotation_texts(shards_uri: str, limit: int = 20000) -> list[str]:
    """Questions, answers and descriptions from the shards' annotations (tokenizer training text)."""
    from vidllm.data.shards import ShardDataset

    texts: list[str] = []
    for sample in ShardDataset(shards_uri):
        for record in sample["annotations"]:
            texts.append(str(record.get("text", "")))
            texts += [str(a) for a in record.get("answers") or []]
            if record.get("situation"):
                texts.append(str(record["situation"]))
        if len(texts) >= limit:
            break
    return texts


def build_stage2_model(cfg: VidLLMConfig, shards_uri: str, init_model: str | Path | None):
    """(VidLLM with LoRA applied, tokenizer) for Stage 2.

    init_model: a VidLLM model directory (`vidllm init`, a previous Stage 2) → loaded as is;
    a Stage-1 directory → a new VidLLM from `cfg.model` with the Stage-1 encoder + CTA and a
    tokenizer (the LLM's own, or a BPE trained on the shards' annotation text); None → all new.
    """
    from vidllm.attention_select import select_attn_implementation
    from vidllm.checkpoint import load_pretrained
    from vidllm.models.vidllm import VidLLM
    from vidllm.tokenizer import SpecialTokenIds, add_special_tokens, load_tokenizer, train_tokenizer
    from vidllm.train.stage1 import is_stage1_dir, load_encoder_and_cta

    if init_model is not None and not is_stage1_dir(init_model):
        model, tokenizer = load_pretrained(init_model, trainable_adapters=True)
        if tokenizer is None:
            raise DataError(init_model, "model directory has no tokenizer/ (needed for Stage-2 prompts)")
        return apply_lora(model, cfg.model.llm), tokenizer
    if cfg.model.llm.pretrained:
        tokenizer = add_special_tokens(load_tokenizer(cfg.model.llm.pretrained))
    else:
        tokenizer = train_tokenizer(annotation_texts(shards_uri), vocab_size=cfg.model.llm.vocab_size)
    vocab = max(cfg.model.llm.vocab_size, len(tokenizer))
    encoder_config = None
    if init_model is not None:
        from transformers import AutoConfig

        hf = dict(json.loads((Path(init_model) / "config.json").read_text())["encoder_hf_config"])
        encoder_config = AutoConfig.for_model(hf.pop("model_type"), **hf)
    model = VidLLM(cfg.model, SpecialTokenIds.from_tokenizer(tokenizer), vocab,
                   select_attn_implementation(cfg.model.llm.attn_implementation), encoder_config=encoder_config)
    if init_model is not None:
        load_encoder_and_cta(model, init_model)
    return apply_lora(model, cfg.model.llm), tokenizer
