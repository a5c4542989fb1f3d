"""VGGT output parity: a VGGT checkpoint loaded through `load_vggt_into` (what `vidllm init
--vggt` runs) reproduces VGGT's own forward. The reference outputs were computed by VGGT's code
on a tiny random VGGT (`data/vggt_parity/make_fixture.py`, which records the VGGT commit); the
vggt package is not needed here. Cases: the pos-embed's native grid, an interpolated 4:3 grid,
and more frames than the DPT heads' chunk."""

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from vidllm.config import load_config
from vidllm.models.convert import load_vggt_into
from vidllm.models.vidllm import VidLLM

FIXTURE = Path(__file__).parent / "data" / "vggt_parity"
OUTPUTS = ("pose_enc", "depth", "depth_conf", "world_points", "world_points_conf")
TOLERANCE = 1e-4


def _fixture() -> tuple[dict, dict, dict[str, torch.Tensor]]:
    with safe_open(str(FIXTURE / "cases.safetensors"), "pt") as f:
        meta = f.metadata()
    return json.loads(meta["model"]), json.loads(meta["cases"]), load_file(str(FIXTURE / "cases.safetensors"))


def _model_config(m: dict):
    """Our ModelConfig for the fixture's VGGT sizes. The CTA is off ("none": T'_geom = T_base), which
    is VGGT's own path from patch embed to aggregator; everything else is the tiny recipe."""
    model = {
        "cta": {"variant": "none"},
        "encoder": {"hidden_size": m["embed_dim"], "num_layers": m["encoder_depth"], "num_heads": m["encoder_heads"],
                    "patch_size": m["patch_size"], "image_size": m["img_size"], "registers": m["num_register_tokens"]},
        "aggregator": {"embed_dim": m["embed_dim"], "depth": m["aggregator_depth"], "num_heads": m["aggregator_heads"],
                       "num_register_tokens": m["num_register_tokens"],
                       "intermediate_layers": m["intermediate_layer_idx"]},
        "heads": {"camera_trunk_depth": m["camera_trunk_depth"], "camera_iters": m["camera_iters"],
                  "camera_num_heads": m["camera_heads"], "dpt_features": m["dpt_features"],
                  "dpt_out_channels": m["dpt_out_channels"], "dpt_frames_chunk": m["frames_chunk_size"],
                  "point_head": True},
    }
    return load_config("tiny", params={"model": model}).model


@pytest.fixture(scope="module")
def parity():
    """(max abs error per case and output, reference shapes) of our forward vs VGGT's."""
    sizes, cases, tensors = _fixture()
    torch.manual_seed(0)
    model = VidLLM(_model_config(sizes)).eval()
    report = load_vggt_into(model, load_file(str(FIXTURE / "vggt_tiny.safetensors")))
    # Everything VGGT has is placed; ours-only: the metric depth model.
    assert report.unexpected == [] and report.ignored == []
    assert all(k.startswith("reconstruction.metric_depth.") for k in report.missing), report.missing
    errors: dict[str, dict[str, float]] = {}
    for case in cases:
        images = tensors[f"{case}.images_u8"].float() / 255  # as the fixture fed VGGT: [1, S, 3, H, W] in [0, 1]
        with torch.no_grad():
            recon = model.encode_video(images).recon  # the path users run: encoder → CTA → branch
        errors[case] = {}
        for key in OUTPUTS:
            ref = tensors[f"{case}.{key}"]
            ours = recon[key].unsqueeze(-1) if key == "depth" else recon[key]  # VGGT keeps depth's channel dim
            assert ours.shape == ref.shape, (case, key, ours.shape, ref.shape)
            errors[case][key] = (ours - ref).abs().max().item()
    return errors


def test_fixture_cases_cover_native_interpolated_and_chunked_inputs():
    sizes, cases, _ = _fixture()
    grid = sizes["img_size"] // sizes["patch_size"]
    patch_grids = {case: (h // sizes["patch_size"], w // sizes["patch_size"]) for case, (_, h, w) in cases.items()}
    assert (grid, grid) in patch_grids.values()
    assert any(gh != gw and (gh, gw) != (grid, grid) for gh, gw in patch_grids.values())  # non-square, interpolated
    assert any(frames > sizes["frames_chunk_size"] for frames, _, _ in cases.values())
    assert sum(p.stat().st_size for p in FIXTURE.glob("*.safetensors")) <= 1_000_000


@pytest.mark.parametrize("key", OUTPUTS)
def test_vggt_checkpoint_reproduces_vggt_outputs(parity, key):
    errors = {case: per_key[key] for case, per_key in parity.items()}
    assert all(e <= TOLERANCE for e in errors.values()), f"{key}: max abs error per case {errors}"


def test_vggt_dino_export_is_the_geometry_teacher_vggt_was_trained_on(tmp_path):
    """`vidllm vggt-dino` writes the fixture's DINO as a Dinov2WithRegistersModel whose patch tokens
    equal the encoder tokens of the parity-checked model (the features VGGT's aggregator reads)."""
    from transformers import Dinov2WithRegistersModel

    from vidllm.cli import main

    sizes, cases, tensors = _fixture()
    out = tmp_path / "vggt-dino"
    assert main(["vggt-dino", str(FIXTURE / "vggt_tiny.safetensors"), "--out", str(out),
                 "--num-heads", str(sizes["encoder_heads"])]) == 0
    teacher = Dinov2WithRegistersModel.from_pretrained(str(out)).eval()
    model = VidLLM(_model_config(sizes)).eval()
    load_vggt_into(model, load_file(str(FIXTURE / "vggt_tiny.safetensors")))
    images = tensors[f"{next(iter(cases))}.images_u8"].float() / 255  # [1, S, 3, H, W]
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        tokens = model.encoder(images)
        hidden = teacher(pixel_values=(images[0] - mean) / std).last_hidden_state
    prefix = 1 + teacher.config.num_register_tokens
    assert torch.allclose(hidden[:, prefix:], tokens[0], atol=1e-5)
