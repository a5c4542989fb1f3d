"""The atomic-write helpers: complete or absent, never half-written, and the only ones in the code."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from vidllm.artifacts import files

ROOT = Path(__file__).resolve().parents[2]


def test_a_failed_write_leaves_nothing_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "out" / "metrics.json"
    files.atomic_write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with files.atomic_file(target, "w", encoding="utf-8") as f:
            f.write('{"a": 2')
            raise RuntimeError("killed mid-write")
    assert target.read_text() == '{"a": 1}'
    assert sorted(p.name for p in target.parent.iterdir()) == ["metrics.json"]


def test_atomic_path_keeps_the_suffix_for_writers_that_need_it(tmp_path):
    import numpy as np

    target = tmp_path / "geometry" / "scene0000_00.npz"
    with files.atomic_path(target, keep_suffix=True) as tmp:
        assert tmp.suffix == ".npz" and tmp.name.startswith(".") and files.is_temporary(tmp.name)
        np.savez(tmp, x=np.arange(3))
    assert np.load(target)["x"].tolist() == [0, 1, 2]
    assert oct(target.stat().st_mode & 0o777) == oct(files.FILE_MODE)


def test_atomic_dir_swaps_a_whole_tree_and_cleans_up_after_a_failure(tmp_path):
    out = tmp_path / "model"
    with files.atomic_dir(out) as tmp:
        (tmp / "config.json").write_text("{}")
    with pytest.raises(KeyboardInterrupt):
        with files.atomic_dir(out) as tmp:
            (tmp / "config.json").write_text('{"half": ')
            raise KeyboardInterrupt
    assert (out / "config.json").read_text() == "{}"
    with files.atomic_dir(out) as tmp:
        (tmp / "weights.safetensors").write_bytes(b"x")
    assert sorted(p.name for p in out.iterdir()) == ["weights.safetensors"]  # replaced as a whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    (tmp_path / ".model.tmp-abc").mkdir()
    (tmp_path / ".model.old-1-2").mkdir()
    assert sorted(p.name for p in files.remove_orphans(out)) == [".model.old-1-2", ".model.tmp-abc"]


def test_no_other_module_renames_files_into_place():
    """Temp-then-rename lives in vidllm/artifacts/files.py only; everything else calls it."""
    pattern = re.compile(r"os\.replace\(|os\.rename\(|\bmkstemp\(|\.replace\((?:path|target|out_dir)\)|tmp\.replace\(")
    offenders = []
    for folder in ("vidllm", "flows"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path == ROOT / "vidllm" / "artifacts" / "files.py":
                continue
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if pattern.search(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == []
    assert os.path.isfile(ROOT / "vidllm" / "artifacts" / "files.py")
