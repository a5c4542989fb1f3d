import warnings

import pytest
import torch
from transformers import AutoModelForCausalLM

import vidllm.attention_select as attention_select
from vidllm.attention_select import select_attn_implementation
from vidllm.config import load_config
from vidllm.models.llm import build_causal_lm, splice_vision_tokens


def test_auto_picks_sdpa_without_flash_attn():
    assert select_attn_implementation("auto") == "sdpa"  # this machine: no flash-attn, no CUDA


@pytest.mark.parametrize("flash_importable,cuda,expected", [(True, True, "flash_attention_2"), (True, False, "sdpa"),
                                                           (False, True, "sdpa"), (False, False, "sdpa")])
def test_auto_needs_flash_attn_and_cuda(monkeypatch, flash_importable, cuda, expected):
    monkeypatch.setattr(attention_select, "is_flash_attn_2_available", lambda: flash_importable)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert select_attn_implementation("auto") == expected


def test_flash_requested_without_flash_attn_falls_back_with_warning():
    with pytest.warns(RuntimeWarning, match="flash_attention_2 requested but flash-attn is not installed; using sdpa"):
        assert select_attn_implementation("flash_attention_2") == "sdpa"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert select_attn_implementation("eager") == "eager"
    with pytest.raises(ValueError, match="unknown attention implementation"):
        select_attn_implementation("flex")


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_build_from_inline_architecture(arch):
    cfg = load_config("tiny", overrides=[f"model.llm.architecture={arch}"]).model.llm
    llm = build_causal_lm(cfg, "sdpa")
    assert llm.config.model_type == arch and llm.config._attn_implementation == "sdpa"
    assert llm.get_input_embeddings().weight.shape == (512, 64)
    out = llm(inputs_embeds=torch.randn(1, 5, 64))
    assert out.logits.shape == (1, 5, 512)


def test_build_from_local_pretrained_resizes_vocab(tmp_path):
    cfg = load_config("tiny").model.llm
    build_causal_lm(cfg, "sdpa").save_pretrained(tmp_path)
    llm = build_causal_lm(cfg.model_copy(update={"pretrained": str(tmp_path)}), "eager", vocab_size=520)
    assert llm.get_input_embeddings().num_embeddings == 520
    assert isinstance(llm, type(AutoModelForCausalLM.from_pretrained(tmp_path)))


def test_splice_vision_tokens_places_tokens_and_masks_labels():
    image_id, dim = 7, 4
    input_ids = torch.tensor([[1, 7, 2, 3, 0], [7, 4, 5, 6, 8]])
    attention = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    labels = torch.tensor([[-100, -100, 2, 3, -100], [-100, 4, 5, 6, 8]])
    text = torch.arange(10 * dim, dtype=torch.float32).view(2, 5, dim)
    vision = -torch.ones(2, 3, dim)
    vmask = torch.tensor([[True, True, False], [True, False, False]])
    out = splice_vision_tokens(text, input_ids, attention, image_id, vision, vmask, labels)
    assert out["inputs_embeds"].shape == (2, 6, dim)
    assert torch.equal(out["inputs_embeds"][0, 1:3], vision[0, :2])
    assert torch.equal(out["inputs_embeds"][0, 3], text[0, 2])
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 0]]
    assert out["labels"].tolist() == [[-100, -100, -100, 2, 3, -100], [-100, 4, 5, 6, 8, -100]]
    assert out["position_map"].tolist() == [[0, 2, 3, 4, 5], [0, 1, 2, 3, 4]]


def test_splice_requires_one_image_token():
    with pytest.raises(ValueError, match="row 0: expected exactly one <image> token"):
        splice_vision_tokens(torch.zeros(1, 3, 2), torch.tensor([[1, 2, 3]]), torch.ones(1, 3, dtype=torch.long),
                             7, torch.zeros(1, 1, 2), torch.ones(1, 1, dtype=torch.bool))
