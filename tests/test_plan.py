import json
import subprocess
import sys
import time

from vidllm.config import load_config
from vidllm.plan import plan_model


def test_tiny_plan_counts_match_a_real_model():
    from vidllm.models.vidllm import VidLLM

    cfg = load_config("tiny")
    plan = plan_model(cfg)
    model = VidLLM(cfg.model, None, cfg.model.llm.vocab_size)
    assert plan["parameters"]["total"] == sum(p.numel() for p in model.parameters())
    assert plan["parameters"]["llm"] == sum(p.numel() for p in model.llm.parameters())
    from vidllm.lora import apply_lora, count_parameters

    trainable, _ = count_parameters(apply_lora(model, cfg.model.llm))
    assert plan["trainable_under_lora"]["total"] == trainable
    assert plan["totals"]["forward_tflops"] > 0 and plan["totals"]["activation_gib"] > 0


def test_paper_plan_cli_json():
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "vidllm", "plan", "--recipe", "paper", "--json"],
                          capture_output=True, text=True, timeout=120)
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    params = plan["parameters"]
    assert abs(params["encoder"] / 1e6 - 304) < 2  # DINOv2-L/14
    assert abs(params["aggregator_blocks"] / 1e6 - 605) < 2  # VGGT frame + global blocks
    assert 7.0e9 < params["llm"] < 8.0e9  # Qwen2.5-7B dimensions
    # ScanNet 4:3 frames: short side 518, long side cropped to a multiple of 14 → 37 x 49 patches.
    assert plan["setting"]["frames"] == 32 and plan["setting"]["image_hw"] == [518, 686]
    assert plan["setting"]["patch_grid"] == [37, 49]
    assert plan["trainable_under_lora"]["lora_adapters"] > 0
    # </s>, <image>, <ground>, <obj> rows of the (untied) embedding and LM head, width 3584.
    assert plan["trainable_under_lora"]["token_rows"] == 4 * 3584 * 2
    assert plan["totals"]["train_step_tflops"] > plan["totals"]["forward_tflops"] > 100
    assert elapsed < 60


def test_plan_rejects_sizes_off_the_patch_grid():
    import pytest

    from vidllm.config import ConfigError

    with pytest.raises(ConfigError, match="image size 50x56 must be positive multiples of the patch size 14"):
        plan_model(load_config("tiny"), image_hw=(50, 56))


def test_params_paper_names_every_pretrained_part_at_the_real_shapes():
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "params.paper.yaml"
    cfg = load_config(yaml_path=path)
    assert cfg.recipe == "paper" and cfg.model.image_size == [518, 686] and cfg.model.frames == 32
    named = [cfg.model.encoder.pretrained, cfg.model.init.vggt, cfg.model.llm.pretrained, cfg.teachers.geometry,
             cfg.teachers.semantic]
    assert all(named), named
    plan = plan_model(cfg)  # planning never reads the weights
    assert plan["setting"]["image_hw"] == [518, 686] and plan["setting"]["patch_grid"] == [37, 49]
