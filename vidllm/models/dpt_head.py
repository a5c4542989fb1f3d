"""DPT head (dense prediction from four aggregator layers), as VGGT's depth and point heads.

Four token layers → LayerNorm → 1×1 projections → resize to strides 4, 8, 16, 32 of the
image (relative to a patch of 14: ×4, ×2, ×1, ×½ of the patch grid) → 3×3 convs to `features`
channels → RefineNet fusion from coarse to fine → conv → bilinear upsample to H×W → conv head.
A sin-cos UV positional embedding (aspect-aware, ×0.1) is added after each projection and
before the output convs. Parameter names match VGGT's `depth_head.*` / `point_head.*`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_POS_EMBED_RATIO = 0.1


def uv_position_embedding(height: int, width: int, channels: int, aspect_ratio: float, device, dtype) -> Tensor:
    """Sin-cos embedding `[channels, height, width]` of a UV grid spanning a unit diagonal.

    u ∈ ±aspect/√(aspect²+1)·(W−1)/W, v ∈ ±1/√(aspect²+1)·(H−1)/H; half the channels encode
    u, half v, each as [sin(pos·ω), cos(pos·ω)] with ω_i = 100^(−i/(C/4)).
    """
    diag = math.sqrt(aspect_ratio**2 + 1)
    span_u, span_v = aspect_ratio / diag, 1.0 / diag
    u = torch.linspace(-span_u * (width - 1) / width, span_u * (width - 1) / width, width, device=device)
    v = torch.linspace(-span_v * (height - 1) / height, span_v * (height - 1) / height, height, device=device)
    grid_v, grid_u = torch.meshgrid(v, u, indexing="ij")
    quarter = channels // 4
    omega = 1.0 / 100.0 ** (torch.arange(quarter, device=device, dtype=torch.float64) / quarter)

    def sincos(pos: Tensor) -> Tensor:
        angles = pos.reshape(-1, 1).double() * omega  # [H·W, C/4]
        return torch.cat([angles.sin(), angles.cos()], dim=-1)

    emb = torch.cat([sincos(grid_u), sincos(grid_v)], dim=-1).float()  # [H·W, C]
    if emb.shape[-1] < channels:  # odd channel counts: zero-pad
        emb = F.pad(emb, (0, channels - emb.shape[-1]))
    return emb.reshape(height, width, channels).permute(2, 0, 1).to(dtype)


def _add_pos_embed(x: Tensor, image_hw: tuple[int, int]) -> Tensor:
    """x `[N, C, h, w]` + 0.1 · UV embedding with the image's aspect ratio."""
    aspect = image_hw[1] / image_hw[0]
    emb = uv_position_embedding(x.shape[2], x.shape[3], x.shape[1], aspect, x.device, x.dtype)
    return x + _POS_EMBED_RATIO * emb[None]


class ResidualConvUnit(nn.Module):
    """relu(x) + conv2(relu(conv1(relu(x)))): the skip carries relu(x), not x. VGGT's (DPT's) unit
    applies an in-place ReLU to its input first, so its residual sum adds the rectified input;
    VGGT weights are trained with that."""

    def __init__(self, features: int):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)
        self.activation = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        """x `[N, C, h, w]` → `[N, C, h, w]`."""
        x = self.activation(x)
        return x + self.conv2(self.activation(self.conv1(x)))


class FeatureFusionBlock(nn.Module):
    """RefineNet fusion: (coarse + RCU(skip)) → RCU → upsample → 1×1 conv."""

    def __init__(self, features: int, has_residual: bool = True):
        super().__init__()
        self.resConfUnit1 = ResidualConvUnit(features) if has_residual else None  # noqa: N815 (VGGT name)
        self.resConfUnit2 = ResidualConvUnit(features)  # noqa: N815
        self.out_conv = nn.Conv2d(features, features, 1)

    def forward(self, x: Tensor, skip: Tensor | None = None, size: tuple[int, int] | None = None) -> Tensor:
        if skip is not None and self.resConfUnit1 is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        if size is None:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        else:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=True)
        return self.out_conv(x)


class _Scratch(nn.Module):
    def __init__(self, out_channels: list[int], features: int, output_dim: int):
        super().__init__()
        for i, channels in enumerate(out_channels, start=1):
            setattr(self, f"layer{i}_rn", nn.Conv2d(channels, features, 3, padding=1, bias=False))
        self.refinenet1 = FeatureFusionBlock(features)
        self.refinenet2 = FeatureFusionBlock(features)
        self.refinenet3 = FeatureFusionBlock(features)
        self.refinenet4 = FeatureFusionBlock(features, has_residual=False)
        self.output_conv1 = nn.Conv2d(features, features // 2, 3, padding=1)
        self.output_conv2 = nn.Sequential(
            nn.Conv2d(features // 2, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, output_dim, 1)
        )


def activate_head(raw: Tensor, activation: str) -> tuple[Tensor, Tensor]:
    """Raw `[N, D, H, W]` → (prediction `[N, H, W, D−1]`, confidence `[N, H, W]` = 1 + exp)."""
    fmap = raw.permute(0, 2, 3, 1)
    values, conf = fmap[..., :-1], fmap[..., -1]
    if activation == "exp":
        values = torch.exp(values)
    elif activation == "inv_log":
        values = torch.sign(values) * torch.expm1(values.abs())
    elif activation != "linear":
        raise ValueError(f"unknown DPT activation '{activation}' (exp, inv_log, linear)")
    return values, 1 + torch.exp(conf)


class DPTHead(nn.Module):
    def __init__(
        self,
        dim_in: int,
        patch_size: int = 14,
        output_dim: int = 2,
        features: int = 256,
        out_channels: list[int] | tuple[int, ...] = (256, 512, 1024, 1024),
        intermediate_layer_idx: list[int] | tuple[int, ...] = (0, 1, 2, 3),
        activation: str = "exp",
        frames_chunk_size: int = 8,
        pos_embed: bool = True,
    ):
        """
        Args:
            dim_in: token width (2E for aggregator outputs).
            output_dim: channels before activation; the last is confidence (depth 2, points 4).
            intermediate_layer_idx: positions in the token list fed to the four DPT levels.
            activation: "exp" (depth), "inv_log" (points: sign·(e^|x|−1)) or "linear".
            frames_chunk_size: frames decoded at once (bounds activation memory).
        """
        super().__init__()
        if len(out_channels) != 4 or len(intermediate_layer_idx) != 4:
            raise ValueError("DPTHead needs exactly 4 out_channels and 4 intermediate layers")
        self.patch_size = patch_size
        self.intermediate_layer_idx = list(intermediate_layer_idx)
        self.activation = activation
        self.frames_chunk_size = frames_chunk_size
        self.pos_embed = pos_embed
        self.norm = nn.LayerNorm(dim_in)
        self.projects = nn.ModuleList([nn.Conv2d(dim_in, c, 1) for c in out_channels])
        self.resize_layers = nn.ModuleList(
            [
                nn.ConvTranspose2d(out_channels[0], out_channels[0], 4, stride=4),
                nn.ConvTranspose2d(out_channels[1], out_channels[1], 2, stride=2),
                nn.Identity(),
                nn.Conv2d(out_channels[3], out_channels[3], 3, stride=2, padding=1),
            ]
        )
        self.scratch = _Scratch(list(out_channels), features, output_dim)

    def decode(self, tokens_list: list[Tensor], image_hw: tuple[int, int], patch_start_idx: int) -> Tensor:
        """Token layers `[N, T, C]` (N images) → fused feature map `[N, features // 2, H, W]`."""
        height, width = image_hw
        grid_h, grid_w = height // self.patch_size, width // self.patch_size
        levels = []
        for level, layer in enumerate(self.intermediate_layer_idx):
            x = self.norm(tokens_list[layer][:, patch_start_idx:])
            x = x.transpose(1, 2).reshape(x.shape[0], x.shape[2], grid_h, grid_w)
            x = self.projects[level](x)
            if self.pos_embed:
                x = _add_pos_embed(x, image_hw)
            levels.append(self.resize_layers[level](x))
        s = self.scratch
        l1, l2, l3, l4 = (getattr(s, f"layer{i}_rn")(x) for i, x in enumerate(levels, start=1))
        out = s.refinenet4(l4, size=l3.shape[2:])
        out = s.refinenet3(out, l3, size=l2.shape[2:])
        out = s.refinenet2(out, l2, size=l1.shape[2:])
        out = s.refinenet1(out, l1)
        out = s.output_conv1(out)
        out = F.interpolate(out, size=(height, width), mode="bilinear", align_corners=True)
        if self.pos_embed:
            out = _add_pos_embed(out, image_hw)
        return out

    def forward(
        self, aggregated_tokens_list: list[Tensor], images: Tensor, patch_start_idx: int
    ) -> tuple[Tensor, Tensor]:
        """
        Args:
            aggregated_tokens_list: list of `[B, S, T, C]` (indexed by `intermediate_layer_idx`).
            images: `[B, S, 3, H, W]` (only its size is used).
            patch_start_idx: first patch token in T.
        Returns:
            pred `[B, S, H, W, output_dim − 1]`, conf `[B, S, H, W]`.
        """
        batch, frames, _, height, width = images.shape
        needed = set(i % len(aggregated_tokens_list) for i in self.intermediate_layer_idx)
        preds, confs = [], []
        for start in range(0, frames, self.frames_chunk_size):
            stop = min(start + self.frames_chunk_size, frames)
            chunk = [
                t[:, start:stop].reshape(batch * (stop - start), t.shape[2], t.shape[3]) if i in needed else t
                for i, t in enumerate(aggregated_tokens_list)
            ]
            raw = self.scratch.output_conv2(self.decode(chunk, (height, width), patch_start_idx))
            pred, conf = activate_head(raw, self.activation)
            preds.append(pred.reshape(batch, stop - start, height, width, -1))
            confs.append(conf.reshape(batch, stop - start, height, width))
        return torch.cat(preds, dim=1), torch.cat(confs, dim=1)
