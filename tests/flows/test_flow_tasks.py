"""The train-full task options as Prefect applies them, on a real Prefect server: I/O tasks retry
transient failures but not user errors, and `_run` enforces the timeout it is given."""

from __future__ import annotations

import time

import pytest
from prefect import flow, task
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows import train_full as tf
from tests.flows.prefect_server import PrefectServer
from vidllm.errors import DataError

ATTEMPTS: list[str] = []


def _io_test_task(fn):
    return task(name=fn.__name__, **{**tf._io_task, "retry_delay_seconds": 0})(fn)


@_io_test_task
def flaky_io(kind: str) -> dict:
    ATTEMPTS.append(kind)
    if len(ATTEMPTS) == 1:
        raise ConnectionError("S3 endpoint reset the connection") if kind == "transient" else \
            DataError("scans/scene0000_00/scene0000_00.sens", "truncated")
    return {"attempts": len(ATTEMPTS)}


@_io_test_task
def slow_io() -> dict:
    time.sleep(10)
    return {}


@flow(persist_result=False)
def run_flaky(kind: str) -> dict:
    return tf._run(flaky_io, kind)


@flow(persist_result=False)
def run_slow() -> dict:
    return tf._run(slow_io, timeout_s=1.0)


def test_io_tasks_retry_transient_failures_only(prefect_server: PrefectServer):
    with temporary_settings({PREFECT_API_URL: prefect_server.api_url}):
        ATTEMPTS.clear()
        assert run_flaky("transient") == {"attempts": 2}
        ATTEMPTS.clear()
        with pytest.raises(DataError, match="truncated"):
            run_flaky("user")
        assert ATTEMPTS == ["user"]  # a user error fails at once
    for name in ("synth", "prepare", "teachers", "report"):
        assert tf.TASKS[name].retries == 2, name
    assert tf.TASKS["stage-2"].retries == 0  # training resumes from its checkpoint on a re-run instead


def test_the_io_timeout_interrupts_a_task_in_the_flow_process(prefect_server: PrefectServer):
    with temporary_settings({PREFECT_API_URL: prefect_server.api_url}):
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            run_slow()
        # 3 attempts (timeouts are retried as transient) of 1 s each, far less than the 10 s sleep each.
        assert time.monotonic() - start < 9
