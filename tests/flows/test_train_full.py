"""`train-full` deployed from prefect.yaml to a real Prefect server, run by a process worker, twice.

The first run executes every step on the tiny recipe (synthetic data → report); the second finds
every output valid and skips every step (named state `Skipped`), leaving the outputs untouched.
Both publish the metrics table, the report and links as artifacts and persist their task results.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
from pathlib import Path

import pytest

from tests.flows.prefect_server import BIN, REPO, PrefectServer, stop_process

pytestmark = pytest.mark.slow

STEPS = ["synth", "prepare", "teachers", "stage-1", "stage-2", "evaluate", "report"]
RUN_TIMEOUT_S = 400


def _run_deployment(server: PrefectServer, work_dir: Path) -> str:
    """`prefect deployment run 'train-full/default' --watch` with tiny parameters; returns the flow run id.

    `overrides` in the form the README documents: a JSON list of dotted KEY=VALUE strings."""
    proc = server.prefect("deployment", "run", "train-full/default", "--param", "recipe=tiny",
                          "--param", f"work_dir={work_dir}", "--param", "meteor=false",
                          "--param", 'overrides=["eval.max_new_tokens=8"]', "--watch",
                          timeout=RUN_TIMEOUT_S)
    out = proc.stdout
    assert "Completed" in out, out[-3000:]
    match = re.search(r"UUID: ([0-9a-f-]{36})", out)
    assert match, out[-3000:]
    return match.group(1)


def _read_api(server: PrefectServer, flow_run_id: str) -> tuple[list, list]:
    """(task runs, artifacts) of one flow run, read back from the server's API."""
    async def read() -> tuple[list, list]:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        runs_of = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        async with get_client() as client:
            return (await client.read_task_runs(flow_run_filter=runs_of),
                    await client.read_artifacts(flow_run_filter=runs_of))

    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: server.api_url}):
        return asyncio.run(read())


def _task_states(server: PrefectServer, flow_run_id: str) -> dict[str, tuple[str, str]]:
    """{task name: (final state type, state name)} of one flow run."""
    runs, _ = _read_api(server, flow_run_id)
    return {r.name.rsplit("-", 1)[0]: (r.state.type.value, r.state.name) for r in runs}


def _check_artifacts_and_results(server: PrefectServer, flow_run_id: str, run: Path) -> None:
    runs, artifacts = _read_api(server, flow_run_id)
    by_key = {a.key: a for a in artifacts}
    assert by_key["vidllm-metrics"].type == "table"
    table = by_key["vidllm-metrics"].data
    table = json.loads(table) if isinstance(table, str) else table
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"benchmark": "scanrefer", "metric": "Acc@0.25",
            "value": metrics["scanrefer"]["metrics"]["Acc@0.25"]} in table
    assert by_key["vidllm-report"].type == "markdown"
    assert by_key["vidllm-report"].data == (run / "report.md").read_text()
    for key, path in [("vidllm-model", run / "model"), ("vidllm-stage1-model", run / "stage1_model"),
                      ("vidllm-checkpoints", run / "checkpoints")]:
        assert f"]({path.as_uri()})" in by_key[key].data  # Prefect stores a link artifact as markdown
    # Persisted task results: each state points at a JSON record in the worker's result storage.
    assert {r.name.rsplit("-", 1)[0] for r in runs} == set(STEPS)
    for task_run in runs:
        record = json.loads(Path(task_run.state.data.storage_key).read_text())
        assert record["metadata"]["serializer"]["type"] == "json"
        result = json.loads(record["result"])  # the serializer's output, a JSON document
        assert result["step"] == task_run.name.rsplit("-", 1)[0]
        assert result["status"] == ("skipped" if task_run.state.name == "Skipped" else "ran")


def _summary(work_dir: Path) -> dict[str, str]:
    data = json.loads((work_dir / "run" / "flow_summary.json").read_text())
    return {s["step"]: s["status"] for s in data["steps"]}


def test_deployment_runs_every_step_then_skips_them(prefect_server: PrefectServer, tmp_path: Path):
    work_dir = tmp_path / "work"
    prefect_server.prefect("work-pool", "create", "vidllm-process", "--type", "process")
    # Deploy from the repository root with the repository's prefect.yaml (the worker loads the flow from there).
    prefect_server.prefect("--no-prompt", "deploy", "--name", "default", cwd=REPO)
    worker_log = tmp_path / "worker.log"
    with open(worker_log, "wb") as log:
        worker = subprocess.Popen([str(BIN / "prefect"), "worker", "start", "--pool", "vidllm-process"],
                                  stdout=log, stderr=subprocess.STDOUT, env=prefect_server.env(), cwd=tmp_path,
                                  start_new_session=True)
    try:
        first = _run_deployment(prefect_server, work_dir)
        assert _summary(work_dir) == {step: "ran" for step in STEPS}
        run = work_dir / "run"
        metrics = json.loads((run / "metrics.json").read_text())
        assert {"scanqa", "scanrefer", "multi3drefer", "scan2cap", "sqa3d", "nr3d", "sr3d", "recon"} <= set(metrics)
        assert 0.0 <= metrics["scanrefer"]["metrics"]["Acc@0.25"] <= 1.0
        assert "recon/F-score" in metrics["recon"]["metrics"]
        assert (run / "report.md").is_file() and (run / "report.html").is_file()
        assert any((run / "model").glob("*.safetensors"))
        for step in STEPS:
            assert json.loads((run / "steps" / f"{step}.done.json").read_text())["step"] == step
        from flows import pipeline, steps

        where = steps.Paths.resolve(work_dir).locations()
        ran = [s for s in pipeline.PIPELINE if s.name in STEPS]
        missing = [(s.name, out) for s in ran for out in s.outputs if not Path(out.format(**where)).exists()]
        assert not missing, missing  # the table's outputs are where the flow wrote them
        assert _task_states(prefect_server, first) == {step: ("COMPLETED", "Completed") for step in STEPS}
        _check_artifacts_and_results(prefect_server, first, run)

        outputs = [run / "metrics.json", run / "report.md", run / "model", run / "stage1_model",
                   work_dir / "shards" / "manifest.parquet"]
        before = {p: p.stat().st_mtime_ns for p in outputs}
        second = _run_deployment(prefect_server, work_dir)
        assert _summary(work_dir) == {step: "skipped" for step in STEPS}
        assert {p: p.stat().st_mtime_ns for p in outputs} == before
        assert _task_states(prefect_server, second) == {step: ("COMPLETED", "Skipped") for step in STEPS}
        _check_artifacts_and_results(prefect_server, second, run)
    except BaseException:
        print(worker_log.read_text(errors="replace")[-5000:])
        raise
    finally:
        stop_process(worker)


def test_single_stage_ablation_skips_teachers_and_stage1(prefect_server: PrefectServer, tmp_path: Path):
    """`train.single_stage=true` (Fig. 5's no-Stage-1 run): the flow goes prepare → stage 2 from the
    config's sources, with no teacher cache and no Stage-1 model."""
    work_dir = tmp_path / "work"
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.train_full import train_full

    with temporary_settings({PREFECT_API_URL: prefect_server.api_url}):
        results = train_full(recipe="tiny", work_dir=str(work_dir), overrides=["train.single_stage=true"],
                             benchmarks=["scanqa"], meteor=False)
    assert list(results) == ["synth", "prepare", "stage-2", "evaluate", "report"]
    run = work_dir / "run"
    assert any((run / "model").glob("*.safetensors")) and not (run / "stage1_model").exists()
    assert not (work_dir / "teacher_cache").exists()
    assert "scanqa" in json.loads((run / "metrics.json").read_text())


def test_blind_control_runs_beside_the_model_and_the_report_shows_both(prefect_server: PrefectServer,
                                                                       tmp_path: Path):
    """`eval.blind_control=true`: after evaluate, the same Stage 2 with no vision tokens is trained
    and evaluated; RUN_DIR/ablation.json holds both rows and the report renders them."""
    work_dir = tmp_path / "work"
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.train_full import train_full

    with temporary_settings({PREFECT_API_URL: prefect_server.api_url}):
        results = train_full(recipe="tiny", work_dir=str(work_dir), benchmarks=["scanqa", "recon"], meteor=False,
                             overrides=["train.single_stage=true", "eval.blind_control=true"])
    assert list(results)[-2:] == ["control", "report"]
    run = work_dir / "run"
    ablation = json.loads((run / "ablation.json").read_text())
    assert list(ablation["variants"]) == ["full", "blind"]
    blind_config = (run / "control_blind" / "config.yaml").read_text()
    assert "vision_tokens: false" in blind_config
    assert ablation["variants"]["blind"]["table"]["δ1"] is not None
    assert "| blind |" in (run / "report.md").read_text()


def test_a_second_run_on_a_busy_work_dir_stops_with_one_line(prefect_server: PrefectServer, tmp_path: Path):
    """Two runs on one work directory would interleave markers and checkpoints: the second is refused
    at once, naming the holder, and writes nothing."""
    from flows import steps

    work_dir = tmp_path / "work"
    with steps.work_dir_lock(steps.Paths.resolve(work_dir)):
        proc = subprocess.run([str(BIN / "python"), "-m", "flows.train_full", "--recipe", "tiny",
                               "--work-dir", str(work_dir), "--no-meteor"], cwd=REPO, env=prefect_server.env(),
                              capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines() == [
        f"error: {work_dir}: in use by another train-full run (pid {os.getpid()} on {socket.gethostname()} "
        f"since {proc.stderr.split(' since ')[1].split(')')[0]}); wait for it to finish or use another "
        f"--work-dir / --run-dir"]
    assert sorted(p.name for p in work_dir.iterdir()) == [steps.LOCK_FILE]
    # Released with its holder: the lock can be taken again (a killed holder releases it the same way).
    with steps.work_dir_lock(steps.Paths.resolve(work_dir)) as held:
        assert held == [work_dir / steps.LOCK_FILE]


def test_miniature_teachers_are_a_step_trained_once_then_reused(prefect_server: PrefectServer, tmp_path: Path):
    """`teachers.miniatures=true`: the flow first trains the miniature VGGT + CLIP (`pretrain`), and the
    teacher cache and Stage 1 load them as real weights; a second run reuses them."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.train_full import train_full

    work_dir = tmp_path / "work"
    kwargs = dict(recipe="tiny", work_dir=str(work_dir), overrides=["teachers.miniatures=true"],
                  benchmarks=["scanqa"], meteor=False)
    with temporary_settings({PREFECT_API_URL: prefect_server.api_url}):
        first = train_full(**kwargs)
        assert list(first)[:4] == ["synth", "prepare", "pretrain", "teachers"]
        assert first["pretrain"]["status"] == "ran"
        mini = work_dir / "teachers" / "miniature"
        assert Path(first["pretrain"]["outputs"]["vggt"]) == (mini / "vggt.safetensors").resolve()
        assert not (work_dir / "teachers" / "geometry").exists()  # no random teachers were needed
        stage1_config = (work_dir / "run" / "stage1_model" / "config.json").read_text()
        assert str((mini / "vggt.safetensors").resolve()) in stage1_config
        second = train_full(**kwargs)
    assert second["pretrain"]["status"] == "skipped" and second["stage-1"]["status"] == "skipped"
