"""Save and load a Vid-LLM model directory (`save_pretrained` / `from_pretrained` style).

Layout of a model directory::

    config.json         {"format": "vidllm", "format_version", "recipe", "model": ModelConfig,
                         "special_tokens", "vocab_size", "encoder_hf_config", "llm_hf_config",
                         "lora": bool, "tied": {alias: source}}
    model.safetensors   all weights except LoRA adapters (LLM base weights under plain names)
    adapters/           peft LoRA adapters (adapter_config.json + adapter_model.safetensors), if any,
                        including the trained embedding / LM-head rows of the Vid-LLM tokens
    tokenizer/          the tokenizer (AutoTokenizer-loadable)

config.json also records `weights_sha256` {relative path: sha256} of every safetensors file
(Stage-1 directories too); `verify_model_dir` / `vidllm verify` check them, and loading warns
when a file no longer matches.

The directory is written under a temporary name beside the target and moved into place, so
a partially written model is never visible. Weights are safetensors only.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, PreTrainedTokenizerBase

from vidllm.artifacts.files import atomic_dir
from vidllm.attention_select import select_attn_implementation
from vidllm.config import ModelConfig
from vidllm.errors import DataError
from vidllm.lora import has_lora
from vidllm.tokenizer import SpecialTokenIds, load_tokenizer

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
DIGESTS_KEY = "weights_sha256"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
ADAPTERS_DIR = "adapters"
TOKENIZER_DIR = "tokenizer"


def _base_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """State dict with peft wrappers removed from the names and adapter tensors (LoRA matrices,
    trained token rows) left out: those are saved with the adapters."""
    out = {}
    for key, value in model.state_dict().items():
        if "lora_" in key or ".trainable_tokens_delta." in key:
            continue
        key = key.replace("llm.base_model.model.", "llm.", 1)
        key = key.replace(".token_adapter.base_layer.", ".").replace(".base_layer.", ".")
        out[key] = value
    return out


def _dedupe(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """safetensors refuses shared storage (tied embeddings): keep one copy, record aliases."""
    seen: dict[tuple[int, int, tuple[int, ...]], str] = {}
    unique, tied = {}, {}
    for key, value in state.items():
        ident = (value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape))
        if value.numel() and ident in seen:
            tied[key] = seen[ident]
            continue
        seen[ident] = key
        unique[key] = value.detach().contiguous().cpu()
    return unique, tied


def _hf_config_dict(config) -> dict[str, Any]:
    data = config.to_dict()
    for key in ("_name_or_path", "transformers_version", "architectures"):
        data.pop(key, None)
    return data


def save_pretrained(
    model: torch.nn.Module,
    out_dir: str | Path,
    tokenizer: PreTrainedTokenizerBase | None = None,
    recipe: str | None = None,
) -> Path:
    """Write `model` (a `VidLLM`, LoRA-wrapped or not) and its tokenizer to `out_dir` atomically."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    lora = has_lora(model)
    llm_base = model.llm.get_base_model() if lora else model.llm
    weights, tied = _dedupe(_base_state_dict(model))
    meta = {
        "format": "vidllm",
        "format_version": FORMAT_VERSION,
        "recipe": recipe,
        "model": model.config.model_dump(mode="json"),
        "special_tokens": model.special_ids.to_dict(),
        "vocab_size": model.vocab_size,
        "encoder_hf_config": _hf_config_dict(model.encoder.backbone.config),
        "llm_hf_config": _hf_config_dict(llm_base.config),
        "lora": lora,
        "tied": tied,
    }
    with atomic_dir(out_dir) as tmp:
        save_file(weights, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        if lora:
            # The base embeddings are in model.safetensors already (trained token rows are adapter
            # weights), so never let peft copy whole resized embedding matrices into the adapters.
            model.llm.save_pretrained(str(tmp / ADAPTERS_DIR), save_embedding_layers=False)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp / TOKENIZER_DIR))
        meta[DIGESTS_KEY] = weight_digests(tmp)
        (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=2))
    return out_dir


def file_sha256(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def weight_digests(model_dir: str | Path) -> dict[str, str]:
    """{path relative to `model_dir`: sha256} of every safetensors file under it."""
    root = Path(model_dir)
    return {p.relative_to(root).as_posix(): file_sha256(p) for p in sorted(root.rglob("*.safetensors"))}


@dataclass
class VerifyResult:
    """`verify_model_dir`'s answer: `ok` when every recorded digest matches and nothing is missing."""

    path: str
    checked: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    recorded: bool = True  # False: an older directory without digests (nothing to compare against)

    @property
    def ok(self) -> bool:
        return self.recorded and not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "ok": self.ok, "recorded": self.recorded, "checked": self.checked,
                "problems": self.problems}


def verify_model_dir(model_dir: str | Path) -> VerifyResult:
    """Check a model (or Stage-1) directory's safetensors files against the digests its config.json
    records: a changed, missing or unrecorded weight file is a problem. A missing or unreadable
    config.json raises DataError."""
    model_dir = Path(model_dir)
    path = model_dir / CONFIG_NAME
    if not path.is_file():
        raise DataError(model_dir, f"not a model directory (no {CONFIG_NAME})")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(path, f"not valid JSON: {exc}") from None
    result = VerifyResult(str(model_dir))
    recorded = meta.get(DIGESTS_KEY) if isinstance(meta, dict) else None
    if not isinstance(recorded, dict) or not recorded:
        result.recorded = False
        result.problems.append(f"{CONFIG_NAME} records no weight digests (written before they were recorded)")
        return result
    present = {p.relative_to(model_dir).as_posix() for p in model_dir.rglob("*.safetensors")}
    for name, expected in sorted(recorded.items()):
        file = model_dir / name
        if not file.is_file():
            result.problems.append(f"{name}: missing")
            continue
        result.checked.append(name)
        if file_sha256(file) != expected:
            result.problems.append(f"{name}: sha256 differs from {CONFIG_NAME} (modified or corrupted)")
    for name in sorted(present - set(recorded)):
        result.problems.append(f"{name}: not recorded in {CONFIG_NAME}")
    return result


def warn_if_modified(model_dir: str | Path) -> VerifyResult:
    """Verify `model_dir` and log one warning per problem (loading goes on: the caller decides)."""
    result = verify_model_dir(model_dir)
    if result.recorded:
        for problem in result.problems:
            log.warning("%s: %s", model_dir, problem)
    return result


def load_state_fitting(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str | Path,
                       strict: bool = True):
    """`module.load_state_dict(state)`, with a shape (or, if strict, name) mismatch reported as one
    DataError naming `source` and the first offending tensor instead of torch's multi-line RuntimeError."""
    try:
        return module.load_state_dict(state, strict=strict)
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        first = next((line for line in lines if line.startswith("size mismatch")), lines[-1] if lines else str(exc))
        more = sum(line.startswith("size mismatch") for line in lines) - 1
        raise DataError(source, f"weights do not fit this model (another recipe or config?): {first[:300]}"
                                + (f" (+{more} more)" if more > 0 else "")) from None


def read_model_config(model_dir: str | Path) -> dict[str, Any]:
    """The parsed `config.json` of a model directory; DataError if it is missing or malformed."""
    path = Path(model_dir) / CONFIG_NAME
    if not path.is_file():
        raise DataError(model_dir, f"not a Vid-LLM model directory (no {CONFIG_NAME}); create one with `vidllm init`")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(path, f"not valid JSON: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != "vidllm":
        raise DataError(path, "not a Vid-LLM model config (missing \"format\": \"vidllm\")")
    if meta.get("format_version") != FORMAT_VERSION:
        raise DataError(path, f"unsupported format_version {meta.get('format_version')!r} (expected {FORMAT_VERSION})")
    for key in ("model", "special_tokens", "vocab_size", "encoder_hf_config", "llm_hf_config"):
        if key not in meta:
            raise DataError(path, f"missing key '{key}'")
    return meta


def hf_config_from_dict(data: dict[str, Any]):
    """A transformers config from its saved dict (`model_type` picks the class)."""
    data = dict(data)
    return AutoConfig.for_model(data.pop("model_type"), **data)


def load_pretrained(
    model_dir: str | Path,
    device: str | torch.device = "cpu",
    merge_lora: bool = False,
    attn_implementation: str | None = None,
    trainable_adapters: bool = True,
    verify: bool = True,
):
    """Load a model directory → (`VidLLM`, tokenizer or None).

    LoRA adapters are re-attached (trainable by default), or folded into the LLM weights with
    `merge_lora=True`. `attn_implementation` defaults to the saved config's choice, resolved
    for this machine (`vidllm.attention_select`). `verify` hashes the weight files and logs a
    warning for each that differs from the digests in config.json.
    """
    from vidllm.models.vidllm import VidLLM  # heavy import kept local

    model_dir = Path(model_dir)
    meta = read_model_config(model_dir)
    if verify:
        warn_if_modified(model_dir)
    try:
        cfg = ModelConfig.model_validate(meta["model"])
    except Exception as exc:  # pydantic ValidationError: name the file
        raise DataError(model_dir / CONFIG_NAME, f"invalid model section: {exc}") from None
    attn = select_attn_implementation(attn_implementation or cfg.llm.attn_implementation)
    model = VidLLM(
        cfg,
        SpecialTokenIds(**meta["special_tokens"]),
        meta["vocab_size"],
        attn,
        encoder_config=hf_config_from_dict(meta["encoder_hf_config"]),
        llm_config=hf_config_from_dict(meta["llm_hf_config"]),
    )
    weights_path = model_dir / WEIGHTS_NAME
    if not weights_path.is_file():
        raise DataError(weights_path, "weights file is missing")
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError) as exc:
        raise DataError(weights_path, f"cannot read safetensors: {exc}") from None
    result = load_state_fitting(model, state, weights_path, strict=False)
    tied = set(meta.get("tied", {}))
    missing = [k for k in result.missing_keys if k not in tied]
    if missing or result.unexpected_keys:
        raise DataError(
            weights_path,
            f"weights do not match the config: missing {missing[:5]}{'…' if len(missing) > 5 else ''}, "
            f"unexpected {result.unexpected_keys[:5]}{'…' if len(result.unexpected_keys) > 5 else ''}",
        )
    adapters = model_dir / ADAPTERS_DIR
    if meta.get("lora"):
        if not adapters.is_dir():
            raise DataError(adapters, "config says LoRA but the adapters directory is missing")
        model.llm = PeftModel.from_pretrained(model.llm, str(adapters), is_trainable=trainable_adapters and not merge_lora)
        if merge_lora:
            model.llm = model.llm.merge_and_unload()
    tokenizer = load_tokenizer(model_dir / TOKENIZER_DIR) if (model_dir / TOKENIZER_DIR).is_dir() else None
    return model.to(device), tokenizer


def has_weights(model_dir: str | Path) -> bool:
    """A model directory holding at least one safetensors weight file."""
    model_dir = Path(model_dir)
    return model_dir.is_dir() and any(model_dir.glob("*.safetensors"))
