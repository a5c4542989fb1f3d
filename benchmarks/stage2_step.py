"""Stage-2 step speed: the shared vision prefix against splicing the vision tokens into every row.

On generated scenes of the recipe (train split only), one Stage-2 batch of `--batch-size` scenes
with `--instructions` instructions each is built, and a full step (forward, backward, AdamW) of
`Stage2Objective` is timed for both LLM paths in interleaved rounds (median reported). Also:

- FLOPs of one forward + backward per path, counted with `torch.utils.flop_counter`;
- achieved FLOP/s ÷ the FLOP/s of a plain fp32 matmul timed in the same process, of the shape of
  the LLM's largest linear layer over the step's text tokens (and a 1024² matmul for reference);
- forward time per part (encoder, CTA, aggregator, camera / depth / point heads, metric depth,
  LLM) — where the step goes;
- peak memory per path: in a child process that runs only that path, the peak RSS during 3 steps
  and its growth over the RSS before them (activations and gradients of a step).

    python benchmarks/stage2_step.py                       # demo recipe, 32 instructions, 1 scene
    python benchmarks/stage2_step.py --batch-size 2 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build(recipe: str, batch_size: int, instructions: int, overrides: list[str], root: Path,
          config_path: str | None = None):
    """(objective factory(share) → Stage2Objective, batch, cfg) on generated train-split scenes."""
    import torch

    from vidllm.config import load_config
    from vidllm.data.prepare import write_scenes_in_process
    from vidllm.data.shards.format import ShardDataset
    from vidllm.data.synthetic.generate import generate_dataset
    from vidllm.losses import Stage2LossWeights
    from vidllm.train.batches import is_training_scene, stage2_batch
    from vidllm.train.stage2 import Stage2Objective, build_stage2_model

    cfg = load_config(recipe, config_path, overrides=[f"train.instructions_per_scene={instructions}", *overrides])
    shards = root / "shards"
    if not (shards / "manifest.parquet").exists():
        dataset = generate_dataset(root / "scannet", cfg.data.synth, progress=False)
        shards.mkdir(parents=True, exist_ok=True)
        write_scenes_in_process([(s.scene_id, s.path) for s in dataset.scenes], dataset.annotations_dir, shards,
                                cfg.data.prep, label_map=str(dataset.label_map))
    samples = [s for s in ShardDataset(str(shards)) if is_training_scene(s)][:batch_size]
    torch.manual_seed(0)
    model, tokenizer = build_stage2_model(cfg, str(shards), None)
    batch = stage2_batch(samples, tokenizer, instructions_per_scene=instructions,
                         max_text_tokens=cfg.train.max_text_tokens, max_proposals=cfg.model.grounding.max_proposals,
                         pad_id=model.special_ids.pad, seed=0, step=0)
    weights = Stage2LossWeights.from_mapping(cfg.train.loss_weights)

    def objective(share: bool) -> Stage2Objective:
        return Stage2Objective(model, weights, share_vision_prefix=share)

    return objective, batch, cfg, model


def step_fn(objective, batch):
    import torch

    params = [p for p in objective.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)

    def step() -> dict:
        losses = objective(batch)
        optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        optimizer.step()
        return losses

    return step


def count_flops(objective, batch) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        objective(batch)["total"].backward()
    objective.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def matmul_flops_per_s(m: int, k: int, n: int, seconds: float = 1.0) -> float:
    import torch

    a, b = torch.randn(m, k), torch.randn(k, n)
    for _ in range(3):
        a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2.0 * m * k * n * count / (time.perf_counter() - start)


def part_times(model, batch, share: bool, weights, repeats: int = 3) -> dict[str, float]:
    """Forward seconds per part (median of `repeats`), measured by module hooks in one forward."""
    import torch

    from vidllm.models.llm import decoder_of

    parts = {"encoder": model.encoder, "cta": model.cta, "aggregator": model.reconstruction.aggregator,
             "camera_head": model.reconstruction.camera_head, "depth_head": model.reconstruction.depth_head,
             "metric_depth": model.reconstruction.metric_depth, "llm": decoder_of(model.llm),
             "lm_head": model.llm.get_output_embeddings()}
    if model.reconstruction.point_head is not None:
        parts["point_head"] = model.reconstruction.point_head
    samples: dict[str, list[float]] = {k: [] for k in parts}
    total: list[float] = []
    starts: dict[str, float] = {}
    acc: dict[str, float] = {}
    handles = []
    for name, module in parts.items():
        handles.append(module.register_forward_pre_hook(lambda m, a, n=name: starts.__setitem__(n, time.perf_counter())))
        handles.append(module.register_forward_hook(
            lambda m, a, o, n=name: acc.__setitem__(n, acc.get(n, 0.0) + time.perf_counter() - starts[n])))
    from vidllm.train.stage2 import Stage2Objective

    objective = Stage2Objective(model, weights, share_vision_prefix=share)
    try:
        with torch.no_grad():
            for _ in range(repeats):
                acc.clear()
                start = time.perf_counter()
                objective(batch)
                total.append(time.perf_counter() - start)
                for k in parts:
                    samples[k].append(acc.get(k, 0.0))
    finally:
        for h in handles:
            h.remove()
    forward = statistics.median(total)
    out = {k: round(statistics.median(v), 4) for k, v in samples.items()}
    out["forward_total"] = round(forward, 4)
    return out


def _child(args_json: str) -> None:
    """One path alone in a fresh process: RSS before the steps and its peak during 3 steps (bytes),
    sampled every 2 ms by a thread (ru_maxrss would also count model building)."""
    import threading

    import torch

    args = json.loads(args_json)
    torch.set_num_threads(args["threads"])
    objective, batch, _, _ = build(args["recipe"], args["batch_size"], args["instructions"], args["overrides"],
                                   Path(args["root"]), args["config"])
    step = step_fn(objective(args["share"]), batch)
    import psutil

    step()  # warm-up: lazy allocations and optimizer state
    process = psutil.Process()
    before = process.memory_info().rss
    peak, done = [before], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    for _ in range(3):
        step()
    done.set()
    sampler.join()
    print(json.dumps({"rss_before": before, "peak_rss": peak[0]}))


def main() -> None:
    from vidllm.config import add_config_options

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_options(parser, recipe="demo", recipe_help="recipe (default: demo)",
                       set_help="config override, repeatable (e.g. train.loss_weights.point=0)")
    parser.add_argument("--batch-size", type=int, default=1, help="scenes per step (default: 1)")
    parser.add_argument("--instructions", type=int, default=32, help="instructions per scene (default: 32)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (default: 5)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    parser.add_argument("--no-memory", action="store_true", help="skip the child-process memory measurement")
    parser.add_argument("--_child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        _child(args._child)
        return

    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="vidllm-bench-stage2-") as tmp:
        root = Path(tmp)
        objective, batch, cfg, model = build(args.recipe, args.batch_size, args.instructions, args.overrides, root,
                                             args.config)
        rows = int(batch["input_ids"].shape[0])
        text_tokens = int(batch["attention_mask"].sum())
        paths = {"shared": objective(True), "spliced": objective(False)}
        steps = {name: step_fn(obj, batch) for name, obj in paths.items()}
        for step in steps.values():  # warm-up (allocations, lazy init)
            step()
        times: dict[str, list[float]] = {name: [] for name in steps}
        for _ in range(args.rounds):
            for name, step in steps.items():
                start = time.perf_counter()
                step()
                times[name].append(time.perf_counter() - start)
        seconds = {k: statistics.median(v) for k, v in times.items()}
        flops = {name: count_flops(obj, batch) for name, obj in paths.items()}
        llm_cfg = cfg.model.llm
        # The LLM's MLP up-projection over the step's text tokens: the largest matmul of the step.
        matmul_shape = (max(256, text_tokens), llm_cfg.hidden_size, llm_cfg.intermediate_size)
        matmul_rate = matmul_flops_per_s(*matmul_shape)
        matmul_1024 = matmul_flops_per_s(1024, 1024, 1024)
        parts = {name: part_times(model, batch, name == "shared", paths[name].weights) for name in paths}
        result: dict = {
            "benchmark": "stage2_step", "recipe": args.recipe, "batch_size": args.batch_size,
            "instructions_per_scene": args.instructions, "rows": rows, "text_tokens": text_tokens,
            "overrides": args.overrides, "frames": cfg.model.frames, "image_hw": cfg.model.image_size,
            "threads": args.threads, "rounds": args.rounds,
            "machine": f"{platform.machine()}, {os.cpu_count()} cpu",
        }
        for name in paths:
            result[name] = {
                "step_s": round(seconds[name], 4),
                "step_s_range": [round(min(times[name]), 4), round(max(times[name]), 4)],
                "instructions_per_s": round(rows / seconds[name], 2),
                "gflop_per_step": round(flops[name] / 1e9, 3),
                "gflop_per_s": round(flops[name] / seconds[name] / 1e9, 2),
                "flop_rate_vs_matmul": round(flops[name] / seconds[name] / matmul_rate, 3),
                "forward_parts_s": parts[name],
            }
        result["matmul"] = {"shape_mkn": list(matmul_shape), "gflop_per_s": round(matmul_rate / 1e9, 2),
                            "gflop_per_s_1024": round(matmul_1024 / 1e9, 2)}
        result["speedup_instructions_per_s"] = round(seconds["spliced"] / seconds["shared"], 3)
        result["flop_ratio_spliced_over_shared"] = round(flops["spliced"] / flops["shared"], 3)
        if not args.no_memory:
            for name, share in (("shared", True), ("spliced", False)):
                payload = json.dumps({"recipe": args.recipe, "config": args.config, "batch_size": args.batch_size,
                                      "instructions": args.instructions, "overrides": args.overrides,
                                      "root": str(root), "share": share, "threads": args.threads})
                out = subprocess.run([sys.executable, __file__, "--_child", payload], check=True,
                                     capture_output=True, text=True).stdout.strip().splitlines()[-1]
                mem = json.loads(out)
                result[name]["peak_rss_mb"] = round(mem["peak_rss"] / 2**20, 1)
                result[name]["step_rss_growth_mb"] = round((mem["peak_rss"] - mem["rss_before"]) / 2**20, 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
