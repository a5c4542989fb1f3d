"""Choice of the LLM attention implementation (kept out of the model files).

"auto" → `flash_attention_2` only when flash-attn imports *and* CUDA is available, else
`sdpa`. An explicit "flash_attention_2" without flash-attn (or without CUDA) falls back to
`sdpa` with a warning instead of failing when the model is built.
"""

from __future__ import annotations

import warnings

import torch
from transformers.utils import is_flash_attn_2_available

CHOICES = ("auto", "sdpa", "eager", "flash_attention_2")


def flash_attention_usable() -> bool:
    return bool(is_flash_attn_2_available()) and torch.cuda.is_available()


def select_attn_implementation(requested: str = "auto") -> str:
    """Map the configured value to the `attn_implementation` passed to transformers."""
    if requested not in CHOICES:
        raise ValueError(f"unknown attention implementation '{requested}' (choose from {', '.join(CHOICES)})")
    if requested == "auto":
        return "flash_attention_2" if flash_attention_usable() else "sdpa"
    if requested == "flash_attention_2" and not flash_attention_usable():
        reason = "flash-attn is not installed" if not is_flash_attn_2_available() else "CUDA is not available"
        warnings.warn(f"flash_attention_2 requested but {reason}; using sdpa", RuntimeWarning, stacklevel=2)
        return "sdpa"
    return requested
