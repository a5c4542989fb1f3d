"""prepare_shards end to end: manifest, idempotence, crash recovery, per-scene failures, S3, CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.shard_fixtures import TINY_PREP
from vidllm.artifacts import storage
from vidllm.config import PrepConfig
from vidllm.data.prepare import CRASH_AFTER_SHARDS_ENV, config_digest, prepare_shards
from vidllm.data.shards.format import ShardDataset, read_manifest, shards_info

REPO = Path(__file__).resolve().parents[2]


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(folder.iterdir())}


def test_manifest_lists_every_scene_once(synthetic_shards):
    dataset, out, summary = synthetic_shards
    entries = read_manifest(str(out))
    scene_ids = sorted(s.scene_id for s in dataset.scenes)
    assert sorted(e.key for e in entries) == scene_ids == sorted(summary.ok)
    assert len(summary.shards_written) >= 2  # the tiny shard size forces several shards
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted(["manifest.parquet", *summary.shards_written])  # no temp files left
    cfg = PrepConfig(**TINY_PREP)
    for e in entries:
        assert e.frames == 4 and e.config_digest == config_digest(cfg)
        assert 0 <= e.offset and e.offset + e.size <= e.shard_bytes == (out / e.shard).stat().st_size
    info = shards_info(str(out))
    assert info == {"samples": 6, "shards": len(summary.shards_written), "frames": 24,
                    "bytes": sum((out / s).stat().st_size for s in summary.shards_written),
                    "config_digest": config_digest(cfg)}


def test_byte_offsets_locate_each_sample(synthetic_shards):
    _, out, _ = synthetic_shards
    for e in read_manifest(str(out)):
        with open(out / e.shard, "rb") as f:
            f.seek(e.offset)
            header = f.read(512)
        assert header[:100].rstrip(b"\0").decode().startswith(f"{e.key}.")  # tar header of its first member


def test_rerun_is_a_noop(synthetic_shards):
    dataset, out, _ = synthetic_shards
    before = _snapshot(out)
    summary = prepare_shards(str(dataset.root), dataset.annotations_dir, str(out), PrepConfig(**TINY_PREP),
                             progress=False)
    assert sorted(summary.skipped) == sorted(s.scene_id for s in dataset.scenes)
    assert summary.ok == [] and summary.shards_written == []
    assert _snapshot(out) == before  # nothing rewritten (mtime and size of every file)


def test_changed_config_rewrites_and_changed_scene_is_redone(synthetic_dataset_6, ray_session, tmp_path):
    scans = tmp_path / "scans"
    for scene in synthetic_dataset_6.scenes[:2]:
        shutil.copytree(scene.path, scans / scene.scene_id)
    out = tmp_path / "out"
    cfg = PrepConfig(**TINY_PREP)
    first = prepare_shards(str(scans), None, str(out), cfg, label_map=str(synthetic_dataset_6.label_map),
                           progress=False)
    assert len(first.ok) == 2
    # Touching a source file's content makes only that scene's sample be rebuilt.
    info = scans / "scene0001_00" / "scene0001_00.txt"
    info.write_text(info.read_text() + "\n")
    second = prepare_shards(str(scans), None, str(out), cfg, label_map=str(synthetic_dataset_6.label_map),
                            progress=False)
    assert second.ok == ["scene0001_00"] and second.skipped == ["scene0000_00"]
    entries = {e.key: e for e in read_manifest(str(out))}
    assert len(entries) == 2 and entries["scene0001_00"].shard not in first.shards_written
    assert [s["key"] for s in ShardDataset(str(out))] == ["scene0000_00", "scene0001_00"]


def test_failed_scene_is_reported_and_the_rest_is_written(synthetic_dataset_6, ray_session, tmp_path):
    scans = tmp_path / "scans"
    for scene in synthetic_dataset_6.scenes[:2]:
        shutil.copytree(scene.path, scans / scene.scene_id)
    sens = scans / "scene0000_00" / "scene0000_00.sens"
    sens.write_bytes(sens.read_bytes()[:300])  # truncated .sens
    out = tmp_path / "out"
    summary = prepare_shards(str(scans), None, str(out), PrepConfig(**TINY_PREP), progress=False)
    assert summary.ok == ["scene0001_00"]
    assert list(summary.failed) == ["scene0000_00"]
    assert "scene0000_00.sens" in summary.failed["scene0000_00"]
    assert [e.key for e in read_manifest(str(out))] == ["scene0001_00"]


def test_crashed_run_leaves_a_valid_manifest_and_the_next_run_finishes(synthetic_dataset_6, ray_session,
                                                                       tmp_path):
    dataset = synthetic_dataset_6
    out = tmp_path / "out"
    env = {**os.environ, CRASH_AFTER_SHARDS_ENV: "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "vidllm", "prepare", "--scannet", str(dataset.root), "--annotations",
           str(dataset.annotations_dir), "--out", str(out), "--recipe", "tiny", "--frames", "4",
           "--short-side", "56", "--shard-size-mb", "0.06", "--workers", "2", "--no-progress"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 17, proc.stderr[-2000:]  # died right after committing its first shard
    after_crash = read_manifest(str(out))
    shards = {e.shard for e in after_crash}
    assert len(shards) == 1 and 0 < len(after_crash) < 6
    assert all(p.name in shards | {"manifest.parquet"} for p in out.iterdir())
    assert len(list(ShardDataset(str(out)))) == len(after_crash)  # what is listed is complete and valid

    summary = prepare_shards(str(dataset.root), dataset.annotations_dir, str(out), PrepConfig(**TINY_PREP),
                             progress=False)
    assert sorted(summary.skipped) == sorted(e.key for e in after_crash)
    assert len(summary.ok) == 6 - len(after_crash) and not summary.failed
    keys = [s["key"] for s in ShardDataset(str(out))]
    assert sorted(keys) == sorted(s.scene_id for s in dataset.scenes)


def test_s3_end_to_end(synthetic_dataset_6, s3_server, ray_session, tmp_path):
    """Scans and annotations on S3 → shards on S3 → both readers; re-run leaves every ETag alone."""
    from vidllm.data.shards.ray_reader import iter_ray_batches

    dataset = synthetic_dataset_6
    scenes = dataset.scenes[:3]
    for scene in scenes:
        storage.upload_tree(scene.path, s3_server.uri("raw", "scans", scene.scene_id))
    storage.write_bytes(s3_server.uri("raw", "scannetv2-labels.combined.tsv"), dataset.label_map.read_bytes())
    storage.upload_tree(dataset.annotations_dir, s3_server.uri("raw", "annotations"))
    out = s3_server.uri("shards")
    cfg = PrepConfig(**TINY_PREP)
    summary = prepare_shards(s3_server.uri("raw"), s3_server.uri("raw", "annotations"), out, cfg, progress=False)
    assert sorted(summary.ok) == [s.scene_id for s in scenes] and not summary.failed

    client = s3_server.client()

    def etags() -> dict[str, tuple[str, object]]:
        listing = client.list_objects_v2(Bucket=s3_server.bucket, Prefix="shards/")["Contents"]
        return {o["Key"]: (o["ETag"], o["LastModified"]) for o in listing}

    before = etags()
    assert "shards/manifest.parquet" in before and len(before) == len(summary.shards_written) + 1
    again = prepare_shards(s3_server.uri("raw"), s3_server.uri("raw", "annotations"), out, cfg, progress=False)
    assert sorted(again.skipped) == [s.scene_id for s in scenes] and again.ok == []
    assert etags() == before

    plain = {s["key"]: s for s in ShardDataset(out)}
    assert sorted(plain) == [s.scene_id for s in scenes]
    assert all(s["annotations"] for s in plain.values())  # every scene has instructions joined in
    via_ray = {}
    for batch in iter_ray_batches(out, batch_size=1):
        via_ray[batch["key"][0]] = batch
    assert sorted(via_ray) == sorted(plain)
    for key, sample in plain.items():
        assert (via_ray[key]["images"][0] == sample["images"]).all()
        assert (via_ray[key]["depths"][0] == sample["depths"]).all()

    info = subprocess.run([sys.executable, "-m", "vidllm", "shards-info", out, "--json"], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout) == shards_info(out)


def test_prepare_cli_help_and_bad_input(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    help_text = subprocess.run([sys.executable, "-m", "vidllm", "prepare", "--help"], capture_output=True,
                               text=True, timeout=60, env=env).stdout
    for flag in ("--scannet", "--annotations", "--out", "--frames", "--short-side", "--workers"):
        assert flag in help_text
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = subprocess.run([sys.executable, "-m", "vidllm", "prepare", "--scannet", str(empty), "--out",
                           str(tmp_path / "out"), "--no-progress"], capture_output=True, text=True, timeout=60,
                          env=env)
    assert proc.returncode == 2
    assert str(empty) in proc.stderr and "no sceneXXXX_XX folders" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "vidllm", "shards-info", str(empty), "--json"],
                          capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 2 and "manifest.parquet" in proc.stderr


def test_prepare_json_stays_valid_with_failures_and_counts_warnings_and_dropped_frames(tmp_path):
    """`prepare --json`: stdout is one JSON object even when a scene fails; a scene without
    instance annotations is warned about and frames dropped for invalid poses are counted."""
    from tests.data.test_scannet import make_raw_scan

    scans = tmp_path / "scans"
    scans.mkdir()
    make_raw_scan(scans, "scene0001_00", n_frames=4, bad_pose_frames=(1,), objects=False)  # no segs, 1 bad pose
    make_raw_scan(scans, "scene0002_00", n_frames=3, bad_pose_frames=(0, 1, 2), objects=False)  # no valid frame
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env = {k: v for k, v in env.items() if not k.startswith("RAY_")}  # a private local Ray, not the session's
    proc = subprocess.run([sys.executable, "-m", "vidllm", "prepare", "--scannet", str(scans), "--out",
                           str(tmp_path / "out"), "--frames", "2", "--short-side", "28", "--json"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 1, proc.stderr[-2000:]
    summary = json.loads(proc.stdout)  # nothing else on stdout
    assert summary["ok"] == ["scene0001_00"] and list(summary["failed"]) == ["scene0002_00"]
    assert "no valid frames" in summary["failed"]["scene0002_00"]
    assert summary["frames_dropped"] == 4
    assert set(summary["warnings"]) == {"scene0001_00", "scene0002_00"}
    assert any("no instance annotations" in w for w in summary["warnings"]["scene0001_00"])
    assert "scene0002_00" in proc.stderr and "no valid frames" in proc.stderr
