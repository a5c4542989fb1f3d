"""Suite-wide settings. Servers (S3, Ray, Prefect) are started by fixtures in the
sub-package conftests that need them, on 127.0.0.1, and stopped by their PID."""

import os

pytest_plugins = ["tests.s3_server", "tests.shard_fixtures"]  # `s3_server` (SeaweedFS), `ray_session`, `synthetic_shards`

# Nothing is downloaded at run time; all sockets stay on loopback.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# ----------------------------------------------------------------------------- synthetic data
# Generated once per session; tests must treat the files as read-only.
import pytest  # noqa: E402


def _tiny_synth(scenes: int):
    from vidllm.config import SynthConfig

    return SynthConfig(scenes=scenes, frames=8, width=80, height=60, depth_width=80, depth_height=60, seed=0)


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory):
    """2 small ScanNet-format scenes (8 frames, 80x60) + annotations → SyntheticDataset."""
    from vidllm.data.synthetic.generate import generate_dataset

    return generate_dataset(tmp_path_factory.mktemp("synth2"), _tiny_synth(2), progress=False)


@pytest.fixture(scope="session")
def synthetic_dataset_3(tmp_path_factory):
    """3 small scenes: 2 train, 1 val (training tests: two training scenes, one held out)."""
    from vidllm.data.synthetic.generate import generate_dataset

    return generate_dataset(tmp_path_factory.mktemp("synth3"), _tiny_synth(3), progress=False)


@pytest.fixture(scope="session")
def synthetic_dataset_6(tmp_path_factory):
    """6 small scenes (same size as `synthetic_dataset`), e.g. for sharding tests."""
    from vidllm.data.synthetic.generate import generate_dataset

    return generate_dataset(tmp_path_factory.mktemp("synth6"), _tiny_synth(6), progress=False)


def pytest_unconfigure(config):
    """Drop what Prefect's in-process log/event services still queue when the session ends: every
    test's server is gone by then, and their at-exit drain would retry each item against it, keeping
    the interpreter alive for minutes."""
    import sys

    if "prefect" not in sys.modules:
        return
    from prefect._internal.concurrency.services import _QueueServiceBase

    for service in list(_QueueServiceBase._instances.values()):
        pending = service._queue
        with pending.mutex:
            pending.queue.clear()
    _QueueServiceBase.drain_all(timeout=10)
