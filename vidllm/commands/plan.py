"""`vidllm plan`: parameter counts, trainable counts under LoRA, FLOPs and activation memory of
a recipe, measured on the meta device (no weights are read or allocated)."""

from __future__ import annotations

import argparse
import json

from vidllm.config import add_config_options, config_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_options(parser, recipe_help="recipe to plan: tiny, demo or paper (default: paper)",
                       config_help="optional YAML config applied over the recipe",
                       set_help="dotted config override, repeatable (e.g. model.cta.num_bridge_tokens=8)")
    parser.add_argument("--frames", type=int, default=None, help="frames per clip (default: the recipe's model.frames)")
    parser.add_argument("--image-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                        help="input size, multiples of the patch size (default: the recipe's model.image_size)")
    parser.add_argument("--text-tokens", type=int, default=128, help="text tokens per instruction (default: 128)")
    parser.add_argument("--batch", type=int, default=1, help="scenes per step (default: 1)")
    parser.add_argument("--json", action="store_true", help="print the full plan as JSON instead of a table")


def _format_count(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return str(int(n))


def run(args: argparse.Namespace) -> int:
    from vidllm.plan import plan_model  # imports torch/transformers only when used

    cfg = config_from_args(args)
    image_hw = tuple(args.image_size) if args.image_size else None
    plan = plan_model(cfg, frames=args.frames, image_hw=image_hw, text_tokens=args.text_tokens, batch=args.batch)
    if args.json:
        print(json.dumps(plan, indent=2))
        return 0
    setting = plan["setting"]
    print(f"recipe {plan['recipe']}: {setting['batch']}×{setting['frames']} frames at "
          f"{setting['image_hw'][0]}×{setting['image_hw'][1]}, {setting['vision_tokens']} vision + "
          f"{setting['text_tokens']} text tokens, {setting['dtype']}")
    print(f"{'module':<20}{'params':>12}{'fwd GFLOPs':>14}{'activ. GiB':>12}")
    for name, count in plan["parameters"].items():
        if name in ("total", "reconstruction"):
            continue
        mod = plan["per_module"].get(name, {})
        flops = f"{mod['forward_gflops']:.1f}" if mod else "-"
        act = f"{mod['activation_gib']:.2f}" if mod else "-"
        print(f"{name:<20}{_format_count(count):>12}{flops:>14}{act:>12}")
    totals = plan["totals"]
    print(f"total parameters {_format_count(totals['parameters'])}, trainable under LoRA "
          f"{_format_count(totals['trainable'])} (adapters {_format_count(plan['trainable_under_lora']['lora_adapters'])}, "
          f"token rows {_format_count(plan['trainable_under_lora']['token_rows'])})")
    print(f"train step: {totals['train_step_tflops']:.1f} TFLOPs, activations {totals['activation_gib']:.1f} GiB, "
          f"weights {totals['weights_gib']:.1f} GiB, optimizer {totals['optimizer_state_gib']:.1f} GiB")
    return 0
