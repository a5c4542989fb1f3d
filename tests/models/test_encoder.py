import pytest
import torch
from transformers import Dinov2Config, Dinov2Model

from vidllm.config import load_config
from vidllm.models.encoder import IMAGENET_MEAN, IMAGENET_STD, SharedEncoder


def _cfg(**overrides):
    cfg = load_config("tiny").model.encoder
    return cfg.model_copy(update=overrides)


def test_patch_tokens_shape():
    encoder = SharedEncoder(_cfg())
    tokens = encoder(torch.rand(2, 3, 3, 56, 42))
    assert tokens.shape == (2, 3, (56 // 14) * (42 // 14), 32)


def test_registers_are_stripped():
    encoder = SharedEncoder(_cfg(registers=4))
    assert encoder.num_prefix_tokens == 5
    assert encoder(torch.rand(1, 2, 3, 28, 28)).shape == (1, 2, 4, 32)


def test_size_not_multiple_of_patch_is_an_error():
    encoder = SharedEncoder(_cfg())
    with pytest.raises(ValueError, match="not a multiple of the encoder patch size 14"):
        encoder(torch.rand(1, 1, 3, 50, 56))


def test_imagenet_normalisation_inside():
    encoder = SharedEncoder(_cfg()).eval()
    images = torch.rand(1, 2, 3, 28, 28)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        hidden = encoder.backbone(pixel_values=(images[0] - mean) / std).last_hidden_state
        expected = hidden[:, encoder.num_prefix_tokens :]  # CLS + registers dropped
        assert torch.allclose(encoder(images)[0], expected, atol=1e-6)


def test_from_pretrained_local_path(tmp_path):
    torch.manual_seed(0)
    reference = Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                         patch_size=14, image_size=56)).eval()
    reference.save_pretrained(tmp_path)
    encoder = SharedEncoder(_cfg(pretrained=str(tmp_path))).eval()
    images = torch.rand(1, 1, 3, 56, 56)
    with torch.no_grad():
        assert torch.equal(encoder(images), SharedEncoder(_cfg(pretrained=str(tmp_path))).eval()(images))
    assert encoder.backbone.config.num_hidden_layers == 1
    # The saved architecture wins over the recipe's fields (here: no registers vs the recipe's 4).
    assert type(encoder.backbone) is Dinov2Model and encoder.num_prefix_tokens == 1
    with torch.no_grad():
        expected = reference(pixel_values=(images[0] - encoder.mean) / encoder.std).last_hidden_state[:, 1:]
        assert torch.allclose(encoder(images)[0], expected, atol=1e-6)


def test_pretrained_path_that_is_not_dinov2_is_a_config_error(tmp_path):
    from transformers import LlamaConfig

    from vidllm.config import ConfigError

    LlamaConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2).save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="is a 'llama' model, not DINOv2"):
        SharedEncoder(_cfg(pretrained=str(tmp_path)))
