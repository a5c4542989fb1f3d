"""Skip rules of the train-full steps: which config edits invalidate which step, and stale-checkpoint cleanup."""

from __future__ import annotations

from pathlib import Path

from flows import steps
from vidllm.config import load_config


def _chain(overrides: list[str], paths: steps.Paths) -> dict[str, str]:
    """Digests of synth → prepare → stage-1 → stage-2 (teachers' digest needs teacher weights; stubbed by a constant)."""
    cfg = load_config("tiny", overrides=overrides)
    synth = steps.synth_digest(cfg)
    prepare = steps.prepare_digest(cfg, paths, synth)
    teachers = steps.digest("teachers-fixed", prepare)
    stage1 = steps.stage1_digest(cfg, teachers)
    stage2 = steps.stage2_digest(cfg, stage1)
    return {"synth": synth, "prepare": prepare, "stage-1": stage1, "stage-2": stage2}


def _changed(a: dict[str, str], b: dict[str, str]) -> list[str]:
    return [k for k in a if a[k] != b[k]]


def test_digests_invalidate_only_the_edited_step_and_what_follows(tmp_path: Path):
    paths = steps.Paths.resolve(tmp_path)
    base = _chain([], paths)
    assert _chain([], paths) == base  # deterministic
    assert _changed(base, _chain(["train.stage2.lr=0.01"], paths)) == ["stage-2"]
    assert _changed(base, _chain(["train.stage1.steps=7"], paths)) == ["stage-1", "stage-2"]
    assert _changed(base, _chain(["model.cta.num_bridge_tokens=2"], paths)) == ["stage-1", "stage-2"]
    assert _changed(base, _chain(["data.prep.jpeg_quality=80"], paths)) == ["prepare", "stage-1", "stage-2"]
    # Shard size and worker count do not change sample content, so the shards stay valid.
    assert _changed(base, _chain(["data.prep.workers=1"], paths)) == []
    assert _changed(base, _chain(["data.synth.seed=3"], paths)) == ["synth", "prepare", "stage-1", "stage-2"]


def test_paths_default_under_work_dir_and_accept_s3(tmp_path: Path):
    paths = steps.Paths.resolve(tmp_path / "w")
    assert paths.synthetic and paths.scans_uri == str(tmp_path / "w" / "data" / "scans")
    assert paths.run_dir == tmp_path / "w" / "run" and paths.shards_uri == str(tmp_path / "w" / "shards")
    real = steps.Paths.resolve(tmp_path, data_uri="s3://bucket/scannet/scans", shards_uri="s3://bucket/shards",
                               annotations_uri=str(tmp_path / "ann"))
    assert not real.synthetic and real.scans_uri == "s3://bucket/scannet/scans"
    assert real.shards_uri == "s3://bucket/shards" and real.label_map is None


def test_marked_step_with_missing_outputs_runs_again(tmp_path: Path):
    paths = steps.Paths.resolve(tmp_path)
    calls: list[int] = []

    def work() -> dict:
        calls.append(1)
        (tmp_path / "out.txt").write_text("x")
        return {"n": len(calls)}

    def valid() -> bool:
        return (tmp_path / "out.txt").is_file()

    first = steps.run_or_skip("stage-1", paths, "d1", valid, work)
    again = steps.run_or_skip("stage-1", paths, "d1", valid, work)
    assert (first.status, again.status) == ("ran", "skipped") and again.outputs == {"n": 1}
    (tmp_path / "out.txt").unlink()  # marker present, output gone → not valid
    assert steps.run_or_skip("stage-1", paths, "d1", valid, work).status == "ran"
    assert steps.run_or_skip("stage-1", paths, "d2", valid, work).status == "ran"  # new digest
    assert len(calls) == 3


def test_new_digest_clears_old_checkpoints_same_digest_keeps_them(tmp_path: Path):
    paths = steps.Paths.resolve(tmp_path)
    ckpt = paths.run_dir / "checkpoints" / "stage2" / "step-00000002"
    model = paths.run_dir / "model"
    for d in (ckpt, model):
        d.mkdir(parents=True)
    steps._fresh_or_resume(paths, "stage-2", "stage2", "digest-a", model)
    assert not ckpt.exists() and not model.exists()  # unknown provenance: start fresh
    ckpt.mkdir(parents=True)
    steps._fresh_or_resume(paths, "stage-2", "stage2", "digest-a", model)
    assert ckpt.exists()  # same digest: an interrupted run resumes from it
    steps._fresh_or_resume(paths, "stage-2", "stage2", "digest-b", model)
    assert not ckpt.exists()
