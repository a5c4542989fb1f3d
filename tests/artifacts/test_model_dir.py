import json
import os

import pytest
import torch
from safetensors.torch import load_file

from vidllm.artifacts.model_dir import load_pretrained, read_model_config, save_pretrained
from vidllm.cli import main
from vidllm.config import load_config
from vidllm.errors import DataError
from vidllm.lora import apply_lora, has_lora, merge_lora, trainable_token_ids
from vidllm.models.vidllm import VidLLM
from vidllm.tokenizer import SpecialTokenIds, build_prompt, train_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(vocab_size=512)


def _model(tokenizer, lora: bool):
    cfg = load_config("tiny").model
    torch.manual_seed(0)
    model = VidLLM(cfg, SpecialTokenIds.from_tokenizer(tokenizer), 512)
    if lora:
        apply_lora(model, cfg.llm)
        with torch.no_grad():  # non-zero adapters and trained token rows, so merging changes the base weights
            for name, p in model.llm.named_parameters():
                if "lora_B" in name:
                    p.normal_(std=0.05)
                elif "trainable_tokens_delta" in name:
                    p.add_(torch.randn_like(p))
    return model.eval()


def _outputs(model, tokenizer):
    images = torch.rand(1, 2, 3, 56, 56, generator=torch.Generator().manual_seed(3))
    ids = tokenizer([build_prompt("Where is the chair?") + " <ground>"], return_tensors="pt",
                    add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        out = model(images, ids)
    return out["logits"], out["box_pred"], out["recon"]["depth"]


@pytest.mark.parametrize("lora", [False, True])
def test_round_trip_reproduces_outputs(tmp_path, tokenizer, lora):
    model = _model(tokenizer, lora)
    save_pretrained(model, tmp_path / "m", tokenizer, recipe="tiny")
    names = sorted(os.listdir(tmp_path / "m"))
    assert names == sorted(["config.json", "model.safetensors", "tokenizer"] + (["adapters"] if lora else []))
    loaded, tok = load_pretrained(tmp_path / "m")
    loaded.eval()
    assert has_lora(loaded) == lora and len(tok) == len(tokenizer)
    for a, b in zip(_outputs(model, tokenizer), _outputs(loaded, tok)):
        assert torch.equal(a, b)


def test_lora_merge_on_load(tmp_path, tokenizer):
    model = _model(tokenizer, lora=True)
    save_pretrained(model, tmp_path / "m", tokenizer)
    merged, _ = load_pretrained(tmp_path / "m", merge_lora=True)
    merged.eval()
    assert not has_lora(merged)
    assert torch.allclose(_outputs(model, tokenizer)[0], _outputs(merged, tokenizer)[0], atol=1e-4)
    plain, _ = load_pretrained(tmp_path / "m")
    plain_logits = _outputs(plain.eval(), tokenizer)[0]
    assert torch.allclose(plain_logits, _outputs(model, tokenizer)[0], atol=1e-6)


def test_trained_token_rows_travel_with_the_adapters(tmp_path, tokenizer):
    model = _model(tokenizer, lora=True)
    rows = trainable_token_ids(model.special_ids)
    trained = {"embed": model.llm.get_input_embeddings().weight[rows].detach().clone(),
               "head": model.llm.get_output_embeddings().weight[rows].detach().clone()}
    expected = _outputs(model, tokenizer)
    save_pretrained(model, tmp_path / "m", tokenizer)
    base = load_file(str(tmp_path / "m" / "model.safetensors"))
    assert not torch.equal(base["llm.model.embed_tokens.weight"][rows], trained["embed"])  # original rows
    adapters = load_file(str(tmp_path / "m" / "adapters" / "adapter_model.safetensors"))
    deltas = sorted(k for k in adapters if "trainable_tokens_delta" in k)
    assert len(deltas) == 2 and all(adapters[k].shape == (len(rows), 64) for k in deltas)

    loaded, _ = load_pretrained(tmp_path / "m")
    loaded.eval()
    assert all(p.requires_grad for n, p in loaded.llm.named_parameters() if "trainable_tokens_delta" in n)
    assert torch.equal(loaded.llm.get_input_embeddings().weight[rows], trained["embed"])
    assert torch.equal(loaded.llm.get_output_embeddings().weight[rows], trained["head"])
    merged, _ = load_pretrained(tmp_path / "m", merge_lora=True)
    assert torch.equal(merged.llm.get_input_embeddings().weight[rows], trained["embed"])
    assert torch.equal(merged.llm.get_output_embeddings().weight[rows], trained["head"])

    save_pretrained(merge_lora(model), tmp_path / "merged", tokenizer)  # a merged model saves as plain weights
    plain, _ = load_pretrained(tmp_path / "merged")
    assert not has_lora(plain) and not (tmp_path / "merged" / "adapters").exists()
    for a, b in zip(expected, _outputs(plain.eval(), tokenizer)):
        assert torch.allclose(a, b, atol=1e-4)


def test_overwrite_is_atomic_and_leaves_no_temporaries(tmp_path, tokenizer):
    model = _model(tokenizer, lora=False)
    save_pretrained(model, tmp_path / "m", tokenizer)
    save_pretrained(model, tmp_path / "m", None)  # replaces the directory as a whole
    assert sorted(os.listdir(tmp_path)) == ["m"]
    assert not (tmp_path / "m" / "tokenizer").exists()


def test_bad_directories_give_clear_errors(tmp_path, tokenizer):
    with pytest.raises(DataError, match="not a Vid-LLM model directory"):
        load_pretrained(tmp_path)
    save_pretrained(_model(tokenizer, lora=False), tmp_path / "m", tokenizer)
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(DataError, match=r"model\.safetensors: cannot read safetensors"):
        load_pretrained(tmp_path / "m")
    config = tmp_path / "m" / "config.json"
    config.write_text("{not json")
    with pytest.raises(DataError, match=r"config\.json: not valid JSON"):
        read_model_config(tmp_path / "m")


def test_mismatched_weights_are_rejected(tmp_path, tokenizer):
    save_pretrained(_model(tokenizer, lora=False), tmp_path / "m", tokenizer)
    config = tmp_path / "m" / "config.json"
    meta = json.loads(config.read_text())
    meta["model"]["cta"]["num_bridge_tokens"] = 8
    config.write_text(json.dumps(meta))
    with pytest.raises(Exception, match="bridge_tokens"):
        load_pretrained(tmp_path / "m")


def test_vidllm_init_writes_a_loadable_model(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("how many armchairs are next to the radiator?\n")
    assert main(["init", "--recipe", "tiny", "--out", str(tmp_path / "model"), "--corpus", str(corpus)]) == 0
    assert "wrote" in capsys.readouterr().out
    model, tok = load_pretrained(tmp_path / "model")
    assert has_lora(model) and tok is not None
    results = model.generate(torch.rand(1, 2, 3, 56, 56), [build_prompt("How many chairs?")], tok, max_new_tokens=3)
    assert results[0].depth.shape == (2, 56, 56)
    assert main(["init", "--out", str(tmp_path / "x"), "--corpus", str(tmp_path / "missing.txt")]) == 2
