"""Shared DINOv2 encoder (§3.1): video frames → patch tokens T_base."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from transformers import AutoConfig, Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

from vidllm.config import ConfigError, EncoderConfig

# ImageNet statistics used by every DINOv2 checkpoint (and VGGT's patch embed).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_dinov2(
    cfg: EncoderConfig, hf_config: Dinov2Config | Dinov2WithRegistersConfig | None = None
) -> Dinov2Model | Dinov2WithRegistersModel:
    """DINOv2 from `hf_config` (a saved model's exact architecture), a local path
    (`cfg.pretrained`; its own config decides registers and sizes), or randomly initialised
    from the config fields."""
    if hf_config is not None:
        model_cls = Dinov2WithRegistersModel if isinstance(hf_config, Dinov2WithRegistersConfig) else Dinov2Model
        return model_cls(hf_config)
    if cfg.pretrained is not None:
        saved = AutoConfig.from_pretrained(cfg.pretrained)
        if not isinstance(saved, (Dinov2Config, Dinov2WithRegistersConfig)):
            raise ConfigError(f"model.encoder.pretrained {cfg.pretrained!r} is a '{saved.model_type}' model, not DINOv2")
        model_cls = Dinov2WithRegistersModel if isinstance(saved, Dinov2WithRegistersConfig) else Dinov2Model
        return model_cls.from_pretrained(cfg.pretrained)
    common = dict(
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        mlp_ratio=cfg.mlp_ratio,
        patch_size=cfg.patch_size,
        image_size=cfg.image_size,
    )
    if cfg.registers > 0:
        return Dinov2WithRegistersModel(Dinov2WithRegistersConfig(num_register_tokens=cfg.registers, **common))
    return Dinov2Model(Dinov2Config(**common))


class SharedEncoder(nn.Module):
    """DINOv2 shared by the reconstruction and the vision-language branches.

    Normalisation with ImageNet statistics happens inside, so callers pass images in [0, 1].
    Position embeddings are interpolated by DINOv2 for any H, W that are multiples of the
    patch size.
    """

    def __init__(self, cfg: EncoderConfig, hf_config: Dinov2Config | Dinov2WithRegistersConfig | None = None):
        super().__init__()
        self.backbone = build_dinov2(cfg, hf_config)
        self.patch_size = int(self.backbone.config.patch_size)
        self.hidden_size = int(self.backbone.config.hidden_size)
        # Tokens before the patches in DINOv2's output: CLS + registers.
        self.num_prefix_tokens = 1 + int(getattr(self.backbone.config, "num_register_tokens", 0) or 0)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def patch_grid(self, height: int, width: int) -> tuple[int, int]:
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"image size {height}x{width} is not a multiple of the encoder patch size {self.patch_size}"
            )
        return height // self.patch_size, width // self.patch_size

    @property
    def num_layers(self) -> int:
        return int(self.backbone.config.num_hidden_layers)

    def quarter_layers(self) -> list[int]:
        """The last layer of each quarter of the encoder, shallow to deep (24 layers: 5, 11, 17, 23)."""
        depth = self.num_layers
        return [max(0, round(depth * (k + 1) / 4) - 1) for k in range(4)]

    def forward(self, images: Tensor, layers: list[int] | None = None) -> Tensor | tuple[Tensor, list[Tensor]]:
        """images `[B, S, 3, H, W]` in [0, 1] → patch tokens `[B, S, P, C]`, P = (H/p)·(W/p) row-major
        (final-normed). With `layers` (0-based block indices) also the patch tokens each of those
        blocks outputs, `[B, S, P, C]` each (before the final norm), from the same pass."""
        if images.dim() != 5 or images.shape[2] != 3:
            raise ValueError(f"expected images [B, S, 3, H, W], got {tuple(images.shape)}")
        batch, frames, _, height, width = images.shape
        self.patch_grid(height, width)
        if layers is not None and any(not 0 <= i < self.num_layers for i in layers):
            raise ValueError(f"encoder layers {layers} do not exist (the encoder has {self.num_layers})")
        pixels = images.reshape(batch * frames, 3, height, width)
        pixels = (pixels - self.mean.to(pixels.dtype)) / self.std.to(pixels.dtype)
        out = self.backbone(pixel_values=pixels, output_hidden_states=layers is not None)
        tokens = self._patches(out.last_hidden_state, batch, frames)
        if layers is None:
            return tokens
        # hidden_states[0] is the embedding output, hidden_states[i + 1] block i's output.
        return tokens, [self._patches(out.hidden_states[i + 1], batch, frames) for i in layers]

    def _patches(self, hidden: Tensor, batch: int, frames: int) -> Tensor:
        patches = hidden[:, self.num_prefix_tokens :]  # drop CLS + registers
        return patches.reshape(batch, frames, patches.shape[1], patches.shape[2])
