"""Atomic local writes: a file or directory becomes visible under its name only once complete.

Every writer in the package goes through these helpers (remote URIs through
`vidllm.artifacts.storage.atomic_output`, which uses them for local paths):

- `atomic_path(path)` yields a temporary path in the same folder (same filesystem, so the final
  `os.replace` is atomic) for writers that want a file name (numpy, matplotlib, safetensors);
- `atomic_file(path)` yields an open file; `atomic_write_bytes/text/json` are one-liners over it;
- `atomic_dir(out_dir)` yields a temporary directory that replaces `out_dir` as a whole; an existing
  `out_dir` is swapped out by rename, so readers see the old or the new tree, never a mix;
- `remove_orphans(out_dir)` deletes what killed writers left beside `out_dir`.

Temporary names start with "." and contain ".tmp", so listings skip them and cleaners find them.
On failure the temporary file or directory is removed and the error propagates.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# What a plain open() would give; mkstemp/mkdtemp create 0600/0700, which would make datasets,
# reports and models unreadable to the other users of a shared machine.
FILE_MODE = 0o666 & ~_current_umask()
DIR_MODE = 0o777 & ~_current_umask()
TMP_DIR_MARK = ".tmp-"
OLD_DIR_MARK = ".old-"


@contextmanager
def atomic_path(path: str | Path, keep_suffix: bool = False, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside `path`, `.<name>.<random>.tmp` (or `.<stem>.<random>.tmp<suffix>`
    with `keep_suffix`, for writers that infer the format from the name or append a suffix, like
    numpy and matplotlib); on success it is fsynced and renamed to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:12]
    tmp = path.with_name(f".{path.stem}.{token}.tmp{path.suffix}" if keep_suffix else f".{path.name}.{token}.tmp")
    try:
        yield tmp
        if fsync and tmp.is_file():
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_file(path: str | Path, mode: str = "wb", encoding: str | None = None) -> Iterator[IO[Any]]:
    """Yield a file open for writing (`mode` "wb" or "w") that appears at `path` when the block ends."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_file writes whole files: mode must be 'wb' or 'w', not {mode!r}")
    with atomic_path(path, fsync=False) as tmp:
        with open(tmp, "x" + mode[1:], encoding=encoding if mode == "w" else None) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_file(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_file(path, "w", encoding="utf-8") as f:
        f.write(text)


def atomic_write_json(path: str | Path, data: Any, indent: int | None = None) -> None:
    atomic_write_text(path, json.dumps(data, indent=indent))


def commit_dir(tmp: str | Path, out_dir: str | Path) -> None:
    """Move a fully written temporary directory into place (swapping out an existing `out_dir`);
    a finished file is renamed over its target."""
    tmp, out_dir = Path(tmp), Path(out_dir)
    if tmp.is_file():
        os.replace(tmp, out_dir)
        return
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}{OLD_DIR_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")
        os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out_dir)


@contextmanager
def atomic_dir(out_dir: str | Path) -> Iterator[Path]:
    """Yield an empty temporary directory beside `out_dir`; when the block ends without error it
    replaces `out_dir` as a whole."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}{TMP_DIR_MARK}", dir=out_dir.parent))
    try:
        yield tmp
        os.chmod(tmp, DIR_MODE)
        commit_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def is_temporary(name: str) -> bool:
    """True for the names these helpers give to work in progress."""
    return name.startswith(".") and (".tmp" in name or OLD_DIR_MARK in name)


def remove_orphans(out_dir: str | Path) -> list[Path]:
    """Delete the temporary (`.<name>.tmp-*`) and swapped-out (`.<name>.old-*`) directories that
    killed `atomic_dir` writers left beside `out_dir`. Returns the removed paths."""
    out_dir = Path(out_dir)
    if not out_dir.parent.is_dir():
        return []
    prefixes = (f".{out_dir.name}{TMP_DIR_MARK}", f".{out_dir.name}{OLD_DIR_MARK}")
    removed = [p for p in out_dir.parent.iterdir() if p.is_dir() and p.name.startswith(prefixes)]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed
