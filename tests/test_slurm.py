"""infra/slurm-train.sbatch as shipped, on a real single-node Slurm (tests/slurm_cluster.py): the
whole pipeline on the tiny recipe, overrides passed through, nodes and CPUs from the allocation,
and nothing of the job's Ray left on the node afterwards."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.ray_cluster import _pids_mentioning
from tests.s3_server import free_ports
from tests.slurm_cluster import SlurmCluster, slurm_cluster  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "infra" / "slurm-train.sbatch"

pytestmark = pytest.mark.slow


def test_slurm_train_sbatch_runs_the_pipeline_and_cleans_up_ray(slurm_cluster: SlurmCluster, tmp_path):
    if not (REPO / ".venv" / "bin" / "activate").is_file():
        pytest.skip("the script sources the repository's .venv (make setup)")
    runs = tmp_path / "runs"
    output = tmp_path / "job.out"
    env = slurm_cluster.env({"VIDLLM_RECIPE": "tiny", "VIDLLM_RUNS": str(runs),
                             "VIDLLM_RAY_PORT": str(free_ports(1)[0])})
    overrides = ["data.synth.scenes=3", "train.stage1.steps=2", "train.stage2.steps=3", "eval.max_new_tokens=4"]
    submit = subprocess.run(["sbatch", "--parsable", f"--output={output}", str(SCRIPT),
                             *[arg for o in overrides for arg in ("--set", o)]],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=30)
    assert submit.returncode == 0, submit.stderr
    job_id = submit.stdout.strip().split(";")[0]
    state = slurm_cluster.wait_for_job(job_id, timeout=900)
    log = output.read_text(errors="replace") if output.exists() else ""
    assert state == "COMPLETED", log[-5000:] + slurm_cluster.log("slurmd.log")[-2000:]

    assert f"1 node(s), {slurm_cluster.cpus} CPU(s) and 0 GPU(s) each" in log  # from the allocation
    run_dir = runs / "tiny"
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["train"]["stage2"]["steps"] == 3 and config["data"]["synth"]["scenes"] == 3
    assert (run_dir / "model" / "model.safetensors").is_file() and (run_dir / "metrics.json").is_file()
    assert (run_dir / "report.md").is_file()

    ray_tmp = f"/tmp/vidllm-ray-{job_id}"
    assert not Path(ray_tmp).exists() and _pids_mentioning(ray_tmp) == []
    assert not list(runs.glob(".ray-auth-token-*"))
    # Later Ray use on the node: a plain local instance starts at once.
    probe = subprocess.run([sys.executable, "-c", "import ray; ray.init(address='local', num_cpus=1, "
                            "include_dashboard=False); print(ray.cluster_resources()['CPU']); ray.shutdown()"],
                           env={k: v for k, v in env.items() if not k.startswith("RAY_")}, capture_output=True,
                           text=True, timeout=120)
    assert probe.returncode == 0 and probe.stdout.strip().endswith("1.0"), probe.stderr[-2000:]
