"""S3 failures the user can fix (wrong credentials, unreachable endpoint) end in one line that
names the object and what to check, never a traceback or a secret. Against the real S3 server."""

from __future__ import annotations

import pytest

from tests.s3_server import free_ports
from vidllm.artifacts import storage
from vidllm.cli import main


@pytest.fixture
def object_uri(s3_server):
    uri = s3_server.uri("errors", "manifest.parquet")
    storage.write_bytes(uri, b"not read")
    return s3_server.uri("errors")


def _lines(capsys) -> list[str]:
    captured = capsys.readouterr()
    return [line for line in (captured.out + captured.err).splitlines() if line.strip()]


def test_wrong_credentials_are_one_line_without_the_secret(object_uri, s3_server, synthetic_dataset, monkeypatch,
                                                          capsys):
    wrong = "wrong-secret-d41d8cd98f00b204"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    assert main(["shards-info", object_uri]) == 2
    lines = _lines(capsys)
    assert lines == [f"vidllm shards-info: error: {object_uri}/manifest.parquet: access denied: check the credentials "
                     f"(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE) and the bucket's permissions "
                     f"(endpoint {s3_server.endpoint_url})"]
    code = main(["prepare", "--scannet", str(synthetic_dataset.scan_dir), "--annotations",
                 str(synthetic_dataset.annotations_dir), "--out", s3_server.uri("errors-prepare"), "--frames", "2"])
    lines = _lines(capsys)
    errors = [line for line in lines if line.startswith("vidllm prepare: error:")]
    assert code == 2 and len(errors) == 1 and "access denied" in errors[0]
    assert not any("Traceback" in line or wrong in line or s3_server.secret_key in line for line in lines)


def test_an_unreachable_endpoint_is_one_line(object_uri, monkeypatch, capsys):
    endpoint = f"http://127.0.0.1:{free_ports(1)[0]}"  # nothing listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    assert main(["shards-info", object_uri]) == 2
    assert _lines(capsys) == [f"vidllm shards-info: error: {object_uri}/manifest.parquet: cannot reach the S3 endpoint: "
                              f"check AWS_ENDPOINT_URL (endpoint {endpoint})"]


def test_other_errors_are_left_alone_and_unknown_s3_codes_are_named(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://s3.example:9000")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    assert storage.describe_s3_error(ValueError("scene0403_00 is broken")) is None
    assert storage.describe_s3_error(OSError("When reading key 'a' in bucket 'b': AWS Error SLOW_DOWN during Get")) \
        == "s3://b/a: S3 request failed (SLOW_DOWN) (endpoint http://s3.example:9000)"
