"""Teacher-feature cache: compute once, never recompute a present key, atomic files, local and S3."""

from __future__ import annotations

import json

import pytest
import torch

from vidllm.data.teacher_cache import (
    build_teacher_cache, feature_keys, feature_uri, init_random_teachers, load_teacher_features, teacher_spec,
)
from tests.shard_fixtures import write_tiny_shards
from tests.train.helpers import tiny_config
from vidllm.errors import DataError, VidLLMError


@pytest.fixture(scope="module")
def shards_and_teachers(synthetic_dataset, tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("teacher_cache")
    shards = write_tiny_shards(synthetic_dataset, root / "shards")
    teachers = init_random_teachers(tiny_config().teachers, root / "teachers")
    return shards, teachers


def test_compute_then_reuse_with_zero_forward_passes(shards_and_teachers, tmp_path):
    shards, teachers = shards_and_teachers
    cache = tmp_path / "cache"
    first = build_teacher_cache(str(shards), str(cache), teachers, progress=False)
    assert (first.samples, first.computed, first.reused) == (2, 4, 0) and first.forward_passes > 0
    second = build_teacher_cache(str(shards), str(cache), teachers, progress=False)
    assert (second.computed, second.reused, second.forward_passes) == (0, 4, 0)
    # Every file is committed under its final name: no temporary leftovers.
    files = sorted(p for p in cache.rglob("*") if p.is_file())
    assert len(files) == 4 and all(p.suffix == ".safetensors" and not p.name.startswith(".") for p in files)

    keys = feature_keys(str(cache), str(shards), teachers)
    for sample_key, roles in keys.items():
        geo = load_teacher_features(str(cache), roles["geometry"])
        sem = load_teacher_features(str(cache), roles["semantic"])
        # 4 frames of 56x70 → 4x5 DINO patches; CLIP at 56x56 → 4x4 patches + pooled.
        assert geo["patch_tokens"].shape == (4, 20, 32) and geo["patch_tokens"].dtype == torch.float16
        assert geo["grid"] == (4, 5) and geo["meta"]["sample_key"] == sample_key
        assert sem["patch_tokens"].shape == (4, 16, 32) and sem["pooled"].shape == (4, 32) and sem["grid"] == (4, 4)
        assert torch.isfinite(geo["patch_tokens"].float()).all()


def test_features_match_a_direct_teacher_forward(shards_and_teachers, tmp_path):
    from vidllm.data.teacher_cache import load_teacher
    from vidllm.data.shards.format import ShardDataset

    shards, teachers = shards_and_teachers
    cache = tmp_path / "cache"
    build_teacher_cache(str(shards), str(cache), teachers, progress=False)
    sample = next(iter(ShardDataset(str(shards))))
    model = load_teacher(teachers, "geometry")
    pixels = (sample["images"] - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / \
        torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = model(pixel_values=pixels).last_hidden_state[:, 1:]
    key = feature_keys(str(cache), str(shards), teachers)[sample["key"]]["geometry"]
    cached = load_teacher_features(str(cache), key)["patch_tokens"].float()
    assert torch.allclose(cached, expected, atol=2e-2, rtol=1e-2)


def test_new_teacher_weights_get_new_keys_only_for_that_teacher(shards_and_teachers, tmp_path):
    shards, teachers = shards_and_teachers
    cache = tmp_path / "cache"
    build_teacher_cache(str(shards), str(cache), teachers, progress=False)
    other = init_random_teachers(tiny_config().teachers, tmp_path / "other", seed=7)
    changed = teachers.model_copy(update={"semantic": other.semantic})
    assert teacher_spec(changed, "semantic").weights_digest != teacher_spec(teachers, "semantic").weights_digest
    summary = build_teacher_cache(str(shards), str(cache), changed, progress=False)
    assert (summary.computed, summary.reused) == (2, 2)


def test_bad_cache_entries_and_missing_teachers_are_clear_errors(shards_and_teachers, tmp_path):
    shards, teachers = shards_and_teachers
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="not in the cache"):
        load_teacher_features(str(cache), "ab" * 32)
    build_teacher_cache(str(shards), str(cache), teachers, progress=False)
    key = next(iter(feature_keys(str(cache), str(shards), teachers).values()))["geometry"]
    path = feature_uri(str(cache), key)
    with open(path, "r+b") as f:
        f.truncate(40)
    with pytest.raises(DataError, match="corrupt teacher feature file") as info:
        load_teacher_features(str(cache), key)
    assert key in str(info.value)
    with pytest.raises(VidLLMError, match="teachers.geometry is not set"):
        build_teacher_cache(str(shards), str(cache), teachers.model_copy(update={"geometry": None}), progress=False)
    with pytest.raises(DataError, match="no manifest"):
        build_teacher_cache(str(tmp_path / "nothing"), str(cache), teachers, progress=False)


def test_cache_on_s3_and_cli(shards_and_teachers, s3_server, capsys):
    from vidllm.cli import main

    shards, teachers = shards_and_teachers
    cache = s3_server.uri("teacher-cache")
    argv = ["teachers", "--shards", str(shards), "--cache", cache, "--recipe", "tiny", "--geometry-teacher",
            teachers.geometry, "--semantic-teacher", teachers.semantic, "--json", "--no-progress"]
    assert main(argv) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert first["computed"] == 4 and first["forward_passes"] > 0
    assert main(argv) == 0
    second = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (second["computed"], second["reused"], second["forward_passes"]) == (0, 4, 0)
    key = next(iter(feature_keys(cache, str(shards), teachers).values()))["semantic"]
    assert load_teacher_features(cache, key)["patch_tokens"].shape == (4, 16, 32)


def _corrupt_three_entries(cache, shards, teachers):
    """Truncate one entry, flip a payload byte of another, overwrite a third with NaN features."""
    from vidllm.data.teacher_cache import write_features

    keys = [k for roles in feature_keys(str(cache), str(shards), teachers).values() for k in roles.values()]
    truncated, flipped, nan = (feature_uri(str(cache), k) for k in keys[:3])
    with open(truncated, "r+b") as f:
        f.truncate(f.seek(0, 2) // 2)
    data = bytearray(open(flipped, "rb").read())
    data[-3] ^= 0x40  # inside the last tensor's bytes (the header is at the start)
    open(flipped, "wb").write(bytes(data))
    good = load_teacher_features(str(cache), keys[2])
    write_features(nan, {"patch_tokens": torch.full_like(good["patch_tokens"], float("nan"))},
                   {k: v for k, v in good["meta"].items() if k != "payload_sha256"})
    return keys, (truncated, flipped, nan)


def test_corrupt_entries_are_detected_reported_and_recomputed(shards_and_teachers, tmp_path, caplog):
    shards, teachers = shards_and_teachers
    cache = tmp_path / "cache"
    build_teacher_cache(str(shards), str(cache), teachers, progress=False)
    keys, paths = _corrupt_three_entries(cache, shards, teachers)
    for key, problem in zip(keys[:3], ("corrupt teacher feature file", "digest mismatch", "non-finite")):
        with pytest.raises(DataError, match=problem) as info:
            load_teacher_features(str(cache), key)
        assert key in str(info.value)

    unchecked = build_teacher_cache(str(shards), str(cache), teachers, progress=False, verify=False)
    assert (unchecked.repaired, unchecked.computed, unchecked.reused) == (0, 0, 4)  # keys listed only
    with caplog.at_level("WARNING", logger="vidllm.data.teacher_cache"):
        summary = build_teacher_cache(str(shards), str(cache), teachers, progress=False)
    assert (summary.repaired, summary.computed, summary.reused) == (3, 3, 1)
    assert "3 repaired" in summary.line()
    for path in paths:
        assert any(str(path) in r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    for key in keys:
        assert torch.isfinite(load_teacher_features(str(cache), key)["patch_tokens"].float()).all()
    again = build_teacher_cache(str(shards), str(cache), teachers, progress=False)
    assert (again.repaired, again.computed, again.reused, again.forward_passes) == (0, 0, 4, 0)


def test_entries_without_a_digest_stay_readable(shards_and_teachers, tmp_path):
    from safetensors.torch import save

    shards, teachers = shards_and_teachers
    cache = tmp_path / "cache"
    build_teacher_cache(str(shards), str(cache), teachers, progress=False)
    key = next(iter(feature_keys(str(cache), str(shards), teachers).values()))["semantic"]
    current = load_teacher_features(str(cache), key)
    assert "payload_sha256" in current["meta"]
    tensors = {k: v for k, v in current.items() if k not in ("grid", "meta")}
    old_meta = {k: v for k, v in current["meta"].items() if k != "payload_sha256"}
    with open(feature_uri(str(cache), key), "wb") as f:  # what the previous code version wrote
        f.write(save(tensors, metadata=old_meta))
    old = load_teacher_features(str(cache), key)
    assert "payload_sha256" not in old["meta"] and torch.equal(old["pooled"], current["pooled"])
    summary = build_teacher_cache(str(shards), str(cache), teachers, progress=False)
    assert (summary.repaired, summary.computed, summary.reused) == (0, 0, 4)


def test_temporary_files_of_killed_runs_are_removed(shards_and_teachers, tmp_path):
    import os
    import time

    shards, teachers = shards_and_teachers
    cache = tmp_path / "cache"
    build_teacher_cache(str(shards), str(cache), teachers, progress=False)
    key = next(iter(feature_keys(str(cache), str(shards), teachers).values()))["geometry"]
    final = feature_uri(str(cache), key)
    folder = os.path.dirname(final)
    name = os.path.basename(final)
    stale = os.path.join(folder, f".{name}.k1ll3d.tmp")  # `storage.atomic_output`'s temporary name
    fresh = os.path.join(folder, f".{name}.runn1n.tmp")  # a build still writing it
    for path in (stale, fresh):
        with open(path, "wb") as f:
            f.write(b"partial")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    summary = build_teacher_cache(str(shards), str(cache), teachers, progress=False)
    assert summary.temp_removed == 1 and (summary.computed, summary.reused) == (0, 4)
    assert not os.path.exists(stale) and os.path.exists(fresh) and os.path.exists(final)
