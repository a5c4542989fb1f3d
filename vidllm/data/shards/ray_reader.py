"""Ray Data pipeline over scene-clip shards: `read_webdataset` → decode in `map_batches` → torch batches.

`ray_shard_dataset(uri)` gives the decoded `ray.data.Dataset` (one row per scene clip, numpy
columns) for Ray Train's `get_dataset_shard`; `iter_ray_batches(uri, batch_size)` iterates
it as torch batches on the driver. Both check shard sizes and every sample's digest against
the manifest, skip samples the manifest does not list, and report a missing sample, a
truncated shard, a missing member or a corrupt JPEG/PNG as a DataError naming shard and key.

Ray is imported here only (never by vidllm.models).
"""

from __future__ import annotations

import io
import json
import logging
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from PIL import Image

from vidllm.artifacts import storage
from vidllm.data.shards.format import (
    DEPTH_SCALE_M,
    check_shard_size,
    color_member,
    decode_sample,
    manifest_uri,
    rank_shards,
    read_manifest,
    scaled_float32,
    shard_groups,
    to_unit_float,
)
from vidllm.errors import DataError

# Columns of the decoded dataset; rows with the same image size stack into [B,...] batches.
ARRAY_COLUMNS = ("images", "depth_mm", "camera_to_world", "intrinsics")


def _clip_size(members: dict[str, bytes]) -> tuple[int, int] | None:
    """(width, height) from a clip's first JPEG header (pixels not decoded); None if unreadable."""
    try:
        with Image.open(io.BytesIO(members[color_member(0)])) as first:
            return first.size
    except Exception:  # decode_sample reports the damage with the member's name
        return None


def _stack_column(values: list[np.ndarray]) -> np.ndarray:
    if values and all(v.shape == values[0].shape for v in values):
        return np.stack(values)
    ragged = np.empty(len(values), dtype=object)  # clips of different sizes: Ray keeps per-row shapes
    ragged[:] = values
    return ragged


def _group_buffers(rows: list[tuple], max_block_bytes: int) -> tuple[int, tuple[np.ndarray, np.ndarray] | None]:
    """How many of `rows` (same frame count) form the next group, and its uint8 images `[G,S,H,W,3]` /
    uint16 depth `[G,S,H,W]` buffers sized from the first clip's JPEG header (None if unreadable)."""
    frames = rows[0][2][2]
    same = 1
    while same < len(rows) and rows[same][2][2] == frames:
        same += 1
    size = _clip_size(rows[0][3])
    if size is None:
        return 1, None
    width, height = size
    clip_bytes = max(1, frames * height * width * 5)  # uint8 RGB + uint16 depth
    # The smallest group whose pixels exceed Ray's target block size: Ray then ships it as it is,
    # instead of holding it back to concatenate (copy) with the next group.
    group = min(same, max_block_bytes // clip_bytes + 1)
    try:
        return group, (np.empty((group, frames, height, width, 3), np.uint8),
                       np.empty((group, frames, height, width), np.uint16))
    except MemoryError:  # a corrupt header can claim any size; decode_sample names the member
        return 1, None


def _decode_group(rows: list[tuple], buffers: tuple[np.ndarray, np.ndarray] | None, base: str,
                  verify: bool) -> dict[str, np.ndarray]:
    """Decode `rows` (key, shard, manifest entry, members) into `buffers` when every clip fits them."""
    out: dict[str, list[Any]] = {name: [] for name in (*ARRAY_COLUMNS, "key", "shard", "meta_json",
                                                          "annotations_json")}
    in_place = buffers is not None
    for i, (key, shard, listed, members) in enumerate(rows):
        target = (buffers[0][i], buffers[1][i]) if buffers is not None else None
        sample = decode_sample(members, f"{base}/{shard}:{key}", listed[2], listed[1] if verify else None,
                               out=target)
        in_place = in_place and sample["images"] is target[0]  # False once a clip's size differs
        for name in ARRAY_COLUMNS:
            out[name].append(sample[name])
        out["key"].append(key)
        out["shard"].append(shard)
        out["meta_json"].append(json.dumps(sample["meta"]))
        out["annotations_json"].append(json.dumps(sample["annotations"]))
    result: dict[str, np.ndarray] = {}
    for name, values in out.items():
        if name in ("images", "depth_mm") and in_place:
            result[name] = buffers[0] if name == "images" else buffers[1]
        elif name in ARRAY_COLUMNS:
            result[name] = _stack_column(values)
        else:
            result[name] = np.asarray(values, dtype=object)
    return result


def _decode_clips(batch: dict[str, np.ndarray], expected: dict[str, tuple[str, str, int]], base: str,
                  verify: bool, max_block_bytes: int) -> Iterator[dict[str, np.ndarray]]:
    """map_batches (a generator): raw WebDataset members of a read block (a whole shard) → decoded groups.

    Clips decode in place into one buffer per group (no stacking copy), a group being just over
    Ray's target block size, and each group is yielded as soon as it is done: besides the shard's
    compressed bytes (Ray's read), a worker holds one group's pixels, never a whole shard's (a 1 GB
    shard of 518 px clips decodes to several GB), and Ray ships a group while the next one decodes.
    Samples the manifest does not list are dropped.
    """
    member_columns = [c for c in batch if not c.startswith("__")]
    rows = []
    for row in range(len(batch["__key__"])):
        key = str(batch["__key__"][row])
        shard = str(batch["__url__"][row]).rsplit("/", 1)[-1]
        listed = expected.get(key)
        if listed is None or listed[0] != shard:
            continue  # superseded copy left in an older shard
        members = {}
        for name in member_columns:
            value = batch[name][row]
            if value is not None and not (isinstance(value, float) and np.isnan(value)):  # absent member
                members[name] = bytes(value)
        rows.append((key, shard, listed, members))
    while rows:
        group, buffers = _group_buffers(rows, max_block_bytes)
        yield _decode_group(rows[:group], buffers, base, verify)
        rows = rows[group:]


def ray_shard_dataset(dataset_uri: str, *, verify: bool = True, shards: list[str] | None = None,
                      num_cpus: float | None = None):
    """The decoded `ray.data.Dataset` of a shard dataset (one row per scene clip, in manifest order
    when read with `preserve_order`), or of the listed `shards` of it only. `num_cpus`: what each
    read/decode task reserves (Ray's default 1 when None)."""
    import ray

    entries = read_manifest(str(dataset_uri))
    if not entries:
        raise DataError(manifest_uri(str(dataset_uri)), "no manifest (or an empty one): run `vidllm prepare` first")
    if shards is not None:
        entries = [e for e in entries if e.shard in set(shards)]
    groups = shard_groups(entries)
    if verify:
        for shard, group in groups.items():
            check_shard_size(storage.join(dataset_uri, shard), group[0].shard_bytes)
    fs, base = storage.resolve(dataset_uri)
    expected = {e.key: (e.shard, e.digest, e.frames) for e in entries}
    ds = ray.data.read_webdataset([f"{base}/{shard}" for shard in sorted(groups)], filesystem=fs, decoder=None,
                                  override_num_blocks=len(groups), num_cpus=num_cpus)
    # The whole read block (a shard's raw bytes) goes to one call, which yields decoded groups of
    # clips sized to Ray's target block size.
    with warnings.catch_warnings():  # copying Ray's DataContext touches its own deprecated fields
        warnings.simplefilter("ignore", DeprecationWarning)
        max_block_bytes = ds.context.target_max_block_size or 128 * 1024 * 1024
    decoded = ds.map_batches(_decode_clips, batch_size=None, batch_format="numpy", num_cpus=num_cpus,
                             fn_kwargs={"expected": expected, "base": str(dataset_uri).rstrip("/"), "verify": verify,
                                        "max_block_bytes": max_block_bytes})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        # Ray Data reserves a share of the CPUs per operator (and for the consumer); on 2 CPUs that
        # left the fused read+decode running one task at a time. This pipeline has one operator.
        decoded.context.op_resource_reservation_enabled = False
    return decoded


def batch_to_torch(batch: dict[str, np.ndarray], unit_float: bool = True) -> dict[str, Any]:
    """A numpy batch of the decoded dataset → tensors.

    images [B,S,3,H,W] float32 in [0,1]; depths [B,S,H,W] float32 metres (0 = invalid);
    camera_to_world [B,S,4,4], intrinsics [B,S,3,3] float32; key/meta/annotations as lists.
    With `unit_float=False` the pixels stay as decoded, for conversion on the accelerator
    (`pixels_to_float`): images uint8 [B,S,3,H,W] and `depth_mm` uint16 [B,S,H,W] replace
    images/depths — a quarter of the host→device bytes, and no host copy: these two are read-only
    views of Ray's object store, to convert or move, not to modify in place.
    """
    for name in ARRAY_COLUMNS:
        if batch[name].dtype == object:  # Ray hands ragged tensors back as an object array
            raise DataError(str(batch["key"][0]), f"clips in one batch have different shapes ({name}); "
                                                  "use batch_size=1 or one image size per dataset")
    if unit_float:  # the conversion writes fresh arrays
        pixels = {"images": torch.from_numpy(to_unit_float(batch["images"])).permute(0, 1, 4, 2, 3),
                  "depths": torch.from_numpy(scaled_float32(batch["depth_mm"], 1.0 / DEPTH_SCALE_M))}
    else:
        # Zero-copy views of Ray's object store, as Ray's own iter_torch_batches hands them out: read-only
        # memory (torch cannot flag that, hence its warning), so convert or move them, never write in place.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            pixels = {"images": torch.from_numpy(batch["images"]).permute(0, 1, 4, 2, 3),
                      "depth_mm": torch.from_numpy(batch["depth_mm"])}
    return {
        "key": [str(k) for k in batch["key"]],
        **pixels,
        "camera_to_world": torch.from_numpy(np.array(batch["camera_to_world"], dtype=np.float32)),
        "intrinsics": torch.from_numpy(np.array(batch["intrinsics"], dtype=np.float32)),
        "meta": [json.loads(m) for m in batch["meta_json"]],
        "annotations": [json.loads(a) for a in batch["annotations_json"]],
    }


def pixels_to_float(batch: dict[str, Any], device: torch.device | str | None = None) -> dict[str, Any]:
    """A `unit_float=False` batch → the float form (images in [0,1], depths in metres), converted
    after the move to `device` so only uint8/uint16 bytes cross to the accelerator."""
    out = {k: v for k, v in batch.items() if k not in ("images", "depth_mm")}
    images = batch["images"].to(device, non_blocking=True) if device is not None else batch["images"]
    depth_mm = batch["depth_mm"].to(device, non_blocking=True) if device is not None else batch["depth_mm"]
    out["images"] = images.to(torch.float32).mul_(1.0 / 255.0)
    out["depths"] = depth_mm.to(torch.float32).mul_(1.0 / DEPTH_SCALE_M)
    return out


# ----------------------------------------------------------------------------- Ray Train


def train_dataset_plan(dataset_uri: str, world_size: int) -> dict[int, str]:
    """rank → the Ray Train dataset it reads (`train_datasets`): its own shards (`rank_shards`)
    when there are enough shards, else every rank reads one dataset of all of them and keeps
    every `world_size`-th training scene (small datasets), as the single-process reader does."""
    groups = shard_groups(read_manifest(str(dataset_uri)))
    if len(groups) >= world_size:
        return {rank: f"train-rank{rank}" for rank in range(world_size)}
    return dict.fromkeys(range(world_size), "train-all")


def train_datasets(dataset_uri: str, world_size: int, num_cpus: float | None = None) -> dict[str, Any]:
    """The `datasets=` of a `TorchTrainer` that `iter_worker_samples` reads, one per name of
    `train_dataset_plan` (`num_cpus` per read/decode task, `train.data_cpus`). Give the trainer
    `worker_data_config()` so they are not re-split."""
    groups = shard_groups(read_manifest(str(dataset_uri)))
    names = train_dataset_plan(dataset_uri, world_size)
    if set(names.values()) == {"train-all"}:
        datasets = {"train-all": ray_shard_dataset(dataset_uri, num_cpus=num_cpus)}
    else:
        datasets = {name: ray_shard_dataset(dataset_uri, shards=rank_shards(groups, rank, world_size),
                                            num_cpus=num_cpus) for rank, name in names.items()}
    with warnings.catch_warnings():  # copying Ray's DataContext touches its own deprecated fields
        warnings.simplefilter("ignore", DeprecationWarning)
        for dataset in datasets.values():
            dataset.context.enable_progress_bars = False  # the training loop has its own
    return datasets


def worker_data_config():
    """Ray Train's DataConfig for `train_datasets`: no re-splitting (each rank's data is decided
    by `train_dataset_plan`, the same on every run) and the manifest order kept, so a step's batch
    is the same in every run and resumes reproduce an uninterrupted run."""
    from ray.data import ExecutionOptions
    from ray.train import DataConfig

    return DataConfig(datasets_to_split=[], execution_options=ExecutionOptions(preserve_order=True))


def iter_worker_samples(name: str) -> Iterator[dict[str, Any]]:
    """Inside a Ray Train worker: the samples of dataset `name` (`train_dataset_plan`), read through
    `ray.train.get_dataset_shard`, one `to_torch`-style sample dict at a time (as `ShardDataset`)."""
    import ray.train

    rows = ray.train.get_dataset_shard(name).iter_batches(batch_size=1, batch_format="numpy", prefetch_batches=2)
    for batch in _surfacing_data_errors(rows):
        sample = batch_to_torch(batch)
        yield {k: v[0] for k, v in sample.items()}


def _surfacing_data_errors(batches: Iterator[Any], dataset_uri: str | None = None) -> Iterator[Any]:
    """Iterate Ray Data batches; a DataError raised inside Ray's tasks comes out as itself (one
    line, not Ray's wrapped traceback), another failure as a DataError naming `dataset_uri`."""
    try:
        yield from batches
    except DataError:
        raise
    except Exception as exc:
        found = _find_data_error(exc)
        if found is not None:
            raise found from None
        if dataset_uri is None:
            raise
        raise DataError(dataset_uri, f"reading shards failed: {type(exc).__name__}: {exc}") from exc


def _find_data_error(exc: BaseException) -> DataError | None:
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, DataError):
            return DataError(current.path, current.problem)
        stack += [current.__cause__, current.__context__, getattr(current, "cause", None)]
    return None


def iter_ray_batches(dataset_uri: str, batch_size: int = 1, *, verify: bool = True,
                     prefetch_batches: int = 2, unit_float: bool = True) -> Iterator[dict[str, Any]]:
    """Torch batches (see `batch_to_torch`, which `unit_float` is passed to) of every sample in
    the manifest, read through Ray Data."""
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    dataset_uri = str(dataset_uri)
    entries = read_manifest(dataset_uri)
    ds = ray_shard_dataset(dataset_uri, verify=verify)
    with warnings.catch_warnings():  # copying Ray's DataContext touches its own deprecated fields
        warnings.simplefilter("ignore", DeprecationWarning)
        ds.context.enable_progress_bars = False
    seen: set[str] = set()
    batches = ds.iter_batches(batch_size=batch_size, batch_format="numpy", prefetch_batches=prefetch_batches)
    for batch in _surfacing_data_errors(batches, dataset_uri):
        out = batch_to_torch(batch, unit_float)
        seen.update(out["key"])
        yield out
    missing = [e for e in entries if e.key not in seen]
    if missing:
        names = ", ".join(f"{e.shard}:{e.key}" for e in missing[:10])
        raise DataError(storage.join(dataset_uri, missing[0].shard),
                        f"{len(missing)} sample(s) listed in the manifest were not read ({names})")
