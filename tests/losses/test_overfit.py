"""End to end: the Stage-2 objective actually trains the tiny Vid-LLM on a real (synthetic
ScanNet-format) clip — the loss falls and the predicted depth gets closer to the GT."""

import pytest
import torch

from tests.losses.clip import load_clip
from vidllm.config import load_config
from vidllm.losses import stage2_loss
from vidllm.models.vidllm import VidLLM
from vidllm.tokenizer import EOS, GROUND, SpecialTokenIds, build_prompt, train_tokenizer

STEPS = 40


@pytest.fixture
def one_thread():
    # Six test runs share two cores here; one thread avoids oversubscription stalls.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def depth_errors(outputs: dict, targets: dict) -> tuple[float, float]:
    """(mean |d̂ − d| of the scale-free depth, AbsRel of the metric depth) on valid pixels."""
    recon, mask = outputs["recon"], targets["valid_mask"]
    rel = (recon["depth"].detach() - targets["depth"]).abs()[mask].mean()
    metric = targets["depth_metric"]
    absrel = ((recon["metric_depth"].detach() - metric).abs() / metric.clamp_min(1e-3))[mask].mean()
    return float(rel), float(absrel)


@pytest.mark.slow
def test_stage2_loss_overfits_one_clip(synthetic_dataset, one_thread):
    clip = load_clip(synthetic_dataset.scenes[0].path, frames=2)
    images, targets = clip["images"], clip["targets"]
    obj = clip["objects"][0]
    # Box target in the scene frame: gravity-aligned axes, origin at the first camera.
    centre = torch.as_tensor(obj.box[:3], dtype=torch.float32) - targets["first_camera_center"][0]
    box_targets = torch.cat([centre, torch.as_tensor(obj.box[3:], dtype=torch.float32)])[None]

    tokenizer = train_tokenizer(vocab_size=512)
    text = build_prompt(f"Where is the {obj.label}?") + f" {GROUND}{EOS}"
    enc = tokenizer([text], return_tensors="pt", add_special_tokens=False)
    cfg = load_config("tiny").model
    torch.manual_seed(0)
    # Full fine-tune (no LoRA): a random tiny LLM behind frozen weights would learn too slowly.
    model = VidLLM(cfg, SpecialTokenIds.from_tokenizer(tokenizer), 512)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    batch = dict(targets, box_targets=box_targets)

    def forward():
        return model(images, enc["input_ids"], enc["attention_mask"], enc["input_ids"].clone())

    history = []
    for step in range(STEPS):
        outputs = forward()
        losses = stage2_loss(outputs, batch)
        if step == 0:
            first_losses, first_errors = {k: v.item() for k, v in losses.items()}, depth_errors(outputs, targets)
        assert torch.isfinite(losses["total"])
        optimizer.zero_grad()
        losses["total"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        history.append(losses["total"].item())

    with torch.no_grad():
        outputs = forward()
        last = {k: float(v) for k, v in stage2_loss(outputs, batch).items()}
    rel_error, absrel = depth_errors(outputs, targets)
    assert last["total"] < 0.5 * first_losses["total"], history
    for term in ("camera", "depth", "md", "lm", "box"):
        assert last[term] < first_losses[term], (term, first_losses[term], last[term])
    assert rel_error < 0.4 * first_errors[0]
    assert absrel < 0.8 * first_errors[1]
