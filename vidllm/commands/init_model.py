"""`vidllm init`: write a random-init model directory (weights, config, tokenizer) for a recipe.

The directory is what every `--model` argument accepts; it is meant for smoke runs and tests.
The tokenizer is a byte-level BPE trained offline on benchmark-style text (plus the lines of
`--corpus` files, e.g. annotation questions and answers).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vidllm.config import load_config
from vidllm.errors import DataError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", default="tiny", help="recipe: tiny, demo or paper (default: tiny)")
    parser.add_argument("--out", required=True, help="model directory to write (replaced atomically if it exists)")
    parser.add_argument("--config", default=None, help="optional YAML config applied over the recipe")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="dotted config override, repeatable (e.g. model.llm.lora_r=0)")
    parser.add_argument("--corpus", action="append", default=[], metavar="FILE",
                        help="text file(s) whose lines are added to the tokenizer training text (repeatable)")
    parser.add_argument("--tokenizer", default=None,
                        help="existing tokenizer directory to use instead of training one (Vid-LLM tokens are added)")
    parser.add_argument("--no-lora", action="store_true", help="save without LoRA adapters even if lora_r > 0")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the initial weights (default: 0)")


def run(args: argparse.Namespace) -> int:
    import torch

    from vidllm.attention_select import select_attn_implementation
    from vidllm.checkpoint import save_pretrained
    from vidllm.lora import apply_lora, count_parameters
    from vidllm.models.vidllm import VidLLM
    from vidllm.tokenizer import SpecialTokenIds, add_special_tokens, load_tokenizer, train_tokenizer

    cfg = load_config(args.recipe, args.config, args.overrides)
    texts: list[str] = []
    for corpus in args.corpus:
        path = Path(corpus)
        if not path.is_file():
            raise DataError(path, "corpus file not found")
        try:
            texts += [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except UnicodeDecodeError as exc:
            raise DataError(path, f"not UTF-8 text: {exc}") from None
    vocab = cfg.model.llm.vocab_size
    if args.tokenizer:
        tokenizer = add_special_tokens(load_tokenizer(args.tokenizer))
    else:
        tokenizer = train_tokenizer(texts, vocab_size=vocab)
    vocab = max(vocab, len(tokenizer))
    torch.manual_seed(args.seed)
    attn = select_attn_implementation(cfg.model.llm.attn_implementation)
    model = VidLLM(cfg.model, SpecialTokenIds.from_tokenizer(tokenizer), vocab, attn)
    if not args.no_lora:
        apply_lora(model, cfg.model.llm)
    out = save_pretrained(model, args.out, tokenizer, recipe=cfg.recipe)
    trainable, total = count_parameters(model)
    print(f"wrote {out} (recipe {cfg.recipe}, {total:,} parameters, {trainable:,} trainable, tokenizer {len(tokenizer)} tokens)")
    return 0
