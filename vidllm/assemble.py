"""Assemble one Vid-LLM from pretrained parts, each optional (the paper starts from four).

    part                  source, first that is given                   config key
    encoder + CTA         a Stage-1 directory                           model.init.stage1
    encoder               a DINOv2 Hugging Face directory               model.encoder.pretrained
    encoder               a VGGT checkpoint's DINO patch embed          model.init.vggt
    reconstruction        a VGGT checkpoint (aggregator, camera,        model.init.vggt
                          depth and point heads)
    LLM + tokenizer       a Hugging Face causal-LM directory            model.llm.pretrained

The paper's order: the student encoder starts from DINOv2 and Stage 1 distils its geometry
stream towards VGGT's own DINO (the geometry teacher), which is what VGGT's aggregator reads;
VGGT's patch embed is the encoder only when no DINOv2 is named.

Everything else (metric depth model, scene-frame head, 3D-patch embedding, projector,
grounding heads; any part with no source) starts from the seeded random init. `vidllm init`
writes the result as a model directory; Stage 2 builds the same assembly when it starts from a
Stage-1 directory, so a VGGT initialisation survives Stage 1 → Stage 2.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from vidllm.artifacts.model_dir import save_pretrained
from vidllm.attention_select import select_attn_implementation
from vidllm.config import ModelConfig, VidLLMConfig
from vidllm.errors import DataError
from vidllm.lora import apply_lora, count_parameters
from vidllm.models.convert import LoadReport, load_vggt_into, read_checkpoint
from vidllm.models.vidllm import VidLLM
from vidllm.tokenizer import SpecialTokenIds, add_special_tokens, load_tokenizer, train_tokenizer

RANDOM = "random init"


@dataclass
class Assembly:
    model: VidLLM
    tokenizer: PreTrainedTokenizerBase
    sources: dict[str, str] = field(default_factory=dict)  # part → where its weights came from
    vggt: LoadReport | None = None

    def describe(self) -> str:
        return "; ".join(f"{part}: {source}" for part, source in self.sources.items())


def assembly_tokenizer(cfg: ModelConfig, texts: list[str] | None = None,
                       tokenizer_dir: str | Path | None = None) -> tuple[PreTrainedTokenizerBase, str]:
    """(tokenizer, its source): `tokenizer_dir`, else the pretrained LLM's own tokenizer, each with
    the Vid-LLM tokens added; else a byte-level BPE trained on `texts` plus the built-in corpus."""
    source_dir = tokenizer_dir or cfg.llm.pretrained
    if source_dir is not None:
        return add_special_tokens(load_tokenizer(source_dir)), str(source_dir)
    return train_tokenizer(texts or [], vocab_size=cfg.llm.vocab_size), "BPE trained on the benchmark text"


def _stage1_encoder_config(stage1_dir: Path):
    from vidllm.train.stage1 import CONFIG_NAME, is_stage1_dir

    if not is_stage1_dir(stage1_dir):
        raise DataError(stage1_dir, "not a Stage-1 directory (its config.json lacks \"format\": \"vidllm-stage1\")")
    from vidllm.artifacts.model_dir import hf_config_from_dict

    return hf_config_from_dict(json.loads((stage1_dir / CONFIG_NAME).read_text())["encoder_hf_config"])


def assemble_model(cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase, attn_implementation: str = "sdpa",
                   tokenizer_source: str = "given") -> Assembly:
    """A `VidLLM` for `cfg` with every part loaded from its source (module docstring).

    The sources are `cfg.init.stage1`, `cfg.init.vggt`, `cfg.encoder.pretrained` and
    `cfg.llm.pretrained`; a missing or unreadable one is a DataError naming it, raised before
    the model is built where possible. Seed the RNG first for a reproducible random remainder.
    """
    stage1 = Path(cfg.init.stage1) if cfg.init.stage1 else None
    encoder_config = _stage1_encoder_config(stage1) if stage1 is not None else None
    vggt_state = read_checkpoint(cfg.init.vggt) if cfg.init.vggt else None
    vocab = max(cfg.llm.vocab_size, len(tokenizer))
    model = VidLLM(cfg, SpecialTokenIds.from_tokenizer(tokenizer), vocab, attn_implementation,
                   encoder_config=encoder_config)
    sources = {"encoder": f"DINOv2 {cfg.encoder.pretrained}" if cfg.encoder.pretrained and stage1 is None else RANDOM,
               "cta": RANDOM, "reconstruction": RANDOM,
               "metric_depth": RANDOM if model.reconstruction.metric_depth is not None else "none (w/o MD)",
               "llm": f"Hugging Face {cfg.llm.pretrained}" if cfg.llm.pretrained else RANDOM,
               "tokenizer": tokenizer_source}
    report = None
    if vggt_state is not None:
        vggt_encoder = stage1 is None and not cfg.encoder.pretrained
        parts = {"reconstruction": model.reconstruction, **({"encoder": model.encoder} if vggt_encoder else {})}
        report = load_vggt_into(parts, vggt_state)
        if report.loaded == 0:
            raise DataError(cfg.init.vggt, "no VGGT aggregator, head or patch-embed weights in this checkpoint")
        sources["reconstruction"] = f"VGGT {cfg.init.vggt}"
        if vggt_encoder:
            sources["encoder"] = f"VGGT {cfg.init.vggt}"
    if stage1 is not None:
        from vidllm.train.stage1 import load_encoder_and_cta

        load_encoder_and_cta(model, stage1)
        sources["encoder"] = sources["cta"] = f"Stage 1 {stage1}"
    return Assembly(model, tokenizer, sources, report)


@dataclass
class InitSummary:
    path: Path
    parameters: int
    trainable: int
    tokenizer_size: int
    vggt: LoadReport | None  # what a VGGT checkpoint provided, if one was loaded
    sources: dict[str, str] = field(default_factory=dict)  # part → where its weights came from


def _corpus_lines(paths: list[Path]) -> list[str]:
    lines: list[str] = []
    for path in paths:
        if not path.is_file():
            raise DataError(path, "corpus file not found")
        try:
            lines += [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except UnicodeDecodeError as exc:
            raise DataError(path, f"not UTF-8 text: {exc}") from None
    return lines


def init_model_dir(
    cfg: VidLLMConfig,
    out_dir: str | Path,
    corpus_files: list[Path] | None = None,
    tokenizer_dir: Path | None = None,
    lora: bool = True,
    seed: int = 0,
) -> InitSummary:
    """Write a model directory for `cfg` (what every `--model` argument accepts).

    The model is assembled from the pretrained parts the config names (`vidllm.assemble`:
    model.init.stage1, model.init.vggt, model.encoder.pretrained, model.llm.pretrained); every
    other part is random (seeded). The tokenizer is `tokenizer_dir`, else the pretrained LLM's,
    with the Vid-LLM tokens added, else a byte-level BPE trained on the built-in corpus plus the
    lines of `corpus_files`.
    """
    texts = _corpus_lines([Path(p) for p in corpus_files or []])
    tokenizer, tokenizer_source = assembly_tokenizer(cfg.model, texts, tokenizer_dir)
    torch.manual_seed(seed)
    attn = select_attn_implementation(cfg.model.llm.attn_implementation)
    assembly = assemble_model(cfg.model, tokenizer, attn, tokenizer_source)
    model = assembly.model
    if lora:
        apply_lora(model, cfg.model.llm)
    path = save_pretrained(model, out_dir, tokenizer, recipe=cfg.recipe)
    trainable, total = count_parameters(model)
    return InitSummary(path, total, trainable, len(tokenizer), assembly.vggt, assembly.sources)
