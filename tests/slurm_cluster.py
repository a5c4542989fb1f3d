"""A real single-node Slurm for tests: munged + slurmctld + slurmd (Debian's `slurm-wlm`) on
127.0.0.1, with a private config, munge key and socket, state and logs in one temp dir, stopped by
the PIDs started here. `.ci/run` installs the packages; without them the tests that need Slurm skip.

`SlurmCluster.env()` is the environment for `sbatch` / `squeue` / `sacct`-free polling (SLURM_CONF
points at the private config; jobs inherit it, so `srun` inside a job finds the same cluster).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.s3_server import free_ports

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol")


def slurm_available() -> bool:
    return all(shutil.which(b) or Path(f"/usr/sbin/{b}").exists() for b in BINARIES)


def _binary(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


@dataclass
class SlurmCluster:
    base: Path
    conf: Path
    node: str
    cpus: int
    procs: list[subprocess.Popen] = field(default_factory=list)

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RAY_"))}
        env["SLURM_CONF"] = str(self.conf)
        env.update(extra or {})
        return env

    def run(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
        return subprocess.run([_binary(args[0]), *args[1:]], env=self.env(), capture_output=True, text=True,
                              timeout=timeout)

    def job_state(self, job_id: str) -> str:
        """PENDING / RUNNING / COMPLETED / FAILED / ... from `scontrol show job` (no accounting database)."""
        out = self.run("scontrol", "show", "job", job_id, "-o").stdout
        for part in out.split():
            if part.startswith("JobState="):
                return part.split("=", 1)[1]
        return "UNKNOWN"

    def wait_for_job(self, job_id: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.job_state(job_id)
            if state not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "UNKNOWN"):
                return state
            time.sleep(2.0)
        self.run("scancel", job_id)
        raise TimeoutError(f"Slurm job {job_id} still {self.job_state(job_id)} after {timeout:.0f} s")

    def log(self, name: str) -> str:
        path = self.base / name
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        for proc in reversed(self.procs):  # slurmd, slurmctld, then munged
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=STOP_TIMEOUT_S)
        shutil.rmtree(self.base, ignore_errors=True)


def _conf(base: Path, node: str, cpus: int, memory_mb: int) -> str:
    ctld_port, slurmd_port = free_ports(2)
    return f"""ClusterName=vidllmtest
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
AuthInfo=socket={base}/munge.socket
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={base}/state
SlurmdSpoolDir={base}/spool
SlurmctldPidFile={base}/slurmctld.pid
SlurmdPidFile={base}/slurmd.pid
SlurmctldLogFile={base}/slurmctld.log
SlurmdLogFile={base}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MpiDefault=none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SlurmdTimeout=30
InactiveLimit=0
KillWait=10
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


def start_slurm(cpus: int = 2, memory_mb: int = 4000) -> SlurmCluster:
    base = Path(tempfile.mkdtemp(prefix="vidllm-slurm-", dir="/tmp"))
    for sub in ("state", "spool"):
        (base / sub).mkdir()
    node = socket.gethostname().split(".")[0]
    key = base / "munge.key"
    key.write_bytes(secrets.token_bytes(1024))
    key.chmod(0o400)
    conf = base / "slurm.conf"
    conf.write_text(_conf(base, node, cpus, memory_mb))
    cluster = SlurmCluster(base=base, conf=conf, node=node, cpus=cpus)
    env = cluster.env()
    try:
        cluster.procs.append(subprocess.Popen(
            [_binary("munged"), "--foreground", "--force", f"--key-file={key}", f"--socket={base}/munge.socket",
             f"--pid-file={base}/munged.pid", f"--log-file={base}/munged.log", f"--seed-file={base}/munge.seed"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL))
        _wait(lambda: (base / "munge.socket").exists(), "munged", cluster, "munged.log")
        cluster.procs.append(subprocess.Popen([_binary("slurmctld"), "-D", "-f", str(conf)], env=env,
                                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                              stdin=subprocess.DEVNULL))
        cluster.procs.append(subprocess.Popen([_binary("slurmd"), "-D", "-f", str(conf), "-N", node], env=env,
                                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                              stdin=subprocess.DEVNULL))

        def idle() -> bool:
            out = cluster.run("sinfo", "-h", "-o", "%t").stdout.split()
            return bool(out) and all(state.startswith("idle") for state in out)

        _wait(idle, "slurmd (node idle)", cluster, "slurmd.log")
        return cluster
    except BaseException:
        cluster.stop()
        raise


def _wait(ready, what: str, cluster: SlurmCluster, log: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not ready():
        dead = [p for p in cluster.procs if p.poll() is not None]
        if dead or time.monotonic() > deadline:
            raise RuntimeError(f"{what} not up (exit codes {[p.returncode for p in dead]}):\n"
                               + cluster.log(log)[-3000:] + cluster.log("slurmctld.log")[-2000:])
        time.sleep(0.3)


@pytest.fixture(scope="module")
def slurm_cluster() -> Iterator[SlurmCluster]:
    if not slurm_available():
        pytest.skip("Slurm (slurm-wlm, munge) is not installed; .ci/run installs it")
    cluster = start_slurm()
    try:
        yield cluster
    finally:
        cluster.stop()
