"""Errors a user can act on. The CLI prints these as one line (no traceback) and exits 2."""

from __future__ import annotations

from pathlib import Path


class VidLLMError(Exception):
    """Base class for user-facing errors."""


class DataError(VidLLMError, ValueError):
    """Bad input data. The message always names the file (or shard/key) and the problem."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self):
        # Picklable with both arguments, so the error survives crossing Ray worker boundaries.
        return (type(self), (self.path, self.problem))


class TrainingError(VidLLMError, FloatingPointError):
    """Training cannot go on (e.g. a non-finite loss); the message names the stage, step and scenes."""
