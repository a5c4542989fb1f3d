"""VGGT checkpoint compatibility. `data/vggt_state_dict_shapes.json` lists every key and shape
of the real default VGGT model (1,797 keys, read off the upstream class)."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from vidllm.config import load_config
from vidllm.errors import DataError, VidLLMError
from vidllm.models.convert import convert_vggt_state_dict, load_vggt_into, read_checkpoint
from vidllm.models.encoder import SharedEncoder
from vidllm.models.reconstruction import ReconstructionBranch

SHAPES = Path(__file__).parent / "data" / "vggt_state_dict_shapes.json"


def test_real_vggt_key_names_and_shapes_load_at_paper_size_without_unexpected_keys():
    shapes = json.loads(SHAPES.read_text())
    cfg = load_config("paper").model  # encoder = VGGT's dinov2_vitl14_reg (4 registers)
    with torch.device("meta"):  # 1.2B parameters: shapes only, nothing materialised
        encoder = SharedEncoder(cfg.encoder)
        recon = ReconstructionBranch(cfg, in_dim=cfg.encoder.hidden_size)
    sd = {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}
    report = load_vggt_into({"encoder": encoder, "reconstruction": recon}, sd, assign=True)
    assert report.unexpected == []
    assert report.ignored == [k for k in shapes if k.startswith("track_head.")]
    # Everything VGGT has beyond the track head found a home; ours-only = the metric depth model.
    assert report.missing and all(k.startswith("reconstruction.metric_depth.") for k in report.missing), report.missing
    n_qkv = sum(1 for k in shapes if k.startswith("aggregator.patch_embed.") and ".attn.qkv." in k)
    assert report.loaded == len(shapes) - len(report.ignored) + 2 * n_qkv  # qkv split into q, k, v
    assert recon.aggregator.frame_blocks[23].attn.qkv.weight.shape == (3072, 1024)
    assert recon.camera_head.trunk[3].mlp.fc1.weight.shape == (8192, 2048)


def _to_vggt_names(encoder: SharedEncoder, recon: ReconstructionBranch) -> dict[str, torch.Tensor]:
    """Our tiny modules' weights under VGGT names (the inverse mapping, for a value check)."""
    sd = {k: v.clone() for k, v in recon.state_dict().items() if not k.startswith("metric_depth.")}
    enc = encoder.backbone.state_dict()
    p = "aggregator.patch_embed."
    sd[p + "cls_token"] = enc["embeddings.cls_token"]
    sd[p + "mask_token"] = enc["embeddings.mask_token"]
    sd[p + "register_tokens"] = enc["embeddings.register_tokens"]
    sd[p + "pos_embed"] = enc["embeddings.position_embeddings"]
    sd[p + "patch_embed.proj.weight"] = enc["embeddings.patch_embeddings.projection.weight"]
    sd[p + "patch_embed.proj.bias"] = enc["embeddings.patch_embeddings.projection.bias"]
    sd[p + "norm.weight"], sd[p + "norm.bias"] = enc["layernorm.weight"], enc["layernorm.bias"]
    for i in range(len(encoder.backbone.encoder.layer)):
        e, b = f"encoder.layer.{i}.", f"{p}blocks.{i}."
        for kind in ("weight", "bias"):
            sd[b + f"attn.qkv.{kind}"] = torch.cat([enc[e + f"attention.{x}_proj.{kind}"] for x in "qkv"])
            sd[b + f"attn.proj.{kind}"] = enc[e + f"attention.o_proj.{kind}"]
            for name in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
                sd[b + f"{name}.{kind}"] = enc[e + f"{name}.{kind}"]
        sd[b + "ls1.gamma"] = enc[e + "layer_scale1.lambda1"]
        sd[b + "ls2.gamma"] = enc[e + "layer_scale2.lambda1"]
    sd["track_head.some.weight"] = torch.zeros(2)
    return sd


def test_loaded_weights_reproduce_the_source_model():
    cfg = load_config("tiny").model
    torch.manual_seed(0)
    src_enc, src_rec = SharedEncoder(cfg.encoder), ReconstructionBranch(cfg, cfg.encoder.hidden_size)
    vggt_sd = _to_vggt_names(src_enc, src_rec)
    torch.manual_seed(1)
    enc, rec = SharedEncoder(cfg.encoder), ReconstructionBranch(cfg, cfg.encoder.hidden_size)
    rec.metric_depth.load_state_dict(src_rec.metric_depth.state_dict())
    model = nn.Module()  # like VidLLM: `.encoder` (SharedEncoder) and `.reconstruction`
    model.encoder, model.reconstruction = enc, rec
    report = load_vggt_into(model, vggt_sd)
    assert report.unexpected == [] and report.ignored == ["track_head.some.weight"]
    images = torch.rand(1, 2, 3, 56, 56)
    with torch.no_grad():
        tokens_src, tokens = src_enc(images), enc(images)
        assert torch.allclose(tokens_src, tokens, atol=1e-6)
        out_src, out = src_rec(tokens_src, images, tokens_src), rec(tokens, images, tokens)
    assert torch.allclose(out_src["pose_enc"], out["pose_enc"], atol=1e-6)
    assert torch.allclose(out_src["depth"], out["depth"], atol=1e-6)


def test_unknown_keys_are_reported_and_shape_mismatch_is_an_error():
    enc_sd, rec_sd, report = convert_vggt_state_dict(
        {
            "module.camera_head.embed_pose.bias": torch.zeros(3),
            "aggregator.patch_embed.blocks.0.weird.weight": torch.zeros(1),
            "something.else": torch.zeros(1),
        }
    )
    assert list(rec_sd) == ["camera_head.embed_pose.bias"] and enc_sd == {}
    assert report.unexpected == ["aggregator.patch_embed.blocks.0.weird.weight", "something.else"]
    recon = ReconstructionBranch(load_config("tiny").model, 32)
    with pytest.raises(VidLLMError, match="camera_head.embed_pose.bias"):
        load_vggt_into(recon, {"camera_head.embed_pose.bias": torch.zeros(3)})


def test_read_checkpoint(tmp_path):
    path = tmp_path / "vggt.safetensors"
    save_file({"camera_head.empty_pose_tokens": torch.ones(1, 1, 9)}, str(path))
    assert read_checkpoint(path)["camera_head.empty_pose_tokens"].shape == (1, 1, 9)
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="broken.pt"):
        read_checkpoint(bad)
    with pytest.raises(DataError, match="not found"):
        read_checkpoint(tmp_path / "missing.pt")


def test_vidllm_init_loads_a_vggt_checkpoint(tmp_path, capsys):
    """`vidllm init --vggt` on a tiny VGGT-named safetensors file: the saved model directory
    holds exactly those encoder and reconstruction weights."""
    from vidllm.artifacts.model_dir import load_pretrained
    from vidllm.cli import main

    cfg = load_config("tiny").model
    torch.manual_seed(5)
    src_enc, src_rec = SharedEncoder(cfg.encoder), ReconstructionBranch(cfg, cfg.encoder.hidden_size)
    path = tmp_path / "vggt_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in _to_vggt_names(src_enc, src_rec).items()}, str(path))
    assert main(["init", "--recipe", "tiny", "--out", str(tmp_path / "m"), "--vggt", str(path)]) == 0
    out = capsys.readouterr().out
    assert "0 unexpected, 1 ignored" in out and "wrote" in out
    model, _ = load_pretrained(tmp_path / "m")
    for name, value in src_rec.state_dict().items():
        if not name.startswith("metric_depth."):
            assert torch.equal(model.reconstruction.state_dict()[name], value), name
    images = torch.rand(1, 2, 3, 56, 56)
    with torch.no_grad():
        assert torch.allclose(model.encoder(images), src_enc(images), atol=1e-6)
    # A checkpoint that does not fit the recipe, or is not a checkpoint: one line, exit 2.
    assert main(["init", "--recipe", "demo", "--out", str(tmp_path / "d"), "--vggt", str(path)]) == 2
    assert "does not fit the model config" in capsys.readouterr().err
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"nope")
    assert main(["init", "--out", str(tmp_path / "b"), "--vggt", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.safetensors: not a readable checkpoint" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "d").exists() and not (tmp_path / "b").exists()
