"""Caption and QA metrics: BLEU-4, METEOR, ROUGE-L, CIDEr (pycocoevalcap scorers) and exact match.

The COCO scorers are called one by one. `COCOEvalCap.evaluate()` and SPICE are never used:
both download Stanford models at run time. METEOR and the PTB tokenizer run Java.

Tokenisation presets:
- `scan2cap`: lowercase, spaces around "." and ",", whitespace split, every caption wrapped
  as `sos … eos` — the Scan2Cap / Video-3D LLM convention (inflates n-gram scores; use it to
  compare with those papers).
- `coco_ptb`: Stanford PTBTokenizer (lowercase, punctuation removed) as in coco-caption.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from vidllm.errors import VidLLMError

TokenizePreset = Literal["scan2cap", "coco_ptb"]
TOKENIZE_PRESETS: tuple[str, ...] = ("scan2cap", "coco_ptb")
CAPTION_METRICS: tuple[str, ...] = ("CIDEr", "BLEU-4", "METEOR", "ROUGE-L")

# Same list coco-caption's PTBTokenizer drops after tokenising.
_PTB_PUNCTUATIONS = {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-",
                     ".", "?", "!", ",", ":", "-", "--", "...", ";"}  # fmt: skip


def require_java() -> str:
    java = shutil.which("java")
    if java is None:
        raise VidLLMError(
            "METEOR and the PTB tokenizer need Java on PATH (e.g. apt-get install default-jre-headless); "
            "or score without them (--no-meteor, --tokenize scan2cap)"
        )
    return java


def _single_line(text: str) -> str:
    # METEOR and PTB talk line-by-line over pipes: a newline or '|||' would desynchronise them.
    return " ".join(text.replace("|||", " ").split())


def tokenize_scan2cap(text: str) -> str:
    text = text.lower().replace(".", " . ").replace(",", " , ")
    return " ".join(["sos", *text.split(), "eos"])


def tokenize_ptb(captions: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """coco-caption's PTBTokenizer, run on a temp file outside site-packages (which may be read-only)."""
    require_java()
    import pycocoevalcap.tokenizer.ptbtokenizer as ptb

    jar = Path(ptb.__file__).with_name(ptb.STANFORD_CORENLP_3_4_1_JAR)
    keys = [k for k, caps in captions.items() for _ in caps]
    lines = [_single_line(c) for caps in captions.values() for c in caps]
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8") as tmp:
        tmp.write("\n".join(lines))
    try:
        cmd = ["java", "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer",
               "-preserveLines", "-lowerCase", tmp.name]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, check=True).stdout.decode()
    finally:
        os.unlink(tmp.name)
    token_lines = out.split("\n")
    result: dict[str, list[str]] = {k: [] for k in captions}
    for key, line in zip(keys, token_lines, strict=False):
        result[key].append(" ".join(w for w in line.rstrip().split(" ") if w not in _PTB_PUNCTUATIONS))
    # The tokenizer prints one line per input line; an empty last caption can be lost at EOF.
    for key, caps in captions.items():
        result[key] += [""] * (len(caps) - len(result[key]))
    return result


def tokenize(captions: Mapping[str, Sequence[str]], preset: TokenizePreset) -> dict[str, list[str]]:
    if preset == "scan2cap":
        return {k: [tokenize_scan2cap(c) for c in caps] for k, caps in captions.items()}
    if preset == "coco_ptb":
        return tokenize_ptb(captions)
    raise VidLLMError(f"unknown tokenisation preset '{preset}' (choose from {', '.join(TOKENIZE_PRESETS)})")


@contextmanager
def meteor_scorer() -> Iterator[object]:
    """pycocoevalcap's Meteor (a `java -jar meteor-1.5.jar` subprocess), always stopped on exit."""
    require_java()
    from pycocoevalcap.meteor.meteor import Meteor

    scorer = Meteor()
    try:
        yield scorer
    finally:
        proc = scorer.meteor_p
        if proc.stdin and not proc.stdin.closed:
            proc.stdin.close()
        proc.kill()
        proc.wait()


@dataclass
class CaptionScores:
    """`corpus[metric]` as coco-caption reports it; `per_sample[metric]` aligned with `ids`."""

    ids: list[str]
    corpus: dict[str, float] = field(default_factory=dict)
    per_sample: dict[str, np.ndarray] = field(default_factory=dict)

    def by_id(self) -> dict[str, dict[str, float]]:
        """id -> {metric: that caption's score}, for per-item output."""
        return {i: {name: float(values[k]) for name, values in self.per_sample.items()} for k, i in enumerate(self.ids)}


def score_captions(
    predictions: Mapping[str, str],
    references: Mapping[str, Sequence[str]],
    preset: TokenizePreset = "scan2cap",
    meteor: bool = True,
    meteor_instance: object | None = None,
) -> CaptionScores:
    """Score one predicted caption per id against its references (ids must match exactly).

    Returns fractions (not ×100). CIDEr's IDF is computed over the references passed here, so
    it depends on the evaluated set, exactly as in coco-caption. `meteor_instance` reuses a
    running scorer from `meteor_scorer()` (its JVM takes ~20 s to start).
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    if set(predictions) != set(references):
        missing = sorted(set(references) - set(predictions))[:3]
        extra = sorted(set(predictions) - set(references))[:3]
        raise VidLLMError(f"caption ids differ between predictions and references (missing {missing}, extra {extra})")
    ids = sorted(references)
    empty = [i for i in ids if len(references[i]) == 0]
    if empty:
        raise VidLLMError(f"reference '{empty[0]}' has no reference captions")
    res = tokenize({i: [predictions[i]] for i in ids}, preset)
    gts = tokenize({i: list(references[i]) for i in ids}, preset)

    scores = CaptionScores(ids=ids)
    if not ids:
        return scores
    bleu, bleu_each = Bleu(4).compute_score(gts, res, verbose=0)
    scores.corpus["BLEU-4"], scores.per_sample["BLEU-4"] = float(bleu[3]), np.asarray(bleu_each[3], float)
    for name, scorer in (("ROUGE-L", Rouge()), ("CIDEr", Cider())):
        value, each = scorer.compute_score(gts, res)
        scores.corpus[name], scores.per_sample[name] = float(value), np.asarray(each, float)
    if meteor:
        meteor_gts = {i: [_single_line(c) for c in gts[i]] for i in ids}
        meteor_res = {i: [_single_line(res[i][0])] for i in ids}
        if meteor_instance is not None:
            value, each = meteor_instance.compute_score(meteor_gts, meteor_res)
        else:
            with meteor_scorer() as m:
                value, each = m.compute_score(meteor_gts, meteor_res)
        scores.corpus["METEOR"], scores.per_sample["METEOR"] = float(value), np.asarray(each, float)
    return scores


# ----------------------------------------------------------------------------- exact match

# LEO's answer cleaning (embodied-generalist `data_utils.clean_answer`, used by LLaVA-3D), rule by rule.
_NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
                 "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen",
                 "twenty"]  # fmt: skip
_WORD_FIXES: list[tuple[str, str]] = [
    (r"\bletf\b", "left"), (r"\blet\b", "left"), (r"\btehre\b", "there"), (r"\brigth\b", "right"),
    (r"\brght\b", "right"), (r"\bbehine\b", "behind"), (r"\bchai\b", "chair"), (r"\bwasing\b", "washing"),
    (r"\bwaslked\b", "walked"), (r"\boclock\b", "o'clock"), (r"\bo'[ ]+clock\b", "o'clock"),
    (r"\bnone\b", "zero"), *((rf"\b{n}\b", word) for n, word in enumerate(_NUMBER_WORDS)),
    (r"\b23\b", "twenty-three"),
    (r"\b([a-z]+)([0-9])\b", r"\g<1>"),  # "no1", "mat2" -> the word
    (r"\ba\b ([a-z]+)", r"\g<1>"), (r"\ban\b ([a-z]+)", r"\g<1>"), (r"\bthe\b ([a-z]+)", r"\g<1>"),
    (r"\bbackwards\b", "backward"),
]  # fmt: skip


def clean_answer(text: str) -> str:
    """LEO's answer cleaning: lowercase; drop characters other than letters, digits, whitespace and
    `,'-:`; fix frequent typos; numbers 0–20 (and "none") to words; drop a/an/the before a word.

    One deliberate difference: whitespace is normalised at the end, so "brown ." and "brown" agree.
    """
    text = re.sub(r"\s+", " ", text.lower()).strip()
    text = re.sub(r"[^a-z0-9,'\s\-:]+", "", text)
    for pattern, replacement in _WORD_FIXES:
        text = re.sub(pattern, replacement, text)
    return " ".join(text.split())


def exact_match(prediction: str, answers: Sequence[str]) -> tuple[bool, bool]:
    """(EM, refined EM) of one cleaned prediction against cleaned answers.

    Refined EM also accepts a space-stripped prediction that is a substring of a space-stripped
    answer or vice versa (LEO / LLaVA-3D). An empty prediction never matches (LEO's substring test
    would let it refined-match every answer).
    """
    pred = clean_answer(prediction)
    gts = [clean_answer(a) for a in answers]
    if pred in gts:
        return True, True
    if not pred:
        return False, False
    flat = pred.replace(" ", "")
    for gt in gts:
        gt_flat = gt.replace(" ", "")
        if gt_flat and (flat in gt_flat or gt_flat in flat):
            return False, True
    return False, False


def raw_exact_match(prediction: str, answers: Sequence[str]) -> bool:
    """Video-3D LLM's EM: the prediction without its trailing '.' is literally one of the answers."""
    return prediction.strip().rstrip(".").strip() in [a.strip() for a in answers]
