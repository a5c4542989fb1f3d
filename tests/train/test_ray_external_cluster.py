"""`vidllm train --ray` against an external Ray cluster (a real `ray start` head, tests/ray_cluster.py),
with shards and Ray Train's storage_path on a custom S3 endpoint (the real S3 server).

The cluster has S3 credentials of its own (its nodes' environment); the driver forwards only the
endpoint and region (vidllm.ray_session), so the secret key never enters a runtime_env or a log."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from tests.ray_cluster import files_containing, start_cluster
from vidllm.artifacts import storage
from vidllm.train.ray_launcher import run_name

REPO = Path(__file__).resolve().parents[2]


def test_train_ray_on_an_external_cluster_with_s3_storage_on_a_custom_endpoint(train_shards, s3_server, tmp_path):
    credentials = {"AWS_ACCESS_KEY_ID": s3_server.access_key, "AWS_SECRET_ACCESS_KEY": s3_server.secret_key}
    shards = s3_server.uri("external", "shards")
    storage.upload_tree(train_shards, shards)
    cluster = start_cluster(num_cpus=2, node_env=credentials)  # no endpoint: it must come from the driver
    try:
        run_dir = tmp_path / "run"
        env = cluster.client_env({**credentials, "AWS_ENDPOINT_URL": s3_server.endpoint_url,
                                  "AWS_REGION": s3_server.region, "PYTHONPATH": str(REPO)})
        proc = subprocess.run(
            [sys.executable, "-m", "vidllm", "train", "--stage", "2", "--ray", "--shards", shards, "--run-dir",
             str(run_dir), "--recipe", "tiny", "--no-progress", "--set", "train.stage2.steps=2",
             "--set", "train.stage2.checkpoint_every=1", "--set", "train.num_workers=1",
             "--set", f"train.storage_path={s3_server.uri('external', 'ray-results')}"],
            env=env, cwd=REPO, capture_output=True, text=True, timeout=420)
        assert proc.returncode == 0, proc.stderr[-4000:]
        assert (run_dir / "model" / "model.safetensors").is_file()
        stored = storage.list_dirs(s3_server.uri("external", "ray-results", run_name(run_dir, "stage2")))
        assert "step-00000002" in stored  # Ray Train's checkpoints on the custom endpoint
        time.sleep(1.0)  # let the cluster's log writers flush
        assert files_containing(cluster.temp_dir, [s3_server.secret_key]) == []
        assert s3_server.secret_key not in proc.stdout + proc.stderr
    finally:
        cluster.stop()
