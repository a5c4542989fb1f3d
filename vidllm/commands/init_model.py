"""`vidllm init`: write a model directory (weights, config, tokenizer) for a recipe.

The directory is what every `--model` argument accepts. Weights are random (for smoke runs
and tests) unless `--vggt` loads a VGGT checkpoint into the shared encoder and the
reconstruction branch. The tokenizer is a byte-level BPE trained offline on benchmark-style
text (plus the lines of `--corpus` files), or an existing one given with `--tokenizer`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vidllm.config import load_config


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
    parser.add_argument("--vggt", default=None, metavar="PATH",
                        help="VGGT checkpoint (.safetensors, or a torch state dict read with weights_only) to load "
                             "into the shared encoder and reconstruction branch; the recipe's encoder/aggregator "
                             "sizes must match it (the paper recipe does). Default: random weights")
    parser.add_argument("--no-lora", action="store_true", help="save without LoRA adapters even if lora_r > 0")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the initial weights (default: 0)")


def run(args: argparse.Namespace) -> int:
    from vidllm.checkpoint import init_model_dir  # imports torch/transformers only when used

    cfg = load_config(args.recipe, args.config, args.overrides)
    summary = init_model_dir(
        cfg, args.out,
        corpus_files=[Path(p) for p in args.corpus],
        tokenizer_dir=Path(args.tokenizer) if args.tokenizer else None,
        lora=not args.no_lora,
        seed=args.seed,
        vggt_checkpoint=Path(args.vggt) if args.vggt else None,
    )
    if summary.vggt is not None:
        print(f"VGGT {args.vggt}: {summary.vggt.summary()}")
        for key in summary.vggt.unexpected:
            print(f"  unexpected (not loaded): {key}")
    print(f"wrote {summary.path} (recipe {cfg.recipe}, {summary.parameters:,} parameters, "
          f"{summary.trainable:,} trainable, tokenizer {summary.tokenizer_size} tokens)")
    return 0
