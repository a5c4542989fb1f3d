"""Stage 2 (paper §3.4, eq. 8–9): joint training of every module, LoRA on the LLM.

`Stage2Objective` wraps a `VidLLM` so one call on a `stage2_batch` gives the `stage2_loss`
terms (L_recon + L_VL + L_MD). Which parameters each term reaches is the model's business
(one-way gradient from VL to geometry).
"""

from __future__ import annotations

import logging
import zlib
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from vidllm.config import VidLLMConfig
from vidllm.errors import DataError
from vidllm.geometry import ground_truth_geometry
from vidllm.lora import apply_lora
from vidllm.losses import Stage2LossWeights, stage2_loss

log = logging.getLogger(__name__)


def alignment_seeds(keys: list[str], step: int) -> list[int]:
    """One seed per scene for the images real-scale alignment draws: a function of (step, scene),
    so a resumed run draws the same images as an uninterrupted one (crc32: stable across
    processes, unlike `hash`)."""
    return [zlib.crc32(f"{step}:{key}".encode()) for key in keys]


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

    def fsdp_units(self) -> list[nn.Module]:
        """What `train.strategy: fsdp` shards as separate units: the encoder and aggregator blocks,
        which every rank runs exactly once per step. The LLM stays in the root unit: whether and how
        often a rank runs it depends on its batch (none on a reconstruction-only step, twice with
        the shared vision prefix), and every rank must issue the same collectives."""
        m = self.model
        aggregator = m.reconstruction.aggregator
        return [*m.encoder.backbone.encoder.layer, *aggregator.frame_blocks, *aggregator.global_blocks]

    def forward(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """batch from `stage2_batch` (images `[B,S,3,H,W]`, text rows `[R, L]`) → stage2_loss terms
        (`total`, ...) plus `tokens` (LLM input tokens: text + vision per row, for throughput)."""
        seeds = alignment_seeds(batch["keys"], int(batch["step"])) if "step" in batch else None
        geometry = None
        if self.model.config.patch_geometry == "ground_truth":
            geometry = ground_truth_geometry(batch["targets"])
        vision = self.model.encode_video(batch["images"], with_points=self.weights.point > 0, alignment_seeds=seeds,
                                         geometry=geometry)
        votes = (vision.objectness, vision.proposal_boxes, vision.xyz, vision.voxel_mask)
        if batch["input_ids"] is None:  # no instructions in these clips: reconstruction + metric depth only
            losses = stage2_loss({"recon": vision.recon, "scene_rotation": vision.scene_rotation,
                                  "proposal_votes": votes}, batch["targets"], self.weights)
            return {**losses, "tokens": vision.mask.sum().detach()}
        has_object = bool((batch["input_ids"] == self.model.special_ids.obj).any())
        out = self.model(
            None, batch["input_ids"], batch["attention_mask"], batch["labels"], proposals=batch["proposals"],
            proposal_mask=batch["proposal_mask"], object_boxes=batch["object_boxes"] if has_object else None,
            vision=vision, scene_index=batch["scene_index"], share_prefix=self.share_vision_prefix,
        )
        vl_targets = {key: batch[key] for key in ("box_targets", "target_mask", "target_proposals")}
        losses = stage2_loss({**out, "proposal_votes": votes}, {**batch["targets"], **vl_targets}, self.weights)
        tokens = batch["attention_mask"].sum() + vision.mask[batch["scene_index"]].sum()
        return {**losses, "tokens": tokens.detach()}


def annotation_texts(shards_uri: str, limit: int = 20000) -> list[str]:
    """Questions, answers and descriptions from the shards' annotations (tokenizer training text)."""
    from vidllm.data.shards.format import ShardDataset

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
    a Stage-1 directory → a new model assembled from the config's sources (`vidllm.assemble`)
    with this directory as `model.init.stage1`, so the VGGT checkpoint (`model.init.vggt`)
    and the pretrained LLM (`model.llm.pretrained`) are loaded too; None → the same assembly
    from the config alone. The tokenizer is the LLM's own, or a BPE trained on the shards'
    annotation text. Under `train.single_stage` a Stage-1 directory is refused.
    """
    from vidllm.artifacts.model_dir import load_pretrained
    from vidllm.assemble import assemble_model, assembly_tokenizer
    from vidllm.attention_select import select_attn_implementation
    from vidllm.train.stage1 import is_stage1_dir

    model_cfg = cfg.model
    if init_model is not None and not is_stage1_dir(init_model):
        model, tokenizer = load_pretrained(init_model, trainable_adapters=True)
        if tokenizer is None:
            raise DataError(init_model, "model directory has no tokenizer/ (needed for Stage-2 prompts)")
        return apply_lora(model, cfg.model.llm), tokenizer
    if init_model is not None:
        if cfg.train.single_stage:
            raise DataError(init_model, "train.single_stage is set (the no-Stage-1 ablation), but this is a "
                                        "Stage-1 directory; start Stage 2 without it")
        model_cfg = model_cfg.model_copy(update={"init": model_cfg.init.model_copy(update={"stage1": str(init_model)})})
    texts = None if model_cfg.llm.pretrained else annotation_texts(shards_uri)
    tokenizer, tokenizer_source = assembly_tokenizer(model_cfg, texts)
    assembly = assemble_model(model_cfg, tokenizer, select_attn_implementation(model_cfg.llm.attn_implementation),
                              tokenizer_source)
    log.info("stage 2 starts from %s", assembly.describe())
    return apply_lora(assembly.model, model_cfg.llm), tokenizer
