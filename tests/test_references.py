"""Every repository path and `vidllm.` / `flows.` dotted name that code comments, docstrings and docs
mention exists, so a move or rename cannot leave a reference dangling."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEXT_SUFFIXES = (".py", ".md", ".yaml", ".toml", ".sbatch", ".sh", ".txt")
# Dated measurement logs quote the commands of their day; they are history, not references.
HISTORY = {"benchmarks/RESULTS.md"}
PATH = re.compile(r"(?<![\w./-])((?:vidllm|flows|benchmarks|tests|infra|docs)/[\w./-]*\w)")
DOTTED = re.compile(r"(?<![\w./])((?:vidllm|flows)(?:\.\w+)+)")


def _tracked() -> list[str]:
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True)
    if listed.returncode == 0:
        out = listed.stdout.split()
    else:  # a source tree without .git (an unpacked archive): every file outside hidden folders
        out = [p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*")
               if not any(part.startswith(".") for part in p.relative_to(ROOT).parts)]
    return [f for f in out if (ROOT / f).is_file()]


def _dotted_exists(name: str, files: set[str]) -> bool:
    """Packages down to a module, then one attribute that the module defines or imports."""
    parts = name.split(".")
    current = parts[0]
    for part in parts[1:]:
        base = current.replace(".", "/")
        if f"{base}/__init__.py" in files:
            child = f"{base}/{part}"
            if f"{child}.py" in files or f"{child}/__init__.py" in files:
                current = f"{current}.{part}"
                continue
            return re.search(rf"\b{re.escape(part)}\b", (ROOT / f"{base}/__init__.py").read_text()) is not None
        text = (ROOT / f"{base}.py").read_text()
        pattern = rf"^\s*(?:async\s+def|def|class)\s+{re.escape(part)}\b|^\s*{re.escape(part)}\s*[:=]|import\b.*\b{re.escape(part)}\b"
        return re.search(pattern, text, re.M) is not None
    return True


def _is_pattern(line: str, match: re.Match) -> bool:
    """`infra/kuberay-*.yaml`, `PATTERN_{name}`: a family of names, not one."""
    rest = re.match(r"[^\s`'\"),]*", line[match.end():]).group(0)
    return any(c in rest for c in "*{<")


def _dangling() -> list[str]:
    files = _tracked()
    known = set(files)
    folders = {str(parent) for f in files for parent in Path(f).parents}
    found = []
    for name in files:
        if (not name.endswith(TEXT_SUFFIXES) or name in HISTORY or name.startswith("tests/infra/data/")
                or name == "tests/test_references.py"):
            continue
        for number, line in enumerate((ROOT / name).read_text(encoding="utf-8", errors="ignore").splitlines(), 1):
            for match in PATH.finditer(line):
                path = match.group(1).rstrip("/.")
                if _is_pattern(line, match) or path in known or path in folders:
                    continue
                found.append(f"{name}:{number}: {path}")
            for match in DOTTED.finditer(line):
                if not _is_pattern(line, match) and not _dotted_exists(match.group(1), known):
                    found.append(f"{name}:{number}: {match.group(1)}")
    return found


def test_every_reference_points_into_the_repository():
    assert _dangling() == []


def test_the_check_finds_a_dangling_reference(tmp_path, monkeypatch):
    files = {"vidllm/__init__.py", "vidllm/data/__init__.py", "vidllm/data/frames.py"}
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("def sample_frame_ids():\n    pass\n" if name.endswith("frames.py") else "")
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    assert _dotted_exists("vidllm.data.frames.sample_frame_ids", files)
    assert not _dotted_exists("vidllm.data.frames.gone", files)
    assert not _dotted_exists("vidllm.data.sampling", files)
