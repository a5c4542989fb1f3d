"""`vidllm init`: write a model directory (weights, config, tokenizer) for a recipe.

The directory is what every `--model` argument accepts. It is assembled from the pretrained
parts given (`vidllm.assemble`), each optional: `--stage1` (encoder + CTA), `--vggt` (the
reconstruction branch, and the encoder when there is no Stage-1 directory), `--llm` (LLM and
tokenizer); the rest is random (seeded). Without `--llm` or `--tokenizer`, the tokenizer is a
byte-level BPE trained offline on benchmark-style text (plus the lines of `--corpus` files).

    vidllm init --recipe paper --stage1 runs/x/stage1_model --vggt vggt-1b/model.safetensors \
        --llm qwen2-7b-instruct --out models/vidllm-paper-init
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vidllm.config import add_config_options, config_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_options(parser, recipe="tiny", recipe_help="recipe: tiny, demo or paper (default: tiny)",
                       config_help="optional YAML config applied over the recipe",
                       set_help="dotted config override, repeatable (e.g. model.llm.lora_r=0)")
    parser.add_argument("--out", required=True, help="model directory to write (replaced atomically if it exists)")
    parser.add_argument("--corpus", action="append", default=[], metavar="FILE",
                        help="text file(s) whose lines are added to the tokenizer training text (repeatable)")
    parser.add_argument("--tokenizer", default=None,
                        help="existing tokenizer directory to use instead of training one (Vid-LLM tokens are added)")
    parser.add_argument("--stage1", default=None, metavar="DIR",
                        help="Stage-1 directory (`vidllm train --stage 1`) whose encoder + CTA to use "
                             "(sets model.init.stage1)")
    parser.add_argument("--vggt", default=None, metavar="PATH",
                        help="VGGT checkpoint (.safetensors, or a torch state dict read with weights_only) for the "
                             "reconstruction branch and, without --stage1, the encoder; the recipe's encoder and "
                             "aggregator sizes must match it (the paper recipe does) (sets model.init.vggt)")
    parser.add_argument("--llm", default=None, metavar="DIR",
                        help="Hugging Face causal-LM directory: the LLM and its tokenizer (sets model.llm.pretrained; "
                             "the recipe's inline LLM architecture is then ignored)")
    parser.add_argument("--no-lora", action="store_true", help="save without LoRA adapters even if lora_r > 0")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the initial weights (default: 0)")


def run(args: argparse.Namespace) -> int:
    from vidllm.assemble import init_model_dir  # imports torch/transformers only when used

    overrides = []
    for key, value in (("model.init.stage1", args.stage1), ("model.init.vggt", args.vggt),
                       ("model.llm.pretrained", args.llm)):
        if value is not None:
            overrides.append(f"{key}={value}")
    cfg = config_from_args(args, overrides)
    summary = init_model_dir(
        cfg, args.out,
        corpus_files=[Path(p) for p in args.corpus],
        tokenizer_dir=Path(args.tokenizer) if args.tokenizer else None,
        lora=not args.no_lora,
        seed=args.seed,
    )
    if summary.vggt is not None:
        print(f"VGGT {cfg.model.init.vggt}: {summary.vggt.summary()}")
        for key in summary.vggt.unexpected:
            print(f"  unexpected (not loaded): {key}")
    for part, source in summary.sources.items():
        print(f"  {part:<15} {source}")
    print(f"wrote {summary.path} (recipe {cfg.recipe}, {summary.parameters:,} parameters, "
          f"{summary.trainable:,} trainable, tokenizer {summary.tokenizer_size} tokens)")
    return 0
