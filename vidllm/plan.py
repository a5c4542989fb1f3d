"""Plan a recipe without weights: build the model on the meta device, count parameters per
module (and what trains under LoRA), and measure FLOPs and saved activations of one
training step with meta tensors (shapes only, no memory, no compute).

Measurement, not guesswork: FLOPs come from `torch.utils.flop_counter.FlopCounterMode` over
a meta-tensor forward; activation memory is the total size of the tensors autograd saves for
backward (`saved_tensors_hooks`), parameters excluded. Attention is replaced during planning
by a flash-attention-like op (saves q, k, v, output and log-sum-exp, not the score matrix) so
the estimate matches GPU training with FlashAttention / memory-efficient SDPA. The backward
pass is taken as 2× the forward FLOPs for modules with trainable weights and 1× for the
frozen LoRA base (input gradients only), plus the LM head's full weight gradient that peft
computes to train the Vid-LLM token rows (`vidllm.lora`). Data-dependent steps (scale alignment, voxel
pooling) are negligible in cost and skipped; the LLM sees `patches3d.max_tokens` vision tokens.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from vidllm.config import ConfigError, VidLLMConfig


class _FlashLikeAttention(torch.autograd.Function):
    """Shape-only stand-in for fused attention: output `[..., Lq, Dv]`, saves what flash saves."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        out = q.new_empty(*q.shape[:-1], v.shape[-1])
        lse = q.new_empty(*q.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):  # pragma: no cover - planning never runs backward
        q, k, v, _, _ = ctx.saved_tensors
        return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)


@contextlib.contextmanager
def _flash_like_attention(counter: dict[str, float]):
    original = F.scaled_dot_product_attention

    def attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False, **_):
        lq, lk, d = q.shape[-2], k.shape[-2], q.shape[-1]
        heads_batch = math.prod(q.shape[:-2])
        flops = 4 * heads_batch * lq * lk * d  # QKᵀ and PV, 2 FLOPs per multiply-add
        counter["attention_flops"] += flops / 2 if is_causal else flops
        if k.shape[-3] != q.shape[-3]:  # grouped-query attention: broadcast kv heads
            repeat = q.shape[-3] // k.shape[-3]
            k, v = k.repeat_interleave(repeat, dim=-3), v.repeat_interleave(repeat, dim=-3)
        return _FlashLikeAttention.apply(q, k, v)

    F.scaled_dot_product_attention = attention
    torch.nn.functional.scaled_dot_product_attention = attention
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original
        torch.nn.functional.scaled_dot_product_attention = original


@contextlib.contextmanager
def _no_packed_sequence_detection():
    """transformers inspects position-id *values* to detect packed sequences; meta tensors have
    none, and a plain causal batch is what we plan for."""
    import transformers.masking_utils as masking_utils

    original = masking_utils.find_packed_sequence_indices
    masking_utils.find_packed_sequence_indices = lambda *args, **kwargs: None
    try:
        yield
    finally:
        masking_utils.find_packed_sequence_indices = original


class _Meter:
    """FLOPs and saved-activation bytes of one code block on meta tensors."""

    def __init__(self, params: list[nn.Parameter]):
        self.param_ids = {id(p) for p in params}
        self.results: dict[str, dict[str, float]] = {}

    @contextlib.contextmanager
    def measure(self, name: str):
        saved_bytes = [0]
        counter = {"attention_flops": 0.0}

        def pack(t: Tensor) -> Tensor:
            base = t._base if t._base is not None else t
            if id(t) not in self.param_ids and id(base) not in self.param_ids:
                saved_bytes[0] += t.numel() * t.element_size()
            return t

        with FlopCounterMode(display=False) as flops, _flash_like_attention(counter), \
                torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            yield
        self.results[name] = {
            "forward_flops": float(flops.get_total_flops() + counter["attention_flops"]),
            "activation_bytes": float(saved_bytes[0]),
        }


def _count(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def _lora_params(llm: nn.Module, targets: list[str], rank: int) -> int:
    if rank == 0:
        return 0
    return sum(rank * (m.in_features + m.out_features) for name, m in llm.named_modules()
               if isinstance(m, nn.Linear) and name.split(".")[-1] in targets)


def _token_row_params(llm: nn.Module, token_ids: list[int], rank: int) -> int:
    """Embedding (and untied LM-head) rows of the Vid-LLM tokens that train under LoRA."""
    if rank == 0:
        return 0
    from vidllm.lora import trainable_token_indices

    return sum(len(ids) * llm.get_submodule(name).weight.shape[1]
               for name, ids in trainable_token_indices(llm, token_ids).items())


def plan_model(
    cfg: VidLLMConfig,
    frames: int | None = None,
    image_hw: tuple[int, int] | None = None,
    text_tokens: int = 128,
    batch: int = 1,
    dtype: torch.dtype = torch.bfloat16,
) -> dict[str, Any]:
    """Parameter counts, trainable counts under LoRA, FLOPs and activation memory of a recipe."""
    from vidllm.models.vidllm import VidLLM

    start = time.perf_counter()
    model_cfg = cfg.model.model_copy(deep=True)
    # Planning never reads weights: architectures come from the inline fields.
    model_cfg.encoder.pretrained = None
    model_cfg.llm.pretrained = None
    frames = frames or model_cfg.frames
    height, width = image_hw or tuple(model_cfg.image_size)
    patch = model_cfg.encoder.patch_size
    if height % patch or width % patch or height <= 0 or width <= 0:
        raise ConfigError(f"image size {height}x{width} must be positive multiples of the patch size {patch}")
    if frames < 1 or batch < 1 or text_tokens < 0:
        raise ConfigError(f"frames ({frames}) and batch ({batch}) must be >= 1, text_tokens ({text_tokens}) >= 0")
    with torch.device("meta"):
        model = VidLLM(model_cfg, None, model_cfg.llm.vocab_size, "sdpa").to(dtype)
    recon = model.reconstruction
    agg = recon.aggregator
    params = {
        "encoder": _count(model.encoder),
        "cta": _count(model.cta),
        "aggregator": _count(agg),
        "aggregator_blocks": _count(agg.frame_blocks) + _count(agg.global_blocks),
        "camera_head": _count(recon.camera_head),
        "depth_head": _count(recon.depth_head),
        "point_head": _count(recon.point_head),
        "metric_depth": _count(recon.metric_depth),
        "scene_frame": _count(model.scene_frame),
        "patch3d": _count(model.patch3d),
        "vision_proj": _count(model.vision_proj),
        "grounding": _count(model.grounding),
        "llm": _count(model.llm),
    }
    params["reconstruction"] = _count(recon)
    params["total"] = _count(model)
    llm_cfg = model_cfg.llm
    lora = _lora_params(model.llm, llm_cfg.lora_targets, llm_cfg.lora_r)
    from vidllm.lora import trainable_token_ids

    token_rows = _token_row_params(model.llm, trainable_token_ids(model.special_ids), llm_cfg.lora_r)
    non_llm = params["total"] - params["llm"]
    trainable = {
        "lora_adapters": lora,
        "token_rows": token_rows,
        "non_llm_modules": non_llm,
        "total": non_llm + lora + token_rows if llm_cfg.lora_r > 0 else params["total"],
    }

    # --- one training step on meta tensors
    for p in model.llm.parameters():
        p.requires_grad_(llm_cfg.lora_r == 0)
    meter = _Meter(list(model.parameters()))
    p = model.patch_size
    grid = (height // p, width // p)
    images = torch.empty(batch, frames, 3, height, width, device="meta", dtype=dtype)
    with meter.measure("encoder"):
        t_base, depth_levels = model.encoder(images, model.metric_depth_layers)
    with meter.measure("cta"):
        t_geom, t_lang = model.cta(t_base)
    with meter.measure("aggregator"):
        tokens_list, patch_start = agg(t_geom, grid)
    with meter.measure("camera_head"):
        recon.camera_head(tokens_list)
    with meter.measure("depth_head"):
        recon.depth_head(tokens_list, images, patch_start)
    if recon.point_head is not None:
        with meter.measure("point_head"):
            recon.point_head(tokens_list, images, patch_start)
    if recon.metric_depth is not None:
        with meter.measure("metric_depth"):
            recon.metric_depth(t_base, (height, width), depth_levels)
    with meter.measure("scene_frame"):
        model.scene_frame(t_geom)
    vision_tokens = min(model_cfg.patches3d.max_tokens, frames * grid[0] * grid[1])
    with meter.measure("patch3d"):
        t3d = model.patch3d(t_lang, torch.empty(*t_lang.shape[:-1], 3, device="meta", dtype=dtype))
        model.vision_proj(t3d.flatten(1, 2)[:, :vision_tokens])
    seq = vision_tokens + text_tokens
    embeds = torch.empty(batch, seq, model.llm.get_input_embeddings().embedding_dim, device="meta",
                         dtype=dtype, requires_grad=True)
    with meter.measure("llm"), _no_packed_sequence_detection():
        model.llm(inputs_embeds=embeds, use_cache=False)
    per_module = meter.results
    forward = sum(r["forward_flops"] for r in per_module.values())
    llm_bwd = 2.0 if llm_cfg.lora_r == 0 else 1.0
    train = sum(r["forward_flops"] * (1 + (llm_bwd if name == "llm" else 2.0)) for name, r in per_module.items())
    activations = sum(r["activation_bytes"] for r in per_module.values())
    if llm_cfg.lora_r > 0:
        # Trained token rows: peft rebuilds the head weight with them (a copy kept for backward)
        # and autograd forms its full [V, D] weight gradient before keeping those rows.
        head = model.llm.get_output_embeddings().weight
        train += 2.0 * batch * seq * head.numel()
        activations += head.numel() * head.element_size()
    weight_bytes = params["total"] * torch.tensor([], dtype=dtype).element_size()
    # AdamW: fp32 master copy + two moments for trainable parameters.
    optimizer_bytes = trainable["total"] * 12
    return {
        "recipe": cfg.recipe,
        "setting": {"batch": batch, "frames": frames, "image_hw": [height, width], "patch_grid": list(grid),
                    "vision_tokens": vision_tokens, "text_tokens": text_tokens, "dtype": str(dtype).replace("torch.", ""),
                    "lora_r": llm_cfg.lora_r, "lora_targets": list(llm_cfg.lora_targets)},
        "parameters": params,
        "trainable_under_lora": trainable,
        "per_module": {k: {"forward_gflops": v["forward_flops"] / 1e9, "activation_gib": v["activation_bytes"] / 2**30}
                       for k, v in per_module.items()},
        "totals": {
            "parameters": params["total"],
            "parameters_billion": params["total"] / 1e9,
            "trainable": trainable["total"],
            "forward_tflops": forward / 1e12,
            "train_step_tflops": train / 1e12,
            "activation_gib": activations / 2**30,
            "weights_gib": weight_bytes / 2**30,
            "optimizer_state_gib": optimizer_bytes / 2**30,
            "train_step_memory_gib": (activations + weight_bytes + optimizer_bytes + 2 * trainable["total"]) / 2**30,
        },
        "notes": "meta-device measurement; flash-like attention; activations without gradient checkpointing",
        "plan_seconds": time.perf_counter() - start,
    }
