"""The repository's dvc.yaml + params.yaml in a temporary git repo: `dvc repro` twice, then push/pull to S3.

Real tools only: the `vidllm` CLI runs every stage, DVC decides what re-runs, and the remote is
the SeaweedFS S3 server of tests/s3_server.py with its credentials in `.dvc/config.local`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
STAGES = ["synth", "prepare", "teachers", "stage1", "stage2", "evaluate", "report"]

# Tiny values over the repository's params.yaml (same keys, so the same stages track them).
TINY_PARAMS = {
    "recipe": "tiny",
    "data": {"synth": {"scenes": 2, "seed": 0}, "prep": {"frames": 4, "short_side": 56}},
    "teachers": {"semantic_image_size": 56},
    "model": {"cta": {"variant": "bridge", "num_bridge_tokens": 4}},
    "train": {"seed": 0, "distill_lambda": 0.1, "distill_teachers": "both", "distill_sc_tokens": 256,
              "instructions_per_scene": 8, "max_text_tokens": 128,
              "task_weights": {"scanqa": 3.0, "scanrefer": 2.0, "multi3drefer": 1.0, "scan2cap": 1.0, "sqa3d": 0.5,
                               "nr3d": 0.5, "sr3d": 0.5},
              "loss_weights": {"point": 0.0}, "share_vision_prefix": True, "weight_decay": 0.05,
              "betas": [0.9, 0.999], "grad_clip": 1.0, "precision": "auto",
              "stage1": {"steps": 2, "lr": 0.001}, "stage2": {"steps": 2, "lr": 0.001}},
    "eval": {"protocol": "first_camera_gt", "max_new_tokens": 4},
}


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}  # S3 settings come from .dvc/config*
    env.update({"PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}", "DVC_NO_ANALYTICS": "1",
                "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
                "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"})
    return env


def _run(repo: Path, *cmd: str, timeout: float = 300) -> str:
    exe = str(BIN / "dvc") if cmd[0] == "dvc" else cmd[0]
    proc = subprocess.run([exe, *cmd[1:]], cwd=repo, env=_env(), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc.stdout + proc.stderr


def _run_json(repo: Path, *cmd: str):
    """A dvc command's --json output (stdout only: dvc writes warnings to stderr)."""
    exe = str(BIN / "dvc") if cmd[0] == "dvc" else cmd[0]
    proc = subprocess.run([exe, *cmd[1:]], cwd=repo, env=_env(), capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout)


def _ran(output: str) -> list[str]:
    return [s for s in STAGES if f"Running stage '{s}'" in output]


def _check_params_keys_match_repo(params: dict) -> None:
    repo_params = yaml.safe_load((REPO / "params.yaml").read_text())

    def keys(tree: dict, prefix: str = "") -> set[str]:
        out = set()
        for k, v in tree.items():
            out |= keys(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k}
        return out

    assert keys(params) == keys(repo_params), "TINY_PARAMS must mirror params.yaml's keys"


def test_every_train_key_that_changes_results_is_a_tracked_param():
    """Editing such a key re-runs the stages that read it: each is in some stage's params (or the
    whole `train` section is). Keys that change where or how a run goes are flows.pipeline.NOT_RESULT_KEYS
    (`single_stage` among them: this graph always has a Stage 1)."""
    from flows.pipeline import NOT_RESULT_KEYS
    from vidllm.config import TrainConfig

    pipeline = yaml.safe_load((REPO / "dvc.yaml").read_text())
    tracked = {p for stage in pipeline["stages"].values() for p in stage.get("params", []) if isinstance(p, str)}
    missing = [k for k in TrainConfig.model_fields if f"train.{k}" not in NOT_RESULT_KEYS
               and f"train.{k}" not in tracked and "train" not in tracked]
    assert not missing, f"dvc.yaml does not track {missing}"


@pytest.fixture(scope="module")
def dvc_repo(tmp_path_factory) -> Path:
    """A git + DVC repo holding copies of dvc.yaml and params.yaml (tiny values), reproduced once."""
    repo = tmp_path_factory.mktemp("dvc_repo")
    _check_params_keys_match_repo(TINY_PARAMS)
    pipeline = yaml.safe_load((REPO / "dvc.yaml").read_text())
    # METEOR starts a JVM per benchmark (~20 s each); the scores without it are the same code path.
    pipeline["stages"]["evaluate"]["cmd"] += " --no-meteor"
    (repo / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    (repo / "params.yaml").write_text(yaml.safe_dump(TINY_PARAMS, sort_keys=False))
    _run(repo, "git", "init", "-q")
    _run(repo, "dvc", "init", "-q")
    out = _run(repo, "dvc", "repro", timeout=600)
    assert _ran(out) == STAGES, out[-4000:]
    return repo


def test_repro_twice_second_does_nothing(dvc_repo: Path):
    metrics = json.loads((dvc_repo / "runs/dvc/metrics.json").read_text())
    assert {"scanqa", "scanrefer", "recon"} <= set(metrics)
    assert (dvc_repo / "runs/dvc/report.md").is_file() and (dvc_repo / "runs/dvc/model").is_dir()
    out = _run(dvc_repo, "dvc", "repro")
    assert _ran(out) == [], out
    assert "up to date" in out
    # The pipeline's metrics are visible to DVC.
    shown = json.loads(_run(dvc_repo, "dvc", "metrics", "show", "--json"))
    assert shown


def test_editing_a_train_param_changes_only_that_stage(dvc_repo: Path):
    """DVC sees the edit in stage2's params only; stage2's new outputs then re-run evaluate and report."""
    params_path = dvc_repo / "params.yaml"
    original = params_path.read_text()
    params = yaml.safe_load(original)
    params["train"]["stage2"]["lr"] = 0.002
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        status = json.loads(_run(dvc_repo, "dvc", "status", "--json"))
        assert set(status) == {"stage2"}, status
        assert "train.stage2" in json.dumps(status["stage2"])
    finally:
        params_path.write_text(original)
    assert json.loads(_run(dvc_repo, "dvc", "status", "--json")) == {}


def test_push_then_pull_from_s3_remote(dvc_repo: Path, s3_server):
    prefix = "dvc-store"
    _run(dvc_repo, "dvc", "remote", "add", "-d", "storage", s3_server.uri(prefix))
    _run(dvc_repo, "dvc", "remote", "modify", "storage", "endpointurl", s3_server.endpoint_url)
    _run(dvc_repo, "dvc", "remote", "modify", "storage", "region", s3_server.region)
    # Credentials only in the git-ignored config.local, never in .dvc/config.
    _run(dvc_repo, "dvc", "remote", "modify", "--local", "storage", "access_key_id", s3_server.access_key)
    _run(dvc_repo, "dvc", "remote", "modify", "--local", "storage", "secret_access_key", s3_server.secret_key)
    assert s3_server.secret_key not in (dvc_repo / ".dvc/config").read_text()
    assert s3_server.secret_key in (dvc_repo / ".dvc/config.local").read_text()

    _run(dvc_repo, "dvc", "push")
    listed = s3_server.client().list_objects_v2(Bucket=s3_server.bucket, Prefix=prefix)
    assert listed.get("KeyCount", 0) > 0

    model_files = sorted(p.relative_to(dvc_repo) for p in (dvc_repo / "runs/dvc/model").rglob("*") if p.is_file())
    for path in (".dvc/cache", "data", "runs/dvc/model", "runs/dvc/stage1_model"):
        shutil.rmtree(dvc_repo / path)
    _run(dvc_repo, "dvc", "pull")
    assert sorted(p.relative_to(dvc_repo) for p in (dvc_repo / "runs/dvc/model").rglob("*") if p.is_file()) == model_files
    assert (dvc_repo / "data/shards/manifest.parquet").is_file()
    assert json.loads(_run(dvc_repo, "dvc", "status", "--json")) == {}


def test_a_fresh_clone_shows_metrics_and_pulls_the_raw_data_and_models_from_s3(dvc_repo: Path, s3_server,
                                                                             tmp_path):
    """The documented team workflow: the raw dataset tracked with `dvc add` (data.dvc-style), the
    pipeline's outputs pushed to the S3 remote, then a fresh `git clone` shows metrics, plots and
    report from git alone and `dvc pull` brings back the raw data and the models, with nothing to re-run."""
    raw = dvc_repo / "raw" / "scannet"
    shutil.copytree(dvc_repo / "data/synthetic/scans", raw / "scans")  # stands in for a real ScanNet download
    _run(dvc_repo, "dvc", "add", "raw/scannet")
    assert (dvc_repo / "raw/scannet.dvc").is_file()
    prefix = "dvc-fresh"
    _run(dvc_repo, "dvc", "remote", "add", "-f", "-d", "fresh", s3_server.uri(prefix))
    _run(dvc_repo, "dvc", "remote", "modify", "fresh", "endpointurl", s3_server.endpoint_url)
    _run(dvc_repo, "dvc", "remote", "modify", "fresh", "region", s3_server.region)
    for key, value in (("access_key_id", s3_server.access_key), ("secret_access_key", s3_server.secret_key)):
        _run(dvc_repo, "dvc", "remote", "modify", "--local", "fresh", key, value)
    _run(dvc_repo, "dvc", "push", "-r", "fresh")
    _run(dvc_repo, "git", "add", "-A")
    _run(dvc_repo, "git", "commit", "-q", "-m", "pipeline run")
    tracked = _run(dvc_repo, "git", "ls-files")
    assert s3_server.secret_key not in tracked and ".dvc/config.local" not in tracked
    for committed in ("dvc.lock", "raw/scannet.dvc", "runs/dvc/metrics.json", "runs/dvc/report.md",
                      "runs/dvc/train_log.csv"):
        assert committed in tracked.split(), committed

    clone = tmp_path / "clone"
    _run(tmp_path, "git", "clone", "-q", str(dvc_repo), str(clone))
    metrics = _run_json(clone, "dvc", "metrics", "show", "--json")  # from git, before any pull
    shown = json.dumps(metrics)
    assert "scanqa" in shown and "recon" in shown
    plots = _run_json(clone, "dvc", "plots", "show", "--json")
    assert "runs/dvc/train_log.csv" in plots.get("data", {}), list(plots)
    assert not plots.get("errors"), plots["errors"]
    assert (clone / "runs/dvc/report.md").read_text() == (dvc_repo / "runs/dvc/report.md").read_text()
    assert not (clone / "runs/dvc/model").exists() and not (clone / "raw/scannet/scans").exists()
    for key, value in (("access_key_id", s3_server.access_key), ("secret_access_key", s3_server.secret_key)):
        _run(clone, "dvc", "remote", "modify", "--local", "fresh", key, value)
    _run(clone, "dvc", "pull")
    assert sorted(p.relative_to(raw) for p in raw.rglob("*") if p.is_file()) == \
        sorted(p.relative_to(clone / "raw/scannet") for p in (clone / "raw/scannet").rglob("*") if p.is_file())
    assert (clone / "runs/dvc/model/model.safetensors").is_file()
    assert _run_json(clone, "dvc", "status", "--json") == {}  # nothing to re-run in the clone
