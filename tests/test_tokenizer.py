import pytest
from transformers import AutoTokenizer

from vidllm.errors import DataError
from vidllm.tokenizer import (EOS, GROUND, IMAGE, LOCATE, OBJ, SpecialTokenIds, build_prompt, load_tokenizer,
                              train_tokenizer)


def test_offline_tokenizer_round_trip(tmp_path):
    tok = train_tokenizer(["how many towels are on the rack?"], vocab_size=512, out_dir=tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert len(loaded) == len(tok) <= 512
    ids = SpecialTokenIds.from_tokenizer(loaded)
    assert len({ids.pad, ids.eos, ids.image, ids.ground, ids.obj}) == 5
    text = build_prompt("How many towels?", situation="I am facing the sink.", with_object=True) + f" 2 {GROUND}{EOS}"
    encoded = loaded(text, add_special_tokens=False)["input_ids"]
    assert encoded.count(ids.image) == 1 and encoded.count(ids.obj) == 1 and encoded[-1] == ids.eos
    assert loaded.decode(encoded) == text
    assert IMAGE not in loaded.decode(encoded, skip_special_tokens=True)
    assert OBJ in text and loaded.pad_token_id == ids.pad


def test_load_tokenizer_errors_name_the_directory(tmp_path):
    with pytest.raises(DataError, match="missing: tokenizer directory not found"):
        load_tokenizer(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: not a loadable tokenizer directory"):
        load_tokenizer(tmp_path / "empty")


def test_grounding_requests_say_what_is_wanted():
    assert build_prompt("the brown table", grounding=True) == f"{IMAGE}\nUSER: {LOCATE} the brown table\nASSISTANT:"
    assert LOCATE not in build_prompt("What color is the table?")
