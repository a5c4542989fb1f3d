"""Fixtures of the training tests: tiny shards, random teachers and their feature cache (module-independent, built once)."""

from __future__ import annotations

import pytest
import torch

from tests.shard_fixtures import write_tiny_shards
from tests.train.helpers import tiny_config


@pytest.fixture(autouse=True)
def _one_thread():
    # Six helpers share two cores: keep each test on one intra-op thread.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def train_shards(synthetic_dataset_3, tmp_path_factory):
    """Shards of 3 tiny scenes: scene0000_00 and scene0001_00 train, scene0002_00 val."""
    return write_tiny_shards(synthetic_dataset_3, tmp_path_factory.mktemp("train_shards") / "shards")


@pytest.fixture(scope="session")
def teachers_and_cache(train_shards, tmp_path_factory):
    """(TeacherConfig pointing at random tiny teachers, cache dir with every feature computed)."""
    from vidllm.data.teacher_cache import build_teacher_cache, init_random_teachers

    root = tmp_path_factory.mktemp("teachers")
    teachers = init_random_teachers(tiny_config().teachers, root / "models")
    build_teacher_cache(str(train_shards), str(root / "cache"), teachers, progress=False)
    return teachers, root / "cache"
