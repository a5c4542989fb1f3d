"""The README's layout section names what is in the tree, and everything it names exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _layout_block() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Layout", 1)[1]
    return section.split("```", 2)[1]


def _library_entries() -> set[str]:
    """vidllm/ and its sub-packages' entries: packages as "name/", modules as "name.py"."""
    entries = set()
    for folder in [ROOT / "vidllm", *(p for p in (ROOT / "vidllm").iterdir() if (p / "__init__.py").is_file())]:
        for path in folder.iterdir():
            if path.name.startswith(("_", ".")):
                continue
            if path.is_dir() and (path / "__init__.py").is_file():
                entries.add(path.name + "/")
            elif path.suffix == ".py" and folder == ROOT / "vidllm":
                entries.add(path.name)
    return entries


def test_layout_names_every_library_package_and_top_level_module():
    block = _layout_block()
    named = set(re.findall(r"[\w]+/|[\w]+\.py", block))
    missing = sorted(e for e in _library_entries() if e not in named)
    assert missing == [], f"not in the README layout: {missing}"


def test_everything_the_layout_names_exists():
    block = _layout_block()
    files = {p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*") if ".git" not in p.parts}
    names = {Path(f).name for f in files} | {Path(f).name + "/" for f in files if (ROOT / f).is_dir()}
    named = set()
    for line in block.splitlines():
        head = re.match(r"\s*(\S.*?)(?:\s{2,}|$)", line)  # what a line lists, before its description
        if head:
            named.update(n.strip() for n in head.group(1).split(",") if re.fullmatch(r"[\w-]+(/|\.py|\.yaml)", n.strip()))
    assert len(named) > 20
    assert sorted(n for n in named if n not in names) == []
