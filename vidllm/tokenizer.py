"""An offline tokenizer for tests and the tiny/demo recipes, plus the prompt format.

A byte-level BPE is trained with `tokenizers` on benchmark-style text (synthetic
annotations, or the built-in template corpus), saved as a `PreTrainedTokenizerFast`
directory and loaded back with `AutoTokenizer` — no hub access. Special tokens:
`<pad>`, `</s>` (eos), `<unk>`, `<image>` (vision tokens go here), `<ground>` (its hidden
state is decoded into a box) and `<obj>` (carries the Scan2Cap object box).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from vidllm.errors import DataError

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"
IMAGE, GROUND, OBJ = "<image>", "<ground>", "<obj>"
SPECIAL_TOKENS = [PAD, EOS, UNK, IMAGE, GROUND, OBJ]


@dataclass(frozen=True)
class SpecialTokenIds:
    pad: int
    eos: int
    image: int
    ground: int
    obj: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_tokenizer(cls, tokenizer: PreTrainedTokenizerBase) -> SpecialTokenIds:
        ids = {}
        for name, token in (("pad", PAD), ("eos", EOS), ("image", IMAGE), ("ground", GROUND), ("obj", OBJ)):
            token_id = tokenizer.convert_tokens_to_ids(token)
            if token_id is None or token_id == tokenizer.unk_token_id and token != UNK:
                raise ValueError(f"tokenizer has no '{token}' token; use vidllm.tokenizer.add_special_tokens")
            ids[name] = int(token_id)
        return cls(**ids)

    @classmethod
    def placeholder(cls, vocab_size: int) -> SpecialTokenIds:
        """Ids at the end of the vocabulary, for models built without a tokenizer (planning)."""
        return cls(pad=vocab_size - 5, eos=vocab_size - 4, image=vocab_size - 3, ground=vocab_size - 2, obj=vocab_size - 1)


# Every prompt names its task before the question, so the first answer token is conditioned on
# the task: without it, the most frequent answer family (grounding's `<ground>`) leaks into the
# first token of questions. A referring expression ("the brown table by the window") reads much
# like a question about it, so the grounding request in particular says what is wanted.
LOCATE = "Locate:"
DESCRIBE = "Describe:"
QUESTION = "Question:"
TASK_TAGS = {"ground": LOCATE, "describe": DESCRIBE, "answer": QUESTION}


def build_prompt(question: str, situation: str | None = None, with_object: bool = False,
                 grounding: bool = False) -> str:
    """The instruction format every task uses; the answer follows "ASSISTANT:" and ends with eos.

    The task tag comes before the question: `LOCATE` when `question` is a referring expression
    to answer with `<ground>` tokens (`grounding`), `DESCRIBE` for an object caption
    (`with_object`: the `<obj>` token carries its box), else `QUESTION`. Training, benchmark
    prediction and `vidllm ask / ground` all build prompts here.
    """
    context = f"{situation.strip()} " if situation else ""
    obj = f"{OBJ} " if with_object else ""
    tag = TASK_TAGS["ground" if grounding else "describe" if with_object else "answer"]
    return f"{IMAGE}\nUSER: {obj}{context}{tag} {question.strip()}\nASSISTANT:"


_OBJECTS = ["chair", "table", "sofa", "bed", "cabinet", "desk", "lamp", "shelf", "door", "window",
            "box", "trash can", "monitor", "plant", "pillow", "toilet", "sink", "bathtub", "bookshelf"]
_COLOURS = ["red", "green", "blue", "yellow", "white", "black", "brown", "gray", "orange", "purple"]
_PLACES = ["near the wall", "in the corner", "next to the door", "by the window", "in the middle of the room",
           "left of the table", "right of the bed", "under the lamp", "on the floor", "behind the sofa"]


def builtin_corpus() -> list[str]:
    """Benchmark-style template text (questions, answers, captions, referring expressions)."""
    lines = []
    for obj, colour, place in itertools.product(_OBJECTS, _COLOURS, _PLACES[:4]):
        lines += [
            f"What color is the {obj} {place}?",
            f"{colour}",
            f"How many {obj}s are in the room?",
            f"This is a {colour} {obj}. It is {place}.",
            f"The {colour} {obj} {place}.",
            f"Where is the {colour} {obj}? It is {place}.",
        ]
    lines += [str(n) for n in range(0, 21)] + ["one", "two", "three", "four", "five", "yes", "no"]
    return lines


def train_tokenizer(
    texts: Iterable[str] | None = None, vocab_size: int = 512, out_dir: str | Path | None = None
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `texts` (+ the built-in corpus); save to `out_dir` if given."""
    corpus = list(builtin_corpus()) + [t for t in (texts or []) if t]
    bpe = Tokenizer(models.BPE(unk_token=UNK))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        pad_token=PAD,
        eos_token=EOS,
        unk_token=UNK,
        additional_special_tokens=[IMAGE, GROUND, OBJ],
    )
    tokenizer.padding_side = "right"
    if out_dir is not None:
        tokenizer.save_pretrained(str(out_dir))
    return tokenizer


def add_special_tokens(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Give a pretrained LLM's tokenizer the Vid-LLM tokens (resize the LLM embeddings after)."""
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE, GROUND, OBJ]})
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": PAD})
    if tokenizer.eos_token is None:
        tokenizer.add_special_tokens({"eos_token": EOS})
    return tokenizer


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """A saved tokenizer directory (local files only; DataError naming the path if unusable)."""
    if not Path(path).is_dir():
        raise DataError(path, "tokenizer directory not found")
    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(path, f"not a loadable tokenizer directory ({first_line})") from None
