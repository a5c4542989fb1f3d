"""Can a fresh LLM learn to read a trained model's vision tokens, given many cheap QA steps?

The trained model's 3D-patch tokens (after the projector) are computed once per scene and frozen;
the LLM is re-initialised and trained on the scenes' ScanQA rows only (`--scenes-per-step` scenes a
step, every ScanQA row of each). `--variant blind` trains the same LLM, rows, seeds and steps with
the `<image>` token's embedding in place of the tokens: the control. Prints one JSON object with the
held-out (val-split) exact match per question family, teacher-forced (every answer token is the
argmax). If the vision row beats the blind one, the tokens carry what the answers need and the
joint Stage 2 does not give the LLM enough steps to learn to read them.

    python benchmarks/llm_readout.py --model RUN/model --shards SHARDS --variant full --steps 800
    python benchmarks/llm_readout.py --model RUN/model --shards SHARDS --variant blind --steps 800
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vidllm.artifacts.model_dir import load_pretrained  # noqa: E402
from vidllm.data.shards.format import ShardDataset  # noqa: E402
from vidllm.models.vidllm import VisionOutput  # noqa: E402
from vidllm.train.batches import _objects, encode_row, scene_split, train_instructions  # noqa: E402
from vision_probe import encode_scene  # noqa: E402  (benchmarks/ is the script's own folder)

FAMILIES = (("What color", "colour"), ("How many", "count"), ("Is there", "existence"))


def family(text: str) -> str:
    return next((name for prefix, name in FAMILIES if text.startswith(prefix)), "other")


@torch.no_grad()
def cached_scenes(model, tokenizer, shards: str, geometry: str, max_text_tokens: int) -> dict[str, list[dict]]:
    """Per split: every scene with ScanQA rows → its vision tokens `[N, D]` and encoded rows."""
    out: dict[str, list[dict]] = {"train": [], "val": []}
    for sample in ShardDataset(shards):
        split = scene_split(sample)
        if split not in out:
            continue
        vision, targets = encode_scene(model, sample, geometry)
        centre = targets["first_camera_center"][0].tolist()
        objects = _objects(sample["meta"])
        rows = [(r, encode_row(r, tokenizer, objects, centre, max_text_tokens))
                for r in train_instructions(sample, split) if r["task"] == "scanqa"]
        if rows:
            out[split].append({"tokens": vision.tokens[0][vision.mask[0]].clone(), "rows": rows})
    return out


def forward_rows(model, items: list[tuple[dict, tuple]], blind: bool, image_embed: torch.Tensor, pad_id: int):
    """(scene, (record, row)) pairs → (supervised logits `[N, V]`, targets `[N]`, labels `[R, L]`)."""
    scenes: list[dict] = []
    index: dict[int, int] = {}
    for scene, _ in items:
        if id(scene) not in index:
            index[id(scene)] = len(scenes)
            scenes.append(scene)
    if blind:
        tokens = image_embed.expand(len(scenes), 1, -1).clone()
        mask = torch.ones(len(scenes), 1, dtype=torch.bool)
    else:
        width = max(s["tokens"].shape[0] for s in scenes)
        tokens = torch.zeros(len(scenes), width, scenes[0]["tokens"].shape[1])
        mask = torch.zeros(len(scenes), width, dtype=torch.bool)
        for i, s in enumerate(scenes):
            tokens[i, : s["tokens"].shape[0]] = s["tokens"]
            mask[i, : s["tokens"].shape[0]] = True
    vision = VisionOutput(None, tokens, mask, None, mask, None, None, None)
    length = max(len(row.input_ids) for _, (_, row) in items)
    ids = torch.full((len(items), length), pad_id)
    labels = torch.full((len(items), length), -100)
    attention = torch.zeros(len(items), length, dtype=torch.long)
    for k, (_, (_, row)) in enumerate(items):
        ids[k, : len(row.input_ids)] = torch.tensor(row.input_ids)
        labels[k, : len(row.labels)] = torch.tensor(row.labels)
        attention[k, : len(row.input_ids)] = 1
    scene_index = torch.tensor([index[id(s)] for s, _ in items])
    out = model(None, ids, attention, labels, vision=vision, scene_index=scene_index)
    return out["supervised_logits"], out["supervised_targets"], labels


@torch.no_grad()
def exact_match(model, scenes: list[dict], blind: bool, image_embed: torch.Tensor, pad_id: int) -> dict[str, float]:
    hits, total = Counter(), Counter()
    for scene in scenes:
        items = [(scene, row) for row in scene["rows"]]
        logits, targets, labels = forward_rows(model, items, blind, image_embed, pad_id)
        correct = (logits.argmax(-1) == targets).tolist()
        start = 0
        for (record, _), count in zip(scene["rows"], (labels != -100).sum(1).tolist()):
            ok = all(correct[start:start + count])
            start += count
            for key in (family(record["text"]), "all"):
                hits[key] += ok
                total[key] += 1
    return {key: round(hits[key] / total[key], 4) for key in sorted(total)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="trained model directory (RUN_DIR/model)")
    parser.add_argument("--shards", required=True, help="shard dataset with train and val scenes")
    parser.add_argument("--variant", choices=("full", "blind"), default="full")
    parser.add_argument("--geometry", choices=("predicted", "ground_truth"), default="predicted",
                        help="where the 3D patches sit (the model's reconstruction or ground truth)")
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--scenes-per-step", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    model, tokenizer = load_pretrained(args.model)
    model.eval()
    start = time.perf_counter()
    scenes = cached_scenes(model, tokenizer, args.shards, args.geometry, model.config.llm.max_position_embeddings)
    cache_seconds = time.perf_counter() - start
    if len(scenes["train"]) < args.scenes_per_step or not scenes["val"]:
        print(f"{args.shards}: needs ≥ {args.scenes_per_step} train and ≥ 1 val scenes with ScanQA rows, "
              f"found {len(scenes['train'])} and {len(scenes['val'])}", file=sys.stderr)
        return 2

    llm = model.llm
    llm.apply(llm._init_weights)  # a fresh LLM: what it learns here, it learns from these rows
    for p in model.parameters():
        p.requires_grad_(False)
    for p in llm.parameters():
        p.requires_grad_(True)
    image_embed = llm.get_input_embeddings().weight[model.special_ids.image].detach().clone()
    pad_id = tokenizer.pad_token_id or 0
    blind = args.variant == "blind"
    optimizer = torch.optim.AdamW(llm.parameters(), lr=args.lr, weight_decay=0.01)
    rng = random.Random(args.seed)
    start = time.perf_counter()
    loss_value = float("nan")
    for step in range(args.steps):
        for group in optimizer.param_groups:  # 50 warm-up steps, then cosine to 0
            group["lr"] = args.lr * min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        picks = rng.sample(scenes["train"], args.scenes_per_step)
        logits, targets, _ = forward_rows(model, [(s, r) for s in picks for r in s["rows"]], blind, image_embed,
                                          pad_id)
        loss = F.cross_entropy(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(llm.parameters(), 1.0)
        optimizer.step()
        loss_value = float(loss.detach())
        if step % 100 == 0:
            print(f"step {step} loss {loss_value:.3f}", file=sys.stderr, flush=True)
    train_seconds = time.perf_counter() - start
    print(json.dumps({"variant": args.variant, "geometry": args.geometry, "steps": args.steps,
                      "final_loss": loss_value, "val_exact_match": exact_match(model, scenes["val"], blind,
                                                                               image_embed, pad_id),
                      "train_exact_match": exact_match(model, scenes["train"], blind, image_embed, pad_id),
                      "scenes": {k: len(v) for k, v in scenes.items()},
                      "seconds": {"cache": round(cache_seconds, 1), "train": round(train_seconds, 1)}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
