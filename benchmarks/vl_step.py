"""Vision-language side of Vid-LLM: one Stage-2 step, one vision pass, and decoding speed.

Prints JSON: model build time, `encode_video` time, a full training step (forward +
backward, LoRA on the LLM, 2 instructions sharing one vision pass), greedy decoding
tokens/s with the KV cache versus recomputing the sequence each step, and the time of
`plan_model` for the paper recipe (meta device).

    python benchmarks/vl_step.py --recipe demo --new-tokens 16 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time


def _timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="demo", help="recipe to benchmark (default: demo)")
    parser.add_argument("--new-tokens", type=int, default=16, help="tokens to decode (default: 16)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats per measurement, median reported (default: 3)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    args = parser.parse_args()

    import torch

    from vidllm.config import load_config
    from vidllm.lora import apply_lora
    from vidllm.losses import vl_loss
    from vidllm.models.vidllm import VidLLM
    from vidllm.plan import plan_model
    from vidllm.tokenizer import EOS, SpecialTokenIds, build_prompt, train_tokenizer

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = load_config(args.recipe)
    mcfg = cfg.model
    tokenizer = train_tokenizer(vocab_size=mcfg.llm.vocab_size)
    start = time.perf_counter()
    model = apply_lora(VidLLM(mcfg, SpecialTokenIds.from_tokenizer(tokenizer), mcfg.llm.vocab_size), mcfg.llm)
    build_s = time.perf_counter() - start
    height, width = mcfg.image_size
    images = torch.rand(1, mcfg.frames, 3, height, width)
    texts = [build_prompt("What color is the chair near the wall?") + f" brown{EOS}",
             build_prompt("How many chairs are in the room?") + f" 4{EOS}"]
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def train_step() -> None:
        vision = model.encode_video(images)
        out = model(None, enc["input_ids"], enc["attention_mask"], labels, vision=vision,
                    scene_index=torch.tensor([0, 0]))
        recon = out["recon"]
        loss = vl_loss(out)["total"] + recon["depth"].mean() + recon["pose_enc"].square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    model.train()
    train_step()  # warm-up
    step_s = _timed(train_step, args.repeats)

    model.eval()
    with torch.no_grad():
        encode_s = _timed(lambda: model.encode_video(images), args.repeats)
        vision = model.encode_video(images)
    prompt = build_prompt("What is next to the brown table?")
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    from vidllm.models.llm import decoder_of, select_cache, splice_vision_tokens

    with torch.no_grad():
        spliced = splice_vision_tokens(model.llm.get_input_embeddings()(ids), ids, torch.ones_like(ids),
                                       model.special_ids.image, vision.tokens, vision.mask)
        embeds = spliced["inputs_embeds"]
        # Decode exactly N tokens (eos disabled) so both ways do the same work.
        eos = model.special_ids.eos
        model.special_ids = SpecialTokenIds(**{**model.special_ids.to_dict(), "eos": -1})
        image_at = int((ids[0] == model.special_ids.image).nonzero())
        embed = model.llm.get_input_embeddings()
        cache, prefix_mask = model._vision_prefix(vision, embed(ids[:, :image_at]))
        suffix = embed(ids[:, image_at + 1:])
        index = torch.zeros(1, dtype=torch.long)
        config = decoder_of(model.llm).config
        # Prefix once (as generate does per scene), then each decode from a copy of its cache.
        cached_s = _timed(lambda: model._greedy(select_cache(cache, index, config), prefix_mask, suffix,
                                                args.new_tokens), args.repeats)
        model.special_ids = SpecialTokenIds(**{**model.special_ids.to_dict(), "eos": eos})

        def uncached() -> None:
            seq = embeds
            for _ in range(args.new_tokens):
                logits = model.llm(inputs_embeds=seq, use_cache=False).logits
                next_embed = model.llm.get_input_embeddings()(logits[:, -1].argmax(-1, keepdim=True))
                seq = torch.cat([seq, next_embed], dim=1)

        uncached_s = _timed(uncached, args.repeats)

    start = time.perf_counter()
    paper = plan_model(load_config("paper"))
    plan_s = time.perf_counter() - start
    print(json.dumps({
        "benchmark": "vl_step",
        "recipe": args.recipe,
        "frames": mcfg.frames,
        "image_hw": [height, width],
        "vision_tokens": int(vision.mask.sum()),
        "prompt_tokens": int(embeds.shape[1]),
        "parameters": sum(p.numel() for p in model.parameters()),
        "build_s": round(build_s, 3),
        "encode_video_s": round(encode_s, 4),
        "train_step_s": round(step_s, 4),
        "decode_tokens_per_s_kv_cache": round(args.new_tokens / cached_s, 1),
        "decode_tokens_per_s_recompute": round(args.new_tokens / uncached_s, 1),
        "plan_paper_s": round(plan_s, 2),
        "plan_paper_parameters_billion": round(paper["totals"]["parameters_billion"], 3),
        "repeats": args.repeats,
        "threads": args.threads,
        "machine": f"{platform.machine()}, {os.cpu_count()} cpu",
    }))


if __name__ == "__main__":
    main()
