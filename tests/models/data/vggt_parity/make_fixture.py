"""Generate the VGGT parity fixture: a tiny random VGGT built from VGGT's own classes, its
weights, and its outputs for a few inputs. `tests/models/test_vggt_parity.py` loads the
weights through `vidllm.models.convert.load_vggt_into` and checks our forward against them.

    python tests/models/data/vggt_parity/make_fixture.py --vggt-src /tmp/vggt_src

`--vggt-src` is a checkout holding the `vggt` package. The committed fixture was made from
github.com/xianglic/vggt @ a24d9de2cacce10f3b4c10350d94f485548895e8, whose `vggt/` tree is
upstream facebookresearch/vggt's at 44b3afbd1869d8bde4894dd8ea1e293112dd5eba (its last commit
touching `vggt/` is upstream d3434b3), with torch 2.13 (CPU, float32). The track head is not
built; when einops (imported by it) is missing, a stub stands in.

The model is VGGT's `VGGT` module (its own `forward`) with smaller parts: the aggregator's
DINOv2 patch embed is VGGT's `DinoVisionTransformer` built as `Aggregator.__build_patch_embed__`
builds `dinov2_vit*14_reg` (registers = the aggregator's, bicubic antialiased pos-embed
interpolation without offset, layer scale 1.0), only narrower and shallower; the heads are
VGGT's `CameraHead` and `DPTHead` with small widths. VGGT's init leaves layer scales at 0.01 and
the special tokens at ~1e-6, which would hide most of the aggregator, so those and the norms are
re-drawn (seeded) to make every weight matter.

Cases (images are uint8 / 255, stored as uint8; outputs float32):
  a  2 frames 56×56: the pos-embed's native 4×4 grid
  b  2 frames 42×56: 3×4 grid (4:3), pos-embed interpolated (height down-sampled: antialias)
  c  9 frames 28×28: more frames than VGGT's DPT chunk (8), 2×2 grid

Files: `vggt_tiny.safetensors` (VGGT state dict, VGGT key names) and `cases.safetensors`
(`{case}.images_u8 [1, S, 3, H, W]`, `{case}.{pose_enc, depth, depth_conf, world_points,
world_points_conf}` with VGGT's shapes: depth `[1, S, H, W, 1]`); the latter's metadata holds
the model sizes (`model`, JSON) the test configures our model with.
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent

# Sizes of the tiny VGGT (mirrored into our ModelConfig by the test through the metadata).
MODEL = {
    "img_size": 56,  # pos-embed grid 4×4
    "patch_size": 14,
    "embed_dim": 16,
    "encoder_depth": 2,
    "encoder_heads": 2,
    "aggregator_depth": 4,
    "aggregator_heads": 2,  # head dim 8 (2D RoPE needs a multiple of 4)
    "num_register_tokens": 2,
    "camera_trunk_depth": 1,
    "camera_heads": 2,
    "camera_iters": 4,  # VGGT.forward runs the camera head's default 4 iterations
    "dpt_features": 8,
    "dpt_out_channels": [4, 8, 12, 16],  # distinct per level (all multiples of 4 for the UV embedding)
    "intermediate_layer_idx": [1, 2, 2, 3],  # skips layer 0 and repeats one: exercises the mapping
    "frames_chunk_size": 8,  # VGGT.forward uses DPTHead's default
}
CASES = {"a": (2, 56, 56), "b": (2, 42, 56), "c": (9, 28, 28)}
OUTPUTS = ("pose_enc", "depth", "depth_conf", "world_points", "world_points_conf")


def _stub_einops() -> None:
    """`vggt.models.vggt` imports the track head, which imports einops at module level; the
    track head is not built here, so a stub stands in when einops is not installed."""
    try:
        import einops  # noqa: F401
    except ImportError:
        import types

        def unavailable(*_args, **_kwargs):
            raise RuntimeError("einops stub: the track head is not part of this fixture")

        sys.modules["einops"] = types.SimpleNamespace(rearrange=unavailable, repeat=unavailable, reduce=unavailable)


def build_vggt(m: dict) -> torch.nn.Module:
    from vggt.heads.camera_head import CameraHead
    from vggt.heads.dpt_head import DPTHead
    from vggt.layers import MemEffAttention, NestedTensorBlock
    from vggt.layers.vision_transformer import DinoVisionTransformer
    from vggt.models.aggregator import Aggregator
    from vggt.models.vggt import VGGT

    dim = m["embed_dim"]
    aggregator = Aggregator(img_size=m["img_size"], patch_size=m["patch_size"], embed_dim=dim,
                            depth=m["aggregator_depth"], num_heads=m["aggregator_heads"],
                            num_register_tokens=m["num_register_tokens"], patch_embed="conv")
    # The same constructor arguments as Aggregator.__build_patch_embed__ passes to vit_large & co.
    aggregator.patch_embed = DinoVisionTransformer(
        img_size=m["img_size"], patch_size=m["patch_size"], embed_dim=dim, depth=m["encoder_depth"],
        num_heads=m["encoder_heads"], mlp_ratio=4, block_fn=partial(NestedTensorBlock, attn_class=MemEffAttention),
        num_register_tokens=m["num_register_tokens"], interpolate_antialias=True, interpolate_offset=0.0,
        block_chunks=0, init_values=1.0)
    aggregator.patch_embed.mask_token.requires_grad_(False)

    dpt = dict(dim_in=2 * dim, patch_size=m["patch_size"], features=m["dpt_features"],
               out_channels=m["dpt_out_channels"], intermediate_layer_idx=m["intermediate_layer_idx"])
    # VGGT.__init__ would build the full-size aggregator; assemble the module around VGGT.forward instead.
    model = VGGT.__new__(VGGT)
    torch.nn.Module.__init__(model)
    model.aggregator = aggregator
    model.camera_head = CameraHead(dim_in=2 * dim, trunk_depth=m["camera_trunk_depth"], num_heads=m["camera_heads"])
    model.point_head = DPTHead(output_dim=4, activation="inv_log", conf_activation="expp1", **dpt)
    model.depth_head = DPTHead(output_dim=2, activation="exp", conf_activation="expp1", **dpt)
    model.track_head = None
    return model


@torch.no_grad()
def perturb(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Re-draw the parameters VGGT initialises to (near) constants, so each one shows in the outputs."""
    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "gamma":  # layer scale
            p.copy_(0.2 + 0.6 * torch.rand(p.shape, generator=generator))
        elif leaf in ("camera_token", "register_token", "cls_token", "register_tokens", "empty_pose_tokens"):
            p.copy_(0.5 * torch.randn(p.shape, generator=generator))
        elif p.dim() == 1 and "norm" in name:  # LayerNorm / qk-norm affine
            base = 1.0 if leaf == "weight" else 0.0
            p.copy_(base + 0.1 * torch.randn(p.shape, generator=generator))
        elif leaf == "bias":  # conv / linear biases start at zero in VGGT's ViT init
            p.add_(0.02 * torch.randn(p.shape, generator=generator))
        if name.endswith("output_conv2.2.weight"):  # raw head outputs of order 1, not 0.1
            p.mul_(4.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vggt-src", required=True, type=Path, help="checkout containing the vggt package")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    sys.path.insert(0, str(args.vggt_src.resolve()))
    _stub_einops()
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = build_vggt(MODEL)
    perturb(model, torch.Generator().manual_seed(1))
    model.eval()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    args.out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(args.out / "vggt_tiny.safetensors"))

    generator = torch.Generator().manual_seed(2)
    tensors: dict[str, torch.Tensor] = {}
    for case, (frames, height, width) in CASES.items():
        images_u8 = torch.randint(0, 256, (1, frames, 3, height, width), generator=generator, dtype=torch.uint8)
        with torch.no_grad():
            out = model(images_u8.float() / 255)
        tensors[f"{case}.images_u8"] = images_u8
        for key in OUTPUTS:
            value = out[key].float().contiguous()
            if not torch.isfinite(value).all():
                raise SystemExit(f"case {case}: non-finite {key}")
            tensors[f"{case}.{key}"] = value
        print(case, {k: (tuple(out[k].shape), round(out[k].abs().max().item(), 3)) for k in OUTPUTS})
    save_file(tensors, str(args.out / "cases.safetensors"),
              metadata={"model": json.dumps(MODEL), "cases": json.dumps(CASES)})
    size = sum((args.out / f).stat().st_size for f in ("vggt_tiny.safetensors", "cases.safetensors"))
    print(f"{len(state)} weights, {sum(v.numel() for v in state.values()):,} values; fixture {size:,} bytes")


if __name__ == "__main__":
    main()
