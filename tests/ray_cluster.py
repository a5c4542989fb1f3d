"""A real Ray cluster for tests: `ray start --head --block` on 127.0.0.1 with a private temp dir.

`start_cluster()` / `RayCluster.stop()` (and the module-scoped `ray_cluster` fixture) start the head
and stop it by its PID. Drivers connect from a fresh python (`RayCluster.run_driver`), never from
the test process, which may already have a local Ray of its own.

- The head's env has no inherited RAY_* (tests/conftest.py sets RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER,
  which makes the head advertise a wrong IP and clients hang) and no AWS_* (no credentials on the
  cluster: it must not need the driver's).
- Ray 2.60's `ray start` uses token auth: the cluster gets its own token (a file in the private
  dir, RAY_AUTH_TOKEN_PATH) and `client_env()` hands clients RAY_AUTH_MODE=token and that path.
- `ray start` records the cluster in `<temp dir>/ray_current_cluster`, which a plain `ray.init()`
  reads from `$RAY_TMPDIR/ray` (default /tmp/ray).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.s3_server import free_ports

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0


def ray_executable() -> str:
    local = Path(sys.executable).parent / "ray"
    found = str(local) if local.exists() else shutil.which("ray")
    assert found, "the `ray` CLI is not installed next to this python"
    return found


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def env_without_ray(extra: dict[str, str] | None = None, *, drop_aws: bool = True) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("RAY_") and not (drop_aws and k.startswith("AWS_"))}
    env.update(extra or {})
    return env


def files_containing(root: Path, needles: list[str]) -> list[str]:
    """`path: needle` for every file under `root` (symlinks not followed) that contains a needle."""
    hits = []
    raw = [n.encode() for n in needles]
    for dirpath, _dirs, files in os.walk(root):  # does not follow symlinks (session_latest)
        for name in files:
            path = Path(dirpath) / name
            if path.is_symlink() or not path.is_file():
                continue
            try:
                data = path.read_bytes()
            except OSError:
                continue
            hits += [f"{path}: {n.decode()}" for n in raw if n in data]
    return hits


@dataclass
class RayCluster:
    base: Path  # private dir: temp dir, token, `ray start` output
    temp_dir: Path  # --temp-dir (session logs live here)
    port: int  # GCS port
    token_path: Path
    proc: subprocess.Popen
    agent_port: int = 0  # --dashboard-agent-listen-port: the node's HTTP health endpoint (/api/healthz)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def auth_env(self) -> dict[str, str]:
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_path)}

    def client_env(self, extra: dict[str, str] | None = None, *, address: bool = True) -> dict[str, str]:
        """Env for a driver process: no inherited RAY_*/AWS_*, token auth, RAY_ADDRESS (if `address`)."""
        env = env_without_ray(self.auth_env())
        if address:
            env["RAY_ADDRESS"] = self.address
        env.update(extra or {})
        return env

    def run_driver(self, code: str, env: dict[str, str], timeout: float = 60.0) -> subprocess.CompletedProcess:
        """Run `code` in a fresh python (cwd: the repo) and return its completed process."""
        repo = Path(__file__).resolve().parents[1]
        return subprocess.run([sys.executable, "-c", code], env=env, cwd=repo, capture_output=True, text=True,
                              timeout=timeout)

    def stop(self) -> None:
        """SIGTERM the head we started, SIGKILL after a bounded wait, then leftovers using our private dir."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=STOP_TIMEOUT_S)
        kill_processes_mentioning(str(self.base))
        shutil.rmtree(self.base, ignore_errors=True)


def _pids_mentioning(text: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", text], capture_output=True, text=True).stdout
    return [int(p) for p in out.split() if int(p) != os.getpid()]


def kill_processes_mentioning(text: str, timeout: float = 10.0) -> None:
    """SIGTERM (then SIGKILL) the processes whose command line contains `text` (a private path)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = _pids_mentioning(text)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        while pids and time.monotonic() < deadline:
            time.sleep(0.2)
            pids = _pids_mentioning(text)
        if not pids:
            return


def start_cluster(num_cpus: int = 1, node_env: dict[str, str] | None = None) -> RayCluster:
    """`node_env`: extra variables of the head's environment, e.g. the cluster's own S3 credentials."""
    base = Path(tempfile.mkdtemp(prefix="vidllm-rc-", dir="/tmp"))  # short: Ray's socket paths have a length limit
    temp_dir = base / "ray"
    token_path = base / "auth_token"
    token_path.write_text(secrets.token_hex(32))
    gcs, client, agent, agent_grpc, rt_agent, metrics, node_mgr, obj_mgr = free_ports(8)
    cmd = [ray_executable(), "start", "--head", "--block", "--port", str(gcs), "--node-ip-address", "127.0.0.1",
           "--num-cpus", str(num_cpus), "--num-gpus", "0", "--temp-dir", str(temp_dir),
           "--include-dashboard=false", "--disable-usage-stats", "--object-store-memory", str(100 * 1024 * 1024),
           "--ray-client-server-port", str(client), "--dashboard-agent-listen-port", str(agent),
           "--dashboard-agent-grpc-port", str(agent_grpc), "--runtime-env-agent-port", str(rt_agent),
           "--metrics-export-port", str(metrics), "--node-manager-port", str(node_mgr),
           "--object-manager-port", str(obj_mgr)]
    log = open(base / "ray_start.log", "w")
    env = env_without_ray({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path), **(node_env or {})})
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    log.close()
    cluster = RayCluster(base=base, temp_dir=temp_dir, port=gcs, token_path=token_path, proc=proc, agent_port=agent)
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while True:
            started = "Ray runtime started" in (base / "ray_start.log").read_text(errors="replace")
            if started and port_open(gcs):
                return cluster
            if proc.poll() is not None:
                raise RuntimeError(f"`ray start` exited with {proc.returncode}:\n"
                                   + (base / "ray_start.log").read_text(errors="replace")[-4000:])
            if time.monotonic() > deadline:
                raise RuntimeError(f"Ray head not up within {START_TIMEOUT_S:.0f} s:\n"
                                   + (base / "ray_start.log").read_text(errors="replace")[-4000:])
            time.sleep(0.3)
    except BaseException:
        cluster.stop()
        raise


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[RayCluster]:
    """A real one-node Ray cluster (1 CPU) for this module, stopped by its PID afterwards."""
    cluster = start_cluster()
    try:
        yield cluster
    finally:
        cluster.stop()
