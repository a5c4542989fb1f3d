"""Shard readers (plain IterableDataset and Ray Data): content matches the source scenes, and
every kind of damage gives a DataError naming the shard and the key."""

from __future__ import annotations

import dataclasses
import io
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.shard_fixtures import TINY_PREP
from vidllm.data.frames import adjust_intrinsics, plan_resize_crop, resample_depth, resize_color
from vidllm.data.scannet.scans import load_scene
from vidllm.data.shards.format import ShardDataset, read_manifest, write_manifest
from vidllm.data.shards.ray_reader import iter_ray_batches
from vidllm.errors import DataError


@pytest.fixture(scope="module")
def plain_samples(synthetic_shards):
    _, out, _ = synthetic_shards
    return {s["key"]: s for s in ShardDataset(str(out))}


def test_plain_reader_matches_the_source_scenes(synthetic_shards, plain_samples):
    dataset, _, _ = synthetic_shards
    assert sorted(plain_samples) == sorted(s.scene_id for s in dataset.scenes)
    for truth in dataset.scenes:
        sample = plain_samples[truth.scene_id]
        meta = sample["meta"]
        ids = meta["source_frame_ids"]
        assert len(ids) == TINY_PREP["frames"] and sample["images"].shape == (4, 3, 56, 70)
        assert sample["images"].dtype == torch.float32 and sample["depths"].shape == (4, 56, 70)
        assert not set(ids) & set(truth.invalid_frame_ids)  # frames with -inf poses never sampled
        np.testing.assert_allclose(sample["camera_to_world"].numpy(), truth.camera_to_world[ids], atol=1e-5)
        np.testing.assert_allclose(np.array(meta["axis_alignment"]), truth.axis_alignment, atol=1e-9)
        plan = plan_resize_crop((80, 60), TINY_PREP["short_side"], 14)  # synthetic frames are 80x60
        k_out = adjust_intrinsics(truth.intrinsic_color, plan)
        np.testing.assert_allclose(sample["intrinsics"].numpy(), np.repeat(k_out[None], 4, 0), atol=1e-4)
        boxes = {o["object_id"]: (o["label"], np.array(o["box"])) for o in meta["objects"]}
        assert sorted(boxes) == sorted(o.object_id for o in truth.objects)
        for obj in truth.objects:
            assert boxes[obj.object_id][0] == obj.label
            np.testing.assert_allclose(boxes[obj.object_id][1], obj.box, atol=1e-4)
        with load_scene(truth.path) as scene:
            for i, frame_id in enumerate(ids):
                expected_color = resize_color(scene.read_color(frame_id), plan).astype(np.float64)
                got_color = (sample["images"][i].permute(1, 2, 0).numpy() * 255).round()
                assert np.abs(got_color - expected_color).mean() < 4.0  # JPEG q95 tolerance
                # Depth is exact in millimetres: the stored .sens depth, resampled onto the output grid ...
                source_mm = np.rint(scene.read_depth(frame_id) * 1000).astype(np.uint16)
                expected_mm = resample_depth(source_mm, truth.intrinsic_depth, k_out, plan.out_size)
                got_mm = np.rint(sample["depths"][i].numpy() * 1000).astype(np.int64)
                assert (got_mm == expected_mm).all()
                # ... and within the 1 mm quantisation of the generator's own (float) depth.
                truth_m = resample_depth(truth.depths_m[frame_id], truth.intrinsic_depth, k_out, plan.out_size)
                assert np.abs(got_mm - truth_m * 1000).max() <= 1.0
        tasks = {a["task"] for a in sample["annotations"]}
        assert {"scanqa", "scanrefer", "scan2cap"} <= tasks
        assert all(a["scene_id"] == truth.scene_id for a in sample["annotations"])


def test_ray_reader_returns_the_same_samples(synthetic_shards, plain_samples):
    _, out, _ = synthetic_shards
    seen = {}
    for batch in iter_ray_batches(str(out), batch_size=2):
        assert batch["images"].shape[1:] == (4, 3, 56, 70) and batch["images"].dtype == torch.float32
        for b, key in enumerate(batch["key"]):
            seen[key] = {name: batch[name][b] for name in ("images", "depths", "camera_to_world", "intrinsics",
                                                          "meta", "annotations")}
    assert sorted(seen) == sorted(plain_samples)
    for key, sample in plain_samples.items():
        for name in ("images", "depths", "camera_to_world", "intrinsics"):
            assert torch.equal(seen[key][name], sample[name]), (key, name)
        assert seen[key]["meta"] == sample["meta"] and seen[key]["annotations"] == sample["annotations"]


def test_ray_reader_uint8_batches_convert_to_the_float_samples(synthetic_shards, plain_samples):
    from vidllm.data.shards.ray_reader import pixels_to_float

    _, out, _ = synthetic_shards
    seen = 0
    for batch in iter_ray_batches(str(out), batch_size=2, unit_float=False):
        assert batch["images"].dtype == torch.uint8 and batch["images"].shape[1:] == (4, 3, 56, 70)
        assert batch["depth_mm"].dtype == torch.uint16 and "depths" not in batch
        converted = pixels_to_float(batch, "cpu")
        for b, key in enumerate(batch["key"]):
            for name in ("images", "depths"):
                assert torch.allclose(converted[name][b], plain_samples[key][name], atol=1e-6), (key, name)
            seen += 1
    assert seen == len(plain_samples)


def test_ray_reader_decodes_a_shard_in_groups_bounded_by_the_block_size(synthetic_shards, tmp_path):
    """A shard decodes into groups of clips no larger than Ray's target block size (a 1 GB shard must not
    become one multi-GB block): a target below one clip gives one block per clip, with the same values."""
    import ray.data

    from vidllm.config import PrepConfig
    from vidllm.data.prepare import write_scenes_in_process
    from vidllm.data.shards.ray_reader import ray_shard_dataset

    dataset, _, _ = synthetic_shards
    out = write_scenes_in_process([(s.scene_id, s.path) for s in dataset.scenes], dataset.annotations_dir,
                                  tmp_path / "one_shard", PrepConfig(**{**TINY_PREP, "shard_max_bytes": 10**8}))
    entries = read_manifest(str(out))
    assert len({e.shard for e in entries}) == 1 and len(entries) == len(dataset.scenes)
    expected = {s["key"]: s for s in ShardDataset(str(out))}
    context = ray.data.DataContext.get_current()
    saved = context.target_max_block_size
    context.target_max_block_size = 4 * 56 * 70 * 5 - 1  # one byte under a clip's pixels
    try:
        decoded = ray_shard_dataset(str(out)).materialize()
    finally:
        context.target_max_block_size = saved
    assert decoded.num_blocks() == len(entries)
    rows = list(decoded.iter_rows())
    assert sorted(r["key"] for r in rows) == sorted(expected)
    for row in rows:
        images = torch.from_numpy(np.ascontiguousarray(row["images"])).permute(0, 3, 1, 2).float() / 255
        assert torch.allclose(images, expected[row["key"]]["images"], atol=1e-6)
        depths = torch.from_numpy(row["depth_mm"].astype(np.float32)) / 1000
        assert torch.allclose(depths, expected[row["key"]]["depths"], atol=1e-6)
    # The default target keeps a small shard's clips together: one block.
    assert ray_shard_dataset(str(out)).materialize().num_blocks() == 1


def test_dataloader_workers_split_shards(synthetic_shards):
    _, out, _ = synthetic_shards
    loader = torch.utils.data.DataLoader(ShardDataset(str(out)), batch_size=None, num_workers=2)
    keys = [s["key"] for s in loader]
    assert sorted(keys) == sorted(e.key for e in read_manifest(str(out)))


# ----------------------------------------------------------------------------- damage


def _copy(synthetic_shards, tmp_path: Path):
    _, out, _ = synthetic_shards
    copy = tmp_path / "shards"
    shutil.copytree(out, copy)
    entry = read_manifest(str(copy))[0]
    return copy, entry, copy / entry.shard


def _overwrite_member(shard: Path, member: str, data_offset: int, new: bytes) -> None:
    with tarfile.open(shard) as tar:
        info = tar.getmember(member)
    with open(shard, "r+b") as f:
        f.seek(info.offset_data + data_offset)
        f.write(new)


def _plain_error(copy: Path) -> str:
    with pytest.raises(DataError) as err:
        list(ShardDataset(str(copy)))
    return str(err.value)


def _ray_error(copy: Path) -> str:
    with pytest.raises(DataError) as err:
        list(iter_ray_batches(str(copy)))
    return str(err.value)


def test_corrupt_jpeg(synthetic_shards, tmp_path):
    copy, entry, shard = _copy(synthetic_shards, tmp_path)
    _overwrite_member(shard, f"{entry.key}.color.001.jpg", 0, b"\0" * 16)
    for message in (_plain_error(copy), _ray_error(copy)):
        assert f"{entry.shard}:{entry.key}/color.001.jpg" in message and "corrupt JPEG" in message


def test_corrupt_png(synthetic_shards, tmp_path):
    copy, entry, shard = _copy(synthetic_shards, tmp_path)
    _overwrite_member(shard, f"{entry.key}.depth.002.png", 0, b"\0" * 16)
    message = _plain_error(copy)
    assert f"{entry.shard}:{entry.key}/depth.002.png" in message and "corrupt PNG" in message


def test_modified_member_fails_the_digest(synthetic_shards, tmp_path):
    copy, entry, shard = _copy(synthetic_shards, tmp_path)
    _overwrite_member(shard, f"{entry.key}.poses.npy", 200, b"\x01")  # decodes fine, content differs
    message = _plain_error(copy)
    assert f"{entry.shard}:{entry.key}" in message and "digest mismatch" in message


def test_truncated_shard(synthetic_shards, tmp_path):
    copy, entry, shard = _copy(synthetic_shards, tmp_path)
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size // 2)
    for message in (_plain_error(copy), _ray_error(copy)):
        assert entry.shard in message and "truncated" in message
    # Without the size check the tar reader itself notices, and still names the shard.
    with pytest.raises(DataError, match=rf"{entry.shard}.*(truncated|not found)"):
        list(ShardDataset(str(copy), verify=False))


def test_missing_member(synthetic_shards, tmp_path):
    copy, entry, shard = _copy(synthetic_shards, tmp_path)
    dropped = f"{entry.key}.depth.002.png"
    rebuilt = io.BytesIO()
    with tarfile.open(shard) as src, tarfile.open(fileobj=rebuilt, mode="w") as dst:
        for info in src.getmembers():
            if info.name != dropped:
                dst.addfile(info, src.extractfile(info))
    shard.write_bytes(rebuilt.getvalue())
    # Keep the manifest consistent with the new shard size, so the member check is what fires.
    entries = [dataclasses.replace(e, shard_bytes=shard.stat().st_size) if e.shard == entry.shard else e
               for e in read_manifest(str(copy))]
    write_manifest(str(copy), entries)
    for message in (_plain_error(copy), _ray_error(copy)):
        assert f"{entry.shard}:{entry.key}" in message and "missing member(s) depth.002.png" in message


def test_shard_missing_from_storage(synthetic_shards, tmp_path):
    copy, entry, shard = _copy(synthetic_shards, tmp_path)
    shard.unlink()
    assert "missing" in _plain_error(copy) and entry.shard in _plain_error(copy)


def test_shards_info_verify_finds_corrupt_samples_duplicate_keys_and_truncated_shards(synthetic_dataset_3, tmp_path,
                                                                                     capsys):
    import json

    from tests.shard_fixtures import write_tiny_shards
    from vidllm.cli import main

    shards = write_tiny_shards(synthetic_dataset_3, tmp_path / "shards")
    assert main(["shards-info", str(shards), "--verify"]) == 0
    assert "verify: 3 of 3 samples intact" in capsys.readouterr().out

    entries = read_manifest(str(shards))
    victim = entries[1]
    shard = shards / victim.shard
    data = bytearray(shard.read_bytes())
    data[victim.offset + 512 + 200] ^= 0xFF  # inside the first member's payload: the tar stays readable
    shard.write_bytes(bytes(data))
    write_manifest(str(shards), [*entries, entries[0]])  # the first key listed twice
    assert main(["shards-info", str(shards), "--verify", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)["verify"]
    assert not report["ok"] and report["verified_samples"] == 2
    assert f"{shards / 'manifest.parquet'}: key '{entries[0].key}' listed 2 times" in report["problems"]
    assert f"{shard}:{victim.key}: content digest differs from the manifest (modified or corrupted)" \
        in report["problems"]

    write_manifest(str(shards), entries)
    shard.write_bytes(bytes(data[: len(data) // 2]))
    assert main(["shards-info", str(shards), "--verify"]) == 1
    err = capsys.readouterr().err
    assert f"FAIL {shard}: shard is {len(data) // 2} bytes but the manifest says {len(data)}" in err
