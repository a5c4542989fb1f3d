"""vidllm.ray_session against a real Ray cluster (`ray start --head`, tests/ray_cluster.py).

Drivers that connect to the cluster run in a fresh python: this process may have its own local Ray.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest

from tests.ray_cluster import RayCluster, files_containing, free_ports, ray_cluster  # noqa: F401  (fixture)
from vidllm.errors import VidLLMError
from vidllm.ray_session import FORWARDED_ENV, absolute_local, forwarded_env

SECRET_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


PROBE = """
import json, os, ray
from vidllm.ray_session import init_ray
assert init_ray()

@ray.remote
def probe():
    return {"endpoint": os.environ.get("AWS_ENDPOINT_URL"),
            "secrets": [k for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY") if k in os.environ]}

print("RESULT " + json.dumps(ray.get(probe.remote(), timeout=60)))
ray.shutdown()
"""


def test_secrets_reach_neither_workers_nor_logs(ray_cluster: RayCluster):
    secret, key_id = f"secret-{uuid.uuid4().hex}", f"keyid-{uuid.uuid4().hex}"
    env = ray_cluster.client_env({"AWS_SECRET_ACCESS_KEY": secret, "AWS_ACCESS_KEY_ID": key_id,
                                  "AWS_SESSION_TOKEN": secret + "-token", "AWS_ENDPOINT_URL": "http://127.0.0.1:9"})
    run = ray_cluster.run_driver(PROBE, env, timeout=90)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.split("RESULT ", 1)[1])
    assert result["endpoint"] == "http://127.0.0.1:9"  # non-secret settings are forwarded
    assert result["secrets"] == []  # credentials are not (and the raylet never had them)
    time.sleep(1.0)  # let the cluster's log writers flush
    assert files_containing(ray_cluster.temp_dir, [secret, key_id]) == []
    assert any(ray_cluster.temp_dir.glob("session_*/logs/*")), "no session logs were scanned"
    for stream in (run.stdout, run.stderr):
        assert secret not in stream and key_id not in stream


LOCAL = """
import json, ray
from vidllm.ray_session import init_ray

def gcs_port():
    return int(ray.get_runtime_context().gcs_address.rsplit(":", 1)[1])

assert init_ray(num_cpus=1)
private = gcs_port()
ray.shutdown()
ray.init(logging_level="WARNING")  # plain ray.init(): joins the recorded cluster
recorded = gcs_port()
ray.shutdown()
print("RESULT " + json.dumps({"private": private, "recorded": recorded}))
"""


def test_no_ray_address_starts_a_private_instance(ray_cluster: RayCluster):
    # Record the cluster where a plain ray.init() looks for it: $RAY_TMPDIR/ray/ray_current_cluster
    # (`ray start` wrote it to its own temp dir).
    recorded = ray_cluster.temp_dir / "ray_current_cluster"
    assert recorded.read_text().strip().endswith(f":{ray_cluster.port}")
    tmp_root = ray_cluster.base / "t"  # short path: Ray's socket paths have a length limit
    (tmp_root / "ray").mkdir(parents=True)
    (tmp_root / "ray" / "ray_current_cluster").write_text(recorded.read_text())
    run = ray_cluster.run_driver(LOCAL, ray_cluster.client_env({"RAY_TMPDIR": str(tmp_root)}, address=False),
                                 timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    ports = json.loads(run.stdout.split("RESULT ", 1)[1])
    assert ports["recorded"] == ray_cluster.port  # the recorded cluster is what plain ray.init() would join
    assert ports["private"] != ray_cluster.port  # init_ray() without RAY_ADDRESS does not


UNREACHABLE = """
import json, time
from vidllm.errors import VidLLMError
from vidllm.ray_session import init_ray
start = time.monotonic()
try:
    init_ray()
except VidLLMError as e:
    print("RESULT " + json.dumps({"error": str(e), "seconds": time.monotonic() - start}))
"""


def test_unreachable_address_is_a_one_line_user_error(ray_cluster: RayCluster):
    (closed,) = free_ports(1)
    address = f"127.0.0.1:{closed}"
    env = ray_cluster.client_env({"RAY_ADDRESS": address})
    run = ray_cluster.run_driver(UNREACHABLE, env, timeout=60)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    result = json.loads(run.stdout.split("RESULT ", 1)[1])
    assert result["seconds"] < 10
    message = result["error"]
    assert "\n" not in message
    assert address in message and "RAY_AUTH_MODE=token" in message and "auth_token" in message


def test_unreachable_probe_in_process(monkeypatch):
    from vidllm.ray_session import check_reachable

    (closed,) = free_ports(1)
    start = time.monotonic()
    with pytest.raises(VidLLMError, match=f"127.0.0.1:{closed}"):
        check_reachable(f"127.0.0.1:{closed}", timeout=2.0)
    with pytest.raises(VidLLMError, match=f"ray://127.0.0.1:{closed}"):
        check_reachable(f"ray://127.0.0.1:{closed}", timeout=2.0)
    assert time.monotonic() - start < 6
    check_reachable("auto")  # nothing to probe


def test_forwarded_env_never_holds_secrets(monkeypatch):
    for name in SECRET_VARS + ("AWS_SECRET_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "MY_PASSWORD"):
        monkeypatch.setenv(name, "s3cr3t")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_PROFILE", "cluster")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("AWS_REGION", raising=False)
    env = forwarded_env()
    assert "s3cr3t" not in env.values()
    assert set(env) <= set(FORWARDED_ENV)
    assert env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9"
    assert env["AWS_DEFAULT_REGION"] == "us-east-1" and env["AWS_PROFILE"] == "cluster"
    assert env["HF_HUB_OFFLINE"] == "1" and "AWS_REGION" not in env
    for name in FORWARDED_ENV:
        assert not any(word in name for word in ("SECRET", "TOKEN", "KEY", "PASSWORD"))


def test_absolute_local(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert absolute_local("shards") == str(tmp_path / "shards")
    assert absolute_local(Path("a/b")) == str(tmp_path / "a" / "b")
    assert absolute_local(str(tmp_path / "x")) == str(tmp_path / "x")
    for url in ("s3://bucket/prefix", "gs://bucket/x", "https://host/p", "file:///tmp/x"):
        assert absolute_local(url) == url
