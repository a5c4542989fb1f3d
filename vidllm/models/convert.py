"""Load a VGGT checkpoint into Vid-LLM's shared encoder and reconstruction branch.

Key mapping (VGGT key → ours). Recon keys are relative to `ReconstructionBranch`, encoder keys
to the Hugging Face `Dinov2Model` / `Dinov2WithRegistersModel` inside the shared encoder.

| VGGT                                              | Vid-LLM                                                      |
|---------------------------------------------------|--------------------------------------------------------------|
| aggregator.camera_token, aggregator.register_token| aggregator.camera_token, aggregator.register_token (same)    |
| aggregator.frame_blocks.{i}.* / global_blocks.{i}.*| aggregator.frame_blocks.{i}.* / global_blocks.{i}.* (same)  |
| camera_head.*, depth_head.*, point_head.*         | camera_head.*, depth_head.*, point_head.* (same)             |
| aggregator.patch_embed.cls_token                  | encoder: embeddings.cls_token                                |
| aggregator.patch_embed.mask_token                 | encoder: embeddings.mask_token                               |
| aggregator.patch_embed.register_tokens            | encoder: embeddings.register_tokens                          |
| aggregator.patch_embed.pos_embed                  | encoder: embeddings.position_embeddings                      |
| aggregator.patch_embed.patch_embed.proj.{w,b}     | encoder: embeddings.patch_embeddings.projection.{w,b}        |
| aggregator.patch_embed.blocks.{i}.norm1/norm2     | encoder: encoder.layer.{i}.norm1/norm2                       |
| aggregator.patch_embed.blocks.{i}.attn.qkv.{w,b}  | encoder: encoder.layer.{i}.attention.{q,k,v}_proj.{w,b} (split)|
| aggregator.patch_embed.blocks.{i}.attn.proj.{w,b} | encoder: encoder.layer.{i}.attention.o_proj.{w,b}            |
| aggregator.patch_embed.blocks.{i}.ls1.gamma / ls2 | encoder: encoder.layer.{i}.layer_scale1.lambda1 / layer_scale2 |
| aggregator.patch_embed.blocks.{i}.mlp.fc1/fc2     | encoder: encoder.layer.{i}.mlp.fc1/fc2                       |
| aggregator.patch_embed.norm.{w,b}                 | encoder: layernorm.{w,b}                                     |
| track_head.*                                      | ignored (Vid-LLM has no tracking head)                       |

Older transformers (< 5) name the attention `attention.attention.{query,key,value}` and
`attention.output.dense`; `load_vggt_into` renames to whatever the target module uses.
Ours but not VGGT's (reported as missing): `aggregator.input_proj` (only when the encoder width
≠ embed_dim), the whole `metric_depth` model, and the point head when disabled.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from vidllm.errors import DataError, VidLLMError

_RECON_PREFIXES = ("aggregator.camera_token", "aggregator.register_token", "aggregator.frame_blocks.",
                   "aggregator.global_blocks.", "camera_head.", "depth_head.", "point_head.")
_IGNORED_PREFIXES = ("track_head.",)
_PATCH = "aggregator.patch_embed."

_ENCODER_SIMPLE = {
    "cls_token": "embeddings.cls_token",
    "mask_token": "embeddings.mask_token",
    "register_tokens": "embeddings.register_tokens",
    "pos_embed": "embeddings.position_embeddings",
    "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
    "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
    "norm.weight": "layernorm.weight",
    "norm.bias": "layernorm.bias",
}
_BLOCK_SIMPLE = {
    "norm1": "norm1", "norm2": "norm2", "attn.proj": "attention.o_proj", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
}  # fmt: skip
_LEGACY_HF = {  # transformers < 5 attention names
    "attention.q_proj.": "attention.attention.query.",
    "attention.k_proj.": "attention.attention.key.",
    "attention.v_proj.": "attention.attention.value.",
    "attention.o_proj.": "attention.output.dense.",
}


@dataclass
class LoadReport:
    missing: list[str] = field(default_factory=list)  # ours, not in the checkpoint
    unexpected: list[str] = field(default_factory=list)  # checkpoint keys with no place in our model
    ignored: list[str] = field(default_factory=list)  # checkpoint keys deliberately dropped (track head)
    loaded: int = 0

    def summary(self) -> str:
        return (f"loaded {self.loaded} tensors; {len(self.missing)} missing, {len(self.unexpected)} unexpected, "
                f"{len(self.ignored)} ignored")


def _convert_patch_embed_key(name: str, value: Tensor) -> dict[str, Tensor] | None:
    """One `aggregator.patch_embed.*` suffix → HF Dinov2 key(s); None if not recognised."""
    if name in _ENCODER_SIMPLE:
        return {_ENCODER_SIMPLE[name]: value}
    match = re.fullmatch(r"blocks\.(\d+)\.(.+)\.(weight|bias|gamma)", name)
    if match is None:
        return None
    layer, module, kind = match.groups()
    prefix = f"encoder.layer.{layer}."
    if module == "attn.qkv" and kind in ("weight", "bias"):
        q, k, v = value.chunk(3, dim=0)
        return {f"{prefix}attention.q_proj.{kind}": q, f"{prefix}attention.k_proj.{kind}": k,
                f"{prefix}attention.v_proj.{kind}": v}
    if module in ("ls1", "ls2") and kind == "gamma":
        return {f"{prefix}layer_scale{module[-1]}.lambda1": value}
    if module in _BLOCK_SIMPLE and kind in ("weight", "bias"):
        return {f"{prefix}{_BLOCK_SIMPLE[module]}.{kind}": value}
    return None


def convert_vggt_state_dict(sd: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor], LoadReport]:
    """Split and rename a VGGT state dict.

    Returns:
        (encoder_sd in HF Dinov2 names, recon_sd in `ReconstructionBranch` names, report with
        `unexpected` = keys matching no rule and `ignored` = track-head keys).
    """
    encoder_sd: dict[str, Tensor] = {}
    recon_sd: dict[str, Tensor] = {}
    report = LoadReport()
    for key, value in sd.items():
        if key.startswith("module."):  # DDP-saved checkpoints
            key = key[len("module."):]
        if key.startswith(_RECON_PREFIXES):
            recon_sd[key] = value
        elif key.startswith(_PATCH):
            converted = _convert_patch_embed_key(key[len(_PATCH):], value)
            if converted is None:
                report.unexpected.append(key)
            else:
                encoder_sd.update(converted)
        elif key.startswith(_IGNORED_PREFIXES):
            report.ignored.append(key)
        else:
            report.unexpected.append(key)
    return encoder_sd, recon_sd, report


def read_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """VGGT weights from `.safetensors` or a torch file (loaded with weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "checkpoint file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 — any parse failure is a bad file
        raise DataError(path, f"not a readable checkpoint ({exc.__class__.__name__}: {exc})") from None
    if isinstance(sd, dict) and "model" in sd and isinstance(sd["model"], dict):
        sd = sd["model"]
    if not isinstance(sd, dict):
        raise DataError(path, "checkpoint does not hold a state dict")
    return sd


def _find_dinov2(encoder: nn.Module) -> tuple[str, nn.Module]:
    """The HF Dinov2 model inside the shared encoder (or the encoder itself) and its prefix."""
    for name, module in encoder.named_modules():
        if type(module).__name__ in ("Dinov2Model", "Dinov2WithRegistersModel"):
            return (name + "." if name else ""), module
    raise VidLLMError(f"no Dinov2Model inside {type(encoder).__name__}: cannot load VGGT's patch_embed")


def _load_part(module: nn.Module, sd: dict[str, Tensor], report: LoadReport, label: str, assign: bool) -> None:
    own = module.state_dict()
    mismatched = [f"{label}{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                  for k, v in sd.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if mismatched:
        raise VidLLMError("VGGT checkpoint does not fit the model config: " + "; ".join(mismatched[:5])
                          + (f" (+{len(mismatched) - 5} more)" if len(mismatched) > 5 else ""))
    result = module.load_state_dict(sd, strict=False, assign=assign)
    report.missing.extend(label + k for k in result.missing_keys)
    report.unexpected.extend(label + k for k in result.unexpected_keys)
    report.loaded += len(sd) - len(result.unexpected_keys)


def load_vggt_into(
    model_or_parts: nn.Module | dict[str, nn.Module], sd: dict[str, Tensor], assign: bool = False
) -> LoadReport:
    """Load VGGT weights into our modules.

    Args:
        model_or_parts: a module with `.reconstruction` (and optionally `.encoder`) attributes
            (e.g. `VidLLM`), a bare `ReconstructionBranch`, or a dict
            `{"encoder": module, "reconstruction": module}` (either may be absent).
        sd: VGGT state dict (`read_checkpoint`).
        assign: pass-through to `load_state_dict` (True for modules on the meta device).
    Returns:
        LoadReport; `missing` lists our parameters the checkpoint did not provide, prefixed
        `encoder.` / `reconstruction.`.
    """
    if isinstance(model_or_parts, dict):
        encoder, recon = model_or_parts.get("encoder"), model_or_parts.get("reconstruction")
    elif hasattr(model_or_parts, "aggregator"):
        encoder, recon = None, model_or_parts
    else:
        encoder = getattr(model_or_parts, "encoder", None)
        recon = getattr(model_or_parts, "reconstruction", None)
    if encoder is None and recon is None:
        raise VidLLMError("load_vggt_into needs an encoder and/or a reconstruction branch")
    encoder_sd, recon_sd, report = convert_vggt_state_dict(sd)
    if recon is not None:
        _load_part(recon, recon_sd, report, "reconstruction.", assign)
    else:
        report.ignored.extend(recon_sd)
    if encoder is not None:
        prefix, dinov2 = _find_dinov2(encoder)
        target_keys = set(dinov2.state_dict())
        if not any(".attention.q_proj." in k for k in target_keys):
            renamed = {}
            for key, value in encoder_sd.items():
                for new, old in _LEGACY_HF.items():
                    key = key.replace(new, old)
                renamed[key] = value
            encoder_sd = renamed
        _load_part(dinov2, encoder_sd, report, f"encoder.{prefix}", assign)
    else:
        report.ignored.extend(_PATCH + k for k in encoder_sd)  # HF names; no encoder to load into
    return report


_ENCODER_SIMPLE_INV = {ours: theirs for theirs, ours in _ENCODER_SIMPLE.items()}
_BLOCK_SIMPLE_INV = {ours: theirs for theirs, ours in _BLOCK_SIMPLE.items()}


def _encoder_key_to_vggt(key: str) -> str | None:
    """One HF Dinov2 key (current names) → its VGGT `aggregator.patch_embed.*` key; None for the
    split q/k/v projections (fused separately)."""
    if key in _ENCODER_SIMPLE_INV:
        return _PATCH + _ENCODER_SIMPLE_INV[key]
    match = re.fullmatch(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias|lambda1)", key)
    if match is None:
        raise VidLLMError(f"encoder weight '{key}' has no VGGT name")
    layer, module, kind = match.groups()
    block = f"{_PATCH}blocks.{layer}."
    if module in ("attention.q_proj", "attention.k_proj", "attention.v_proj"):
        return None
    if module in ("layer_scale1", "layer_scale2") and kind == "lambda1":
        return f"{block}ls{module[-1]}.gamma"
    if module in _BLOCK_SIMPLE_INV and kind in ("weight", "bias"):
        return f"{block}{_BLOCK_SIMPLE_INV[module]}.{kind}"
    raise VidLLMError(f"encoder weight '{key}' has no VGGT name")


def to_vggt_state_dict(model_or_parts: nn.Module | dict[str, nn.Module]) -> dict[str, Tensor]:
    """Our encoder + reconstruction branch as a VGGT state dict: the inverse of `load_vggt_into`.

    Accepts the same forms as `load_vggt_into` (a module with `.encoder` and `.reconstruction`,
    or `{"encoder": ..., "reconstruction": ...}`). The metric depth model is not part of VGGT and
    is left out; so is `aggregator.input_proj`, which VGGT has no counterpart for, hence a model
    whose encoder width differs from `aggregator.embed_dim` is refused. Tensors are cloned and
    contiguous, ready for `safetensors.torch.save_file`.
    """
    if isinstance(model_or_parts, dict):
        encoder, recon = model_or_parts.get("encoder"), model_or_parts.get("reconstruction")
    else:
        encoder = getattr(model_or_parts, "encoder", None)
        recon = getattr(model_or_parts, "reconstruction", None)
    if encoder is None or recon is None:
        raise VidLLMError("to_vggt_state_dict needs both an encoder and a reconstruction branch")
    out: dict[str, Tensor] = {}
    for key, value in recon.state_dict().items():
        if key.startswith("metric_depth."):
            continue
        if key.startswith("aggregator.input_proj."):
            raise VidLLMError("the aggregator has an input projection (encoder width ≠ aggregator.embed_dim), "
                              "which a VGGT checkpoint cannot hold")
        if not key.startswith(_RECON_PREFIXES):
            raise VidLLMError(f"reconstruction weight '{key}' has no VGGT name")
        out[key] = value.detach().clone().contiguous()
    _, dinov2 = _find_dinov2(encoder)
    enc = dict(dinov2.state_dict())
    for new, old in _LEGACY_HF.items():  # transformers < 5 names → current ones
        for key in [k for k in enc if old in k]:
            enc[key.replace(old, new)] = enc.pop(key)
    for key, value in enc.items():
        target = _encoder_key_to_vggt(key)
        if target is not None:
            out[target] = value.detach().clone().contiguous()
    layers = sorted({int(k.split(".")[2]) for k in enc if k.startswith("encoder.layer.")})
    for layer in layers:
        prefix = f"encoder.layer.{layer}.attention."
        for kind in ("weight", "bias"):
            parts = [enc.get(f"{prefix}{x}_proj.{kind}") for x in "qkv"]
            if all(p is not None for p in parts):
                out[f"{_PATCH}blocks.{layer}.attn.qkv.{kind}"] = torch.cat([p.detach() for p in parts]).contiguous()
    return out


def vggt_dino_config(sd: dict[str, Tensor], num_heads: int | None = None):
    """The `Dinov2WithRegistersConfig` of a VGGT checkpoint's DINO patch embed, read off its shapes.

    Attention heads leave no trace in the shapes; DINOv2 uses 64 channels per head (ViT-L: 16),
    so that is the default."""
    from transformers import Dinov2WithRegistersConfig

    encoder_sd, _, _ = convert_vggt_state_dict(sd)
    if "embeddings.position_embeddings" not in encoder_sd:
        raise VidLLMError("no aggregator.patch_embed weights (DINO) in this VGGT checkpoint")
    hidden = encoder_sd["embeddings.position_embeddings"].shape[-1]
    patch = encoder_sd["embeddings.patch_embeddings.projection.weight"].shape[-1]
    grid = int(round((encoder_sd["embeddings.position_embeddings"].shape[1] - 1) ** 0.5))
    layers = 1 + max(int(k.split(".")[2]) for k in encoder_sd if k.startswith("encoder.layer."))
    mlp = encoder_sd["encoder.layer.0.mlp.fc1.weight"].shape[0]
    registers = encoder_sd["embeddings.register_tokens"].shape[1] if "embeddings.register_tokens" in encoder_sd else 0
    heads = num_heads or max(1, hidden // 64)
    if hidden % heads:
        raise VidLLMError(f"width {hidden} is not divisible by {heads} attention heads")
    return Dinov2WithRegistersConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                                     mlp_ratio=mlp // hidden, patch_size=patch, image_size=grid * patch,
                                     num_register_tokens=registers, layerscale_value=1.0)


def export_vggt_dino(checkpoint: str | Path, out_dir: str | Path, num_heads: int | None = None) -> Path:
    """Write a VGGT checkpoint's DINO patch embed as a Hugging Face `Dinov2WithRegistersModel`
    directory: the Stage-1 geometry teacher (`teachers.geometry`), which is the encoder whose
    features VGGT's aggregator was trained on. Written under a temporary name, then renamed."""

    from transformers import Dinov2WithRegistersModel

    from vidllm.artifacts.files import atomic_dir

    sd = read_checkpoint(checkpoint)
    try:
        config = vggt_dino_config(sd, num_heads)
    except VidLLMError as exc:
        raise DataError(checkpoint, str(exc)) from None
    model = Dinov2WithRegistersModel(config)
    report = load_vggt_into({"encoder": model}, sd)
    missing = [k for k in report.missing if not k.endswith("mask_token")]
    if missing:
        raise DataError(checkpoint, f"DINO weights missing for {missing[:3]}")
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(str(tmp))
    return out_dir
