import numpy as np
import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from vidllm.eval.captions import (
    clean_answer,
    exact_match,
    meteor_scorer,
    raw_exact_match,
    score_captions,
    tokenize,
    tokenize_scan2cap,
)

PREDICTIONS = {
    "s0|1|chair": "This is a brown chair. It is next to the table.",
    "s0|2|table": "a wooden table in the middle of the room",
    "s1|0|bed": "The bed is white, it is against the wall.",
    "s1|3|lamp": "",  # e.g. a Scan2Cap object whose box failed the IoU gate
    "s2|4|sofa": "this is a blue sofa . it faces the tv",
}
REFERENCES = {
    "s0|1|chair": ["This is a brown chair. It is placed next to the table.", "A brown chair by the table."],
    "s0|2|table": ["The table is wooden. It is in the middle of the room."],
    "s1|0|bed": ["A white bed against the wall.", "The bed is white and large.", "It is a bed."],
    "s1|3|lamp": ["A tall lamp in the corner."],
    "s2|4|sofa": ["This is a blue sofa. It faces the TV.", "A blue couch facing the television."],
}


def test_scan2cap_tokenisation():
    assert tokenize_scan2cap("This is a Chair.It is brown,  big") == "sos this is a chair . it is brown , big eos"
    assert tokenize_scan2cap("") == "sos eos"


@pytest.fixture(scope="module")
def meteor():
    with meteor_scorer() as scorer:
        yield scorer


@pytest.mark.parametrize("preset", ["scan2cap", "coco_ptb"])
def test_caption_scores_agree_with_pycocoevalcap_scorers(preset, meteor):
    ours = score_captions(PREDICTIONS, REFERENCES, preset=preset, meteor_instance=meteor)
    ids = sorted(REFERENCES)
    if preset == "coco_ptb":  # coco-caption's own tokenizer class, as coco-caption's eval uses it
        tok = PTBTokenizer()
        gts = tok.tokenize({i: [{"caption": c} for c in REFERENCES[i]] for i in ids})
        res = tok.tokenize({i: [{"caption": PREDICTIONS[i]}] for i in ids})
        res = {i: v if v else [""] for i, v in res.items()}
        for i in ids:
            res.setdefault(i, [""])
    else:
        gts = {i: [tokenize_scan2cap(c) for c in REFERENCES[i]] for i in ids}
        res = {i: [tokenize_scan2cap(PREDICTIONS[i])] for i in ids}
    assert tokenize({i: REFERENCES[i] for i in ids}, preset) == gts
    bleu, bleu_each = Bleu(4).compute_score(gts, res, verbose=0)
    assert ours.corpus["BLEU-4"] == pytest.approx(bleu[3])
    assert np.allclose(ours.per_sample["BLEU-4"], bleu_each[3])
    rouge, rouge_each = Rouge().compute_score(gts, res)
    assert ours.corpus["ROUGE-L"] == pytest.approx(rouge)
    assert np.allclose(ours.per_sample["ROUGE-L"], rouge_each)
    cider, cider_each = Cider().compute_score(gts, res)
    assert ours.corpus["CIDEr"] == pytest.approx(cider)
    assert np.allclose(ours.per_sample["CIDEr"], cider_each)
    met, met_each = meteor.compute_score(gts, res)
    assert ours.corpus["METEOR"] == pytest.approx(met)
    assert np.allclose(ours.per_sample["METEOR"], met_each)
    # Sanity: the exact-copy-ish caption beats the empty one.
    k_good, k_empty = ids.index("s2|4|sofa"), ids.index("s1|3|lamp")
    assert ours.per_sample["CIDEr"][k_good] > ours.per_sample["CIDEr"][k_empty]


def test_caption_ids_must_match():
    from vidllm.errors import VidLLMError

    with pytest.raises(VidLLMError, match="missing"):
        score_captions({"a": "x"}, {"a": ["x"], "b": ["y"]}, meteor=False)


def test_clean_answer_and_exact_match():
    # LEO's rules: commas, apostrophes, hyphens and colons survive; other punctuation goes.
    assert clean_answer("The Brown, wooden chair.") == "brown, wooden chair"
    assert clean_answer("2 chairs") == "two chairs"
    assert clean_answer("None") == "zero" and clean_answer("12") == "twelve"
    assert clean_answer("on the letf of an oclock sign") == "on left of o'clock sign"
    assert clean_answer("Chair2 in  the  corner !") == "chair in corner"
    assert exact_match("Two.", ["2", "three"]) == (True, True)
    assert exact_match("a brown chair", ["brown chair"]) == (True, True)
    assert exact_match("brown", ["dark brown"]) == (False, True)  # refined: substring after space removal
    assert exact_match("blue", ["dark brown"]) == (False, False)
    assert exact_match("", ["anything"]) == (False, False)
    assert raw_exact_match("white.", ["white", "grey"])
    assert not raw_exact_match("White", ["white"])
