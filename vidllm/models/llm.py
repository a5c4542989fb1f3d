"""The language model: any Hugging Face causal LM fed `inputs_embeds`, with the vision tokens
spliced in at the `<image>` placeholder (one row per instruction), or run once per scene as a
shared prefix whose key/value cache the instruction suffixes attend to (`run_shared_prefix`)."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from transformers import AutoModelForCausalLM, DynamicCache, LlamaConfig, PretrainedConfig, PreTrainedModel, Qwen2Config

from vidllm.config import LLMConfig


def llm_config(cfg: LLMConfig, vocab_size: int | None = None) -> Qwen2Config | LlamaConfig:
    """The inline architecture of `cfg` as a transformers config (the paper recipe is Qwen2.5-7B's)."""
    cls = Qwen2Config if cfg.architecture == "qwen2" else LlamaConfig
    return cls(
        vocab_size=vocab_size or cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        rope_theta=cfg.rope_theta,
        tie_word_embeddings=False,
    )


def build_causal_lm(
    cfg: LLMConfig, attn_implementation: str, vocab_size: int | None = None, hf_config: PretrainedConfig | None = None
) -> PreTrainedModel:
    """`AutoModelForCausalLM` from `hf_config` (a saved model's exact architecture, random
    weights), from `cfg.pretrained` (local path), or from the inline architecture.

    `vocab_size` (e.g. the tokenizer length after adding `<image>`, `<ground>`, `<obj>`) resizes
    a pretrained model's embeddings when larger than its vocabulary.
    """
    if hf_config is not None:
        return AutoModelForCausalLM.from_config(hf_config, attn_implementation=attn_implementation)
    if cfg.pretrained is not None:
        model = AutoModelForCausalLM.from_pretrained(cfg.pretrained, attn_implementation=attn_implementation)
        if vocab_size is not None and vocab_size > model.get_input_embeddings().num_embeddings:
            model.resize_token_embeddings(vocab_size)
        return model
    return AutoModelForCausalLM.from_config(llm_config(cfg, vocab_size), attn_implementation=attn_implementation)


def splice_vision_tokens(
    text_embeds: Tensor,
    input_ids: Tensor,
    attention_mask: Tensor,
    image_token_id: int,
    vision_tokens: Tensor,
    vision_mask: Tensor,
    labels: Tensor | None = None,
) -> dict[str, Tensor]:
    """Replace the single `<image>` placeholder of each row by that row's valid vision tokens.

    Rows keep their own padding; rows are then right-padded to the longest result. Labels of
    vision positions (and of padding) are -100.

    Args:
        text_embeds `[B, L, D]`, input_ids / attention_mask `[B, L]`, vision_tokens `[B, N, D]`,
        vision_mask `[B, N]` bool, labels `[B, L]` or None.
    Returns:
        dict with `inputs_embeds [B, L', D]`, `attention_mask [B, L']`, `labels [B, L']` (if
        given) and `position_map [B, L]`: the new index of every original text position.
    """
    batch, length, dim = text_embeds.shape
    rows_embeds, rows_mask, rows_labels, position_map = [], [], [], []
    for b in range(batch):
        where = (input_ids[b] == image_token_id).nonzero().flatten()
        if where.numel() != 1:
            raise ValueError(f"row {b}: expected exactly one <image> token (id {image_token_id}), found {where.numel()}")
        i = int(where)
        vis = vision_tokens[b][vision_mask[b]].to(text_embeds.dtype)
        n = vis.shape[0]
        rows_embeds.append(torch.cat([text_embeds[b, :i], vis, text_embeds[b, i + 1 :]]))
        rows_mask.append(torch.cat([attention_mask[b, :i], attention_mask.new_ones(n), attention_mask[b, i + 1 :]]))
        if labels is not None:
            rows_labels.append(torch.cat([labels[b, :i], labels.new_full((n,), -100), labels[b, i + 1 :]]))
        index = torch.arange(length, device=input_ids.device)
        position_map.append(torch.where(index < i, index, index + n - 1))
    width = max(r.shape[0] for r in rows_embeds)
    embeds = text_embeds.new_zeros(batch, width, dim)
    mask = attention_mask.new_zeros(batch, width)
    out_labels = labels.new_full((batch, width), -100) if labels is not None else None
    for b in range(batch):
        n = rows_embeds[b].shape[0]
        embeds[b, :n] = rows_embeds[b]
        mask[b, :n] = rows_mask[b]
        if out_labels is not None:
            out_labels[b, :n] = rows_labels[b]
    out = {"inputs_embeds": embeds, "attention_mask": mask, "position_map": torch.stack(position_map)}
    if out_labels is not None:
        out["labels"] = out_labels
    return out


def decoder_of(llm: nn.Module) -> nn.Module:
    """The transformer body of a causal LM (peft-wrapped or not): embeddings in, final-normed
    hidden states out, no LM head. LoRA layers injected by peft live inside it."""
    base = llm.get_base_model() if hasattr(llm, "get_base_model") else llm
    return base.get_decoder()


def select_cache(cache: DynamicCache, index: Tensor, config: PretrainedConfig) -> DynamicCache:
    """A new cache holding batch rows `index` of `cache` (rows may repeat). Differentiable: the
    selected keys/values keep their graph, so gradients of later tokens reach the prefix."""
    out = DynamicCache(config=config)
    for layer_idx, layer in enumerate(cache.layers):
        out.update(layer.keys.index_select(0, index), layer.values.index_select(0, index), layer_idx)
    return out


def run_shared_prefix(
    decoder: nn.Module, prefix_embeds: Tensor, prefix_mask: Tensor, suffix_embeds: Tensor, suffix_mask: Tensor,
    row_prefix: Tensor,
) -> Tensor:
    """Run each prefix once, then every suffix row against its prefix's key/value cache.

    Equivalent to running `prefix[row_prefix[r]]` (its valid tokens only) followed by suffix `r`
    as one causal sequence, for every row r; the prefix work is done once per prefix.

    Args:
        prefix_embeds `[P, Lp, D]`, prefix_mask `[P, Lp]` (valid tokens left-packed, ≥ 1 per prefix),
        suffix_embeds `[R, Ls, D]`, suffix_mask `[R, Ls]` (right padding), row_prefix `[R]`.
    Returns:
        hidden `[R, 1 + Ls, D]`: index 0 is the last valid prefix token of the row's prefix (it
        predicts the first suffix token), index k ≥ 1 is suffix token k − 1.
    """
    prefix_mask = prefix_mask.to(torch.long)
    prefix = decoder(inputs_embeds=prefix_embeds, attention_mask=prefix_mask, use_cache=True)
    lengths = prefix_mask.sum(1)  # [P] valid prefix tokens
    last = prefix.last_hidden_state[torch.arange(prefix_embeds.shape[0], device=lengths.device), lengths - 1]
    cache = select_cache(prefix.past_key_values, row_prefix, decoder.config)
    width = suffix_embeds.shape[1]
    positions = lengths[row_prefix][:, None] + torch.arange(width, device=lengths.device)
    mask = torch.cat([prefix_mask[row_prefix], suffix_mask.to(torch.long)], dim=1)
    suffix = decoder(inputs_embeds=suffix_embeds, attention_mask=mask, position_ids=positions,
                     past_key_values=cache, use_cache=False)
    return torch.cat([last[row_prefix][:, None], suffix.last_hidden_state], dim=1)
