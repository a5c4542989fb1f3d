"""Shared helpers for the training tests."""

from __future__ import annotations

def tiny_config(*overrides: str):
    from vidllm.config import load_config

    return load_config("tiny", overrides=list(overrides))
