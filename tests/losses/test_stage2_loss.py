import pytest
import torch
from torch import nn

from tests.losses.clip import load_clip
from vidllm.config import load_config
from vidllm.losses import Stage2LossWeights, stage2_loss
from vidllm.models.vidllm import VidLLM
from vidllm.tokenizer import EOS, GROUND, SpecialTokenIds, build_prompt, train_tokenizer


@pytest.fixture(scope="module")
def clip(synthetic_dataset):
    return load_clip(synthetic_dataset.scenes[1].path, frames=2)


def perfect_outputs(targets: dict) -> dict:
    """Model-shaped outputs equal to the targets (confidence → 1, metric depth = GT)."""
    ones = torch.ones_like(targets["depth"])
    recon = {"pose_enc_list": [targets["pose_enc"].clone(), targets["pose_enc"].clone()],
             "depth": targets["depth"].clone(), "depth_conf": ones,
             "world_points": targets["points"].clone(), "world_points_conf": ones,
             "metric_depth": torch.where(targets["valid_mask"], targets["depth_metric"], ones)}
    return {"recon": recon, "scene_rotation": targets["scene_rotation"].clone()}


def test_stage2_zero_at_perfect_prediction_and_positive_otherwise(clip):
    targets = clip["targets"]
    out = stage2_loss(perfect_outputs(targets), targets)
    assert abs(out["total"].item()) < 1e-4
    assert out["vl"].item() == 0 and "lm" not in out
    noisy = perfect_outputs(targets)
    noisy["recon"]["depth"] = noisy["recon"]["depth"] * 1.1
    noisy["recon"]["pose_enc_list"][-1] = noisy["recon"]["pose_enc_list"][-1] + 0.05
    noisy["recon"]["metric_depth"] = noisy["recon"]["metric_depth"] * 0.8
    out = stage2_loss(noisy, targets)
    assert out["depth"] > 0.01 and out["camera"] > 0.01 and out["md"] > 0.01 and out["point"] < 1e-4
    weights = Stage2LossWeights(camera=2.0, depth=3.0, md=0.5)
    out = stage2_loss(noisy, targets, weights)
    expected_recon = 2.0 * out["camera"] + 3.0 * out["depth"] + out["point"] + out["rotation"]
    assert torch.allclose(out["recon"], expected_recon)
    assert torch.allclose(out["total"], out["recon"] + 0.5 * out["md_log"])
    with pytest.raises(ValueError, match="unknown stage-2 loss weight"):
        Stage2LossWeights.from_mapping({"camra": 1.0})
    assert Stage2LossWeights.from_mapping({"camera": 1.0}).camera == 1.0


def test_stage2_on_the_model_composes_terms_and_routes_gradients(clip):
    images, targets = clip["images"], clip["targets"]
    tokenizer = train_tokenizer(vocab_size=512)
    cfg = load_config("tiny").model
    torch.manual_seed(0)
    model = VidLLM(cfg, SpecialTokenIds.from_tokenizer(tokenizer), 512)
    enc = tokenizer([build_prompt("Where is the table?") + f" {GROUND}{EOS}"], return_tensors="pt",
                    add_special_tokens=False)
    box_targets = torch.tensor([[0.5, 1.0, 0.4, 1.0, 0.6, 0.8]])
    outputs = model(images, enc["input_ids"], enc["attention_mask"], enc["input_ids"].clone())
    weights = Stage2LossWeights(md_chamfer=0.1)
    out = stage2_loss(outputs, dict(targets, box_targets=box_targets), weights)
    for key in ("camera", "depth", "point", "rotation", "md_log", "md_chamfer", "lm", "box", "giou"):
        assert torch.isfinite(out[key]) and out[key] != 0, key
    assert torch.allclose(out["vl"], out["lm"] + out["box"] + out["giou"])
    assert torch.allclose(out["md"], out["md_log"] + 0.1 * out["md_chamfer"])
    assert torch.allclose(out["total"], out["recon"] + out["md"] + out["vl"])

    def grad_sum(module: nn.Module) -> float:
        return sum(p.grad.abs().sum().item() for p in module.parameters() if p.grad is not None)

    # L_MD reaches the metric depth model; the VL terms never reach the reconstruction branch.
    out["md"].backward(retain_graph=True)
    assert grad_sum(model.reconstruction.metric_depth) > 0 and grad_sum(model.llm) == 0
    model.zero_grad()
    out["vl"].backward(retain_graph=True)
    assert grad_sum(model.reconstruction) == 0 and grad_sum(model.llm) > 0
    model.zero_grad()
    out["total"].backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert grad_sum(model.reconstruction.camera_head) > 0 and grad_sum(model.cta) > 0
