"""Teacher-feature cache: compute once, never recompute a present key, atomic files, local and S3."""

from __future__ import annotations

import json

import pytest
import torch

from preprocessing.teacher_cache import (
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
    from preprocessing.teacher_cache import load_teacher
    from vidllm.data.shards import ShardDataset

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
