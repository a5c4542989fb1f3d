"""A real Prefect server for the flow tests, started on 127.0.0.1 with its own PREFECT_HOME, stopped by PID.

The `prefect_server` fixture is exported to tests/flows through conftest.py."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

START_TIMEOUT_S = 120.0  # migrations on a fresh SQLite DB take ~20 s on 2 cores
REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class PrefectServer:
    api_url: str
    home: Path
    pid: int

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for `prefect` CLI calls and workers talking to this server."""
        env = dict(os.environ)
        env.update({"PREFECT_API_URL": self.api_url, "PREFECT_HOME": str(self.home),
                    "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_CLI_PROMPT": "false",
                    "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}"})
        env.update(extra)
        return env

    def prefect(self, *args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        proc = subprocess.run([str(BIN / "prefect"), *args], cwd=cwd, env=self.env(), capture_output=True, text=True,
                              timeout=timeout)
        if proc.returncode != 0:
            raise AssertionError(f"prefect {' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n"
                                 f"{proc.stderr[-3000:]}")
        return proc


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc: subprocess.Popen) -> None:
    """SIGTERM the process group we started (the server/worker and its children), then SIGKILL if needed."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


# One server for the whole session: Prefect's in-process event and log services bind the API URL they
# first saw, so a second server after the first stopped would leave them retrying a dead URL.
@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    home = tmp_path_factory.mktemp("prefect_home")
    port = _free_port()
    server = PrefectServer(api_url=f"http://127.0.0.1:{port}/api", home=home, pid=0)
    env = server.env()
    env.pop("PREFECT_API_URL")  # the server itself must not look for another API
    log_path = home / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=home, start_new_session=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"prefect server exited with code {proc.returncode}:\n"
                            f"{log_path.read_text(errors='replace')[-3000:]}")
            try:
                with urllib.request.urlopen(f"{server.api_url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"prefect server did not answer {server.api_url}/health within {START_TIMEOUT_S:.0f} s; "
                            f"log: {log_path}")
            time.sleep(0.5)
        yield PrefectServer(api_url=server.api_url, home=home, pid=proc.pid)
    finally:
        _drain_prefect_services()
        stop_process(proc)


def _drain_prefect_services(timeout_s: float = 30.0) -> None:
    """Send what in-process flows queued (logs, events) while the server still answers: the queue
    services are keyed by API URL and would otherwise retry a dead server at interpreter exit."""
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=timeout_s)  # drains every queue service instance (they share one registry)
