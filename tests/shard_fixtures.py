"""Session fixtures for the shard pipeline: one local Ray, and synthetic scenes prepared into shards.

Registered suite-wide through `pytest_plugins` in tests/conftest.py (used by tests/data/test_prepare.py,
tests/data/test_teacher_cache.py and tests/data/test_shards.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# Tiny clips: 80x60 synthetic frames → short side 56 → 70x56 images, 4 frames per clip.
TINY_PREP = {"frames": 4, "short_side": 56, "jpeg_quality": 95, "shard_max_bytes": 60_000, "workers": 2}


@pytest.fixture(scope="session")
def ray_session(s3_server) -> Iterator[None]:
    """One local Ray for the whole session, started after the S3 fixture so workers inherit AWS_*."""
    import ray

    if ray.is_initialized():  # another fixture already started one: share it
        yield
        return
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def synthetic_shards(synthetic_dataset_6, ray_session, tmp_path_factory):
    """(dataset, shard dir, PrepareSummary): the 6 synthetic scenes prepared once per session."""
    from vidllm.config import PrepConfig
    from vidllm.data.prepare import prepare_shards

    out = tmp_path_factory.mktemp("shards")
    summary = prepare_shards(str(synthetic_dataset_6.root), synthetic_dataset_6.annotations_dir, str(out),
                             PrepConfig(**TINY_PREP), progress=False)
    assert not summary.failed, summary.failed
    return synthetic_dataset_6, out, summary


def write_tiny_shards(dataset, out: Path) -> Path:
    """The synthetic scenes → shards with the shard writer, in process (no Ray) (tiny recipe: 4 frames, 56x70)."""
    from vidllm.config import load_config
    from vidllm.data.prepare import write_scenes_in_process

    return write_scenes_in_process([(s.scene_id, s.path) for s in dataset.scenes], dataset.annotations_dir, out,
                                   load_config("tiny").data.prep, label_map=str(dataset.label_map))
