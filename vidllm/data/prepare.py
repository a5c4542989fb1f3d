"""ScanNet scenes → scene-clip WebDataset shards + `manifest.parquet` (Ray Data).

`prepare_shards(scannet_uri, annotations_dir, out_uri, cfg)` is the one entry point; the CLI
(`vidllm prepare`), Prefect and DVC call it.

- Per-scene work (read, sample, resize, encode) runs as Ray Data tasks over the scene list:
  local Ray by default, the cluster at `RAY_ADDRESS` when set.
- The driver packs finished samples into shards of about `cfg.shard_max_bytes`, in scene
  order. Each shard is written under a temporary name and committed atomically, then the
  manifest is rewritten (atomically) to list it, so the manifest never names a missing or
  partial shard and a crashed run loses at most the shard it was writing.
- Idempotent: a scene whose input digest (source files, its annotations, preprocessing
  config) matches its manifest entry is skipped, so a re-run with the same inputs writes
  nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import sys
import tarfile
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from vidllm.artifacts import storage
from vidllm.config import PrepConfig
from vidllm.data.frames import adjust_intrinsics, plan_resize_crop, resample_depth, resize_color, sample_frame_ids
from vidllm.data.shards.format import (
    DEPTH_SCALE_M,
    FORMAT_VERSION,
    SHARD_PREFIX,
    SHARD_SUFFIX,
    ManifestEntry,
    color_member,
    depth_member,
    read_manifest,
    sample_digest,
    write_manifest,
)
from vidllm.errors import DataError
from vidllm.ray_session import absolute_local, init_ray

log = logging.getLogger(__name__)

SCENE_DIR_PATTERN = re.compile(r"^scene\d{4}_\d{2}$")
LABEL_MAP_NAME = "scannetv2-labels.combined.tsv"
# Test hook: exit abruptly (no cleanup) after this many shards were committed in this run.
CRASH_AFTER_SHARDS_ENV = "VIDLLM_PREPARE_CRASH_AFTER_SHARDS"
_DIGEST_FULL_LIMIT = 16 << 20  # files up to this size are hashed whole
_DIGEST_EDGE = 1 << 20  # larger files: size + first and last MiB (a full .sens pass would cost more than the job)


@dataclass
class PrepareSummary:
    out_uri: str
    ok: list[str] = field(default_factory=list)  # scenes written in this run
    skipped: list[str] = field(default_factory=list)  # already in the manifest with the same inputs
    failed: dict[str, str] = field(default_factory=dict)  # scene id → cause
    warnings: dict[str, list[str]] = field(default_factory=dict)  # scene id → warnings (written or failed)
    frames_dropped: int = 0  # source frames with invalid poses, over the scenes read in this run
    shards_written: list[str] = field(default_factory=list)
    frames_written: int = 0
    bytes_written: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        return (f"{len(self.ok)} ok, {len(self.skipped)} skipped, {len(self.failed)} failed, "
                f"{len(self.warnings)} with warnings; {self.frames_dropped} source frame(s) dropped (invalid poses); "
                f"{len(self.shards_written)} shard(s), {self.frames_written} frames, "
                f"{self.bytes_written / 1e6:.1f} MB in {self.seconds:.1f} s → {self.out_uri}")


# ----------------------------------------------------------------------------- inputs


def config_digest(cfg: PrepConfig) -> str:
    """Digest of everything that changes sample content (not shard size or worker count)."""
    fields = {"frames": cfg.frames, "short_side": cfg.short_side, "patch_multiple": cfg.patch_multiple,
              "jpeg_quality": cfg.jpeg_quality, "format_version": FORMAT_VERSION}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def scans_root(scannet_uri: str) -> str:
    """Accept either the `scans/` folder or a dataset root that contains one."""
    nested = storage.join(scannet_uri, "scans")
    return nested if storage.list_dirs(nested) else str(scannet_uri)


def list_scenes(scannet_uri: str) -> list[tuple[str, str]]:
    """(scene id, scene folder URI) of every `sceneXXXX_XX` folder, sorted."""
    root = scans_root(scannet_uri)
    names = [n for n in storage.list_dirs(root) if SCENE_DIR_PATTERN.match(n)]
    if not names:
        raise DataError(scannet_uri, "no sceneXXXX_XX folders found (expected a ScanNet scans/ folder)")
    return [(n, storage.join(root, n)) for n in names]


def find_label_map(scannet_uri: str) -> str | None:
    for candidate in (storage.join(scannet_uri, LABEL_MAP_NAME),
                      storage.join(scans_root(scannet_uri), LABEL_MAP_NAME)):
        if storage.exists(candidate):
            return candidate
    return None


def source_digest(scene_uri: str) -> str:
    """Digest of a scene folder: every file's relative name and size, plus content (see limits above)."""
    h = hashlib.sha256()
    for f in storage.list_files(scene_uri, recursive=True):
        h.update(f"{f.name}\0{f.size}\0".encode())
        fs, path = storage.resolve(f.uri)
        with fs.open_input_file(path) as handle:
            if f.size <= _DIGEST_FULL_LIMIT:
                h.update(handle.read())
            else:
                h.update(handle.read_at(_DIGEST_EDGE, 0))
                h.update(handle.read_at(_DIGEST_EDGE, f.size - _DIGEST_EDGE))
    return h.hexdigest()


def _published_name_pattern(name: str) -> re.Pattern[str]:
    """A published annotation file name as a regex; its "{split}" is group 1."""
    head, has_split, tail = name.partition("{split}")
    return re.compile("^" + re.escape(head) + (r"(\w+)" + re.escape(tail) if has_split else "") + "$")


def load_scene_annotations(annotations_dir: str | Path | None) -> dict[str, list[dict[str, Any]]]:
    """Every task's instructions under `annotations_dir`, grouped by scene id.

    Each record is `Instruction.to_dict()` plus `"split"` (None for Nr3D/Sr3D, whose csv
    covers all scans).
    """
    from vidllm.data.scannet.annotations import TASKS, load_annotations

    by_scene: dict[str, list[dict[str, Any]]] = {}
    if annotations_dir is None:
        return by_scene
    root = Path(annotations_dir)
    if not root.is_dir():
        raise DataError(root, "annotations folder not found")
    files = sorted(p for p in root.rglob("*") if p.is_file())
    for task in TASKS.values():
        if not task.annotation_files:
            continue
        # The first published name: a later one (sr3d+.csv) is an alternative to it, not more records.
        pattern = _published_name_pattern(task.annotation_files[0])
        for path in files:
            match = pattern.match(path.name)
            if match:
                split = match.group(1) if task.split_files else None
                for inst in load_annotations(task.name, path, split=split):
                    by_scene.setdefault(inst.scene_id, []).append({**inst.to_dict(), "split": split})
    for records in by_scene.values():
        records.sort(key=lambda r: (r["task"], str(r["split"]), r["id"]))
    return by_scene


# ----------------------------------------------------------------------------- per scene (Ray task)


def encode_jpeg(color: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(color).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def encode_depth_png(depth_mm: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(depth_mm, dtype=np.uint16)).save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


def build_sample(scene_path: str | Path, cfg: PrepConfig, *, label_map: str | None = None,
                 annotations: list[dict[str, Any]] | None = None, source_digest_hex: str = "",
                 input_digest_hex: str = "", report: dict[str, Any] | None = None) -> dict[str, bytes]:
    """One scene folder → the members of its clip sample (see vidllm.data.shards.format). `report`, if
    given, receives the scene's `warnings` (e.g. no instance annotations) and `dropped_frames`."""
    from vidllm.data.scannet.scans import load_scene

    with load_scene(scene_path, label_map=label_map) as scene:
        if report is not None:
            report["warnings"] = list(scene.warnings)
            report["dropped_frames"] = len(scene.dropped_frame_ids)
        if len(scene.valid_frame_ids) == 0:
            raise DataError(scene.source_path or scene_path,
                            f"no valid frames: all {scene.num_frames} camera poses are invalid (-inf/NaN, "
                            f"all-zero or singular)")
        frame_ids = sample_frame_ids(scene.valid_frame_ids, cfg.frames)
        plan = plan_resize_crop(scene.color_size, cfg.short_side, cfg.patch_multiple)
        intrinsic = adjust_intrinsics(scene.intrinsic_color, plan)
        members: dict[str, bytes] = {}
        poses = []
        for i, frame_id in enumerate(frame_ids):
            color = resize_color(scene.read_color(int(frame_id)), plan)
            depth_m = resample_depth(scene.read_depth(int(frame_id)), scene.intrinsic_depth, intrinsic, plan.out_size)
            depth_mm = np.clip(np.rint(depth_m * DEPTH_SCALE_M), 0, np.iinfo(np.uint16).max).astype(np.uint16)
            members[color_member(i)] = encode_jpeg(color, cfg.jpeg_quality)
            members[depth_member(i)] = encode_depth_png(depth_mm)
            poses.append(scene.pose(int(frame_id)))
        meta = {
            "scene_id": scene.scene_id,
            "source_frame_ids": [int(f) for f in frame_ids],
            "num_source_frames": int(scene.num_frames),
            "dropped_frame_ids": [int(f) for f in scene.dropped_frame_ids],
            "image_size": list(plan.out_size),
            "source_color_size": list(scene.color_size),
            "source_depth_size": list(scene.depth_size),
            "depth_unit_m": 1.0 / DEPTH_SCALE_M,
            "axis_alignment": np.asarray(scene.axis_alignment, np.float64).tolist(),
            "objects": [
                {"object_id": int(o.object_id), "label": o.label,
                 "nyu40_id": None if o.nyu40_id is None else int(o.nyu40_id),
                 "box": [float(v) for v in o.box], "num_vertices": int(o.num_vertices)}
                for o in scene.objects
            ],
            "source_digest": source_digest_hex,
            "input_digest": input_digest_hex,
            "preprocessing": {"frames": cfg.frames, "short_side": cfg.short_side,
                              "patch_multiple": cfg.patch_multiple, "jpeg_quality": cfg.jpeg_quality,
                              "format_version": FORMAT_VERSION},
            "config_digest": config_digest(cfg),
        }
    members["poses.npy"] = _npy_bytes(np.stack(poses).astype(np.float64))
    members["intrinsics.npy"] = _npy_bytes(np.repeat(intrinsic[None], len(frame_ids), axis=0))
    members["meta.json"] = json.dumps(meta, sort_keys=True).encode()
    members["annotations.json"] = json.dumps(annotations or [], sort_keys=True).encode()
    return members


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _process_scene_row(row: dict[str, Any], cfg_json: str, label_map: str | None, cache_dir: str) -> dict[str, Any]:
    """Ray Data map function: never raises, so one bad scene cannot fail the whole job."""
    cfg = PrepConfig.model_validate_json(cfg_json)
    scene_id, scene_uri = row["scene_id"], row["scene_uri"]
    report: dict[str, Any] = {"warnings": [], "dropped_frames": 0}
    try:
        local = scene_uri
        if storage.is_s3(scene_uri):
            local = str(storage.download_tree(scene_uri, Path(cache_dir) / scene_id))
        local_label_map = label_map
        if label_map is not None and storage.is_s3(label_map):
            local_label_map = str(Path(cache_dir) / LABEL_MAP_NAME)
            if not Path(local_label_map).exists():
                storage.write_bytes(local_label_map, storage.read_bytes(label_map))
        members = build_sample(local, cfg, label_map=local_label_map,
                               annotations=json.loads(row["annotations_json"]),
                               source_digest_hex=row["source_digest"], input_digest_hex=row["input_digest"],
                               report=report)
        names = sorted(members)
        error, blobs = "", [members[n] for n in names]
    except Exception as exc:  # reported per scene in the summary; a DataError already names its file
        error = str(exc) if isinstance(exc, DataError) else f"{type(exc).__name__}: {exc}"
        names, blobs = [], []
    # Warnings as JSON text: a column of lists that are all empty would have no Arrow type.
    return {"scene_id": scene_id, "error": error, "names": names, "blobs": blobs,
            "warnings_json": json.dumps(report["warnings"]), "dropped_frames": int(report["dropped_frames"])}


# ----------------------------------------------------------------------------- shard writing


def shard_name(index: int) -> str:
    return f"{SHARD_PREFIX}{index:06d}{SHARD_SUFFIX}"


def _shard_index(name: str) -> int | None:
    match = re.fullmatch(rf"{SHARD_PREFIX}(\d+){re.escape(SHARD_SUFFIX)}", name)
    return int(match.group(1)) if match else None


def _tar_bytes_estimate(members: dict[str, bytes]) -> int:
    return sum(512 + (len(v) + 511) // 512 * 512 for v in members.values())


class ShardWriter:
    """Packs samples into shards; each shard is committed atomically, then listed in the manifest."""

    def __init__(self, out_uri: str, entries: dict[str, ManifestEntry], next_index: int, max_bytes: int,
                 config_digest_hex: str, summary: PrepareSummary):
        self.out_uri = out_uri
        self.entries = entries  # key → entry: the manifest as it will be written
        self.next_index = next_index
        self.max_bytes = max_bytes
        self.config_digest = config_digest_hex
        self.summary = summary
        self.crash_after = int(os.environ.get(CRASH_AFTER_SHARDS_ENV, "0") or 0)
        self._spool_dir = tempfile.mkdtemp(prefix="vidllm-shard-")
        self._open: tuple[Any, Any, Path] | None = None  # (file, TarWriter, path)
        self._pending: list[tuple[str, str, str, int, str]] = []  # key, scene id, digest, frames, input digest
        self._bytes = 0

    def add(self, key: str, scene_id: str, members: dict[str, bytes], frames: int, input_digest: str) -> None:
        import webdataset as wds

        size = _tar_bytes_estimate(members)
        if self._open is not None and self._bytes + size > self.max_bytes:
            self.commit()
        if self._open is None:
            path = Path(self._spool_dir) / shard_name(self.next_index)
            handle = open(path, "wb")
            # Fixed mtime: identical inputs give byte-identical shards.
            self._open = (handle, wds.TarWriter(handle, encoder=False, mtime=0), path)
            self._bytes = 0
        self._open[1].write({"__key__": key, **members})
        self._pending.append((key, scene_id, sample_digest(members), frames, input_digest))
        self._bytes += size

    def commit(self) -> None:
        if self._open is None:
            return
        handle, writer, path = self._open
        writer.close()
        handle.close()
        self._open = None
        spans = _sample_spans(path)
        name = path.name
        shard_bytes = path.stat().st_size
        with open(path, "rb") as src, storage.atomic_output(storage.join(self.out_uri, name)) as out:
            shutil.copyfileobj(src, out, length=8 << 20)
        path.unlink()
        for key, scene_id, digest, frames, input_digest in self._pending:
            offset, size = spans[key]
            self.entries[key] = ManifestEntry(key=key, scene_id=scene_id, shard=name, offset=offset, size=size,
                                              frames=frames, digest=digest, config_digest=self.config_digest,
                                              input_digest=input_digest, shard_bytes=shard_bytes)
        # The shard is in place; only now may the manifest name it.
        write_manifest(self.out_uri, list(self.entries.values()))
        self.summary.shards_written.append(name)
        self.summary.bytes_written += shard_bytes
        self._pending = []
        self.next_index += 1
        if self.crash_after and len(self.summary.shards_written) >= self.crash_after:
            os._exit(17)

    def close(self) -> None:
        if self._open is not None:
            self._open[1].close()
            self._open[0].close()
            self._open = None
        shutil.rmtree(self._spool_dir, ignore_errors=True)


def write_scenes_in_process(scenes: list[tuple[str, str | Path]], annotations_dir: str | Path | None,
                            out_dir: str | Path, cfg: PrepConfig, *, label_map: str | None = None) -> Path:
    """(scene id, scene folder) pairs → shards + manifest in `out_dir`, in this process (no Ray, no
    skip/resume logic): for tests and benchmarks that need shards quickly. Use `prepare_shards` otherwise."""
    out = Path(out_dir)
    by_scene = load_scene_annotations(annotations_dir)
    out.mkdir(parents=True, exist_ok=True)
    writer = ShardWriter(str(out), {}, 0, cfg.shard_max_bytes, config_digest(cfg), PrepareSummary(str(out)))
    try:
        for scene_id, path in scenes:
            members = build_sample(path, cfg, label_map=label_map, annotations=by_scene.get(scene_id, []))
            writer.add(scene_id, scene_id, members, cfg.frames, scene_id)
        writer.commit()
    finally:
        writer.close()
    return out


def _sample_spans(tar_path: Path) -> dict[str, tuple[int, int]]:
    """key → (byte offset of its first member header, bytes up to the end of its last member)."""
    spans: dict[str, list[int]] = {}
    with tarfile.open(tar_path, mode="r:") as tar:
        for info in tar.getmembers():
            key = info.name.split(".", 1)[0]
            end = info.offset_data + (info.size + 511) // 512 * 512
            span = spans.setdefault(key, [info.offset, end])
            span[0], span[1] = min(span[0], info.offset), max(span[1], end)
    return {k: (s[0], s[1] - s[0]) for k, s in spans.items()}


def _clean_orphans(out_uri: str, listed: set[str]) -> None:
    """Remove shards no manifest names and temp files: leftovers of a crashed run."""
    for f in storage.list_files(out_uri):
        if (_shard_index(f.name) is not None and f.name not in listed) or \
                (f.name.startswith(".") and f.name.endswith(".tmp")):
            storage.delete(f.uri)


# ----------------------------------------------------------------------------- Ray


def _ensure_ray(workers: int) -> bool:
    """Connect to RAY_ADDRESS or start a local Ray; returns True if this call started it."""
    # A private local instance unless RAY_ADDRESS is set; only non-secret S3 settings reach the workers.
    return init_ray(num_cpus=workers or os.cpu_count() or 1)


def _run_scenes(rows: list[dict[str, Any]], cfg: PrepConfig, label_map: str | None,
                cache_dir: str) -> Iterator[dict[str, Any]]:
    import ray

    ds = ray.data.from_items(rows, override_num_blocks=len(rows))
    with warnings.catch_warnings():  # copying Ray's DataContext touches its own deprecated fields
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx = ds.context
    ctx.execution_options.preserve_order = True  # shard contents follow scene order: re-runs are identical
    ctx.enable_progress_bars = False  # our own tqdm bar counts scenes
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    ds = ds.map(_process_scene_row,
                fn_kwargs={"cfg_json": cfg.model_dump_json(), "label_map": label_map, "cache_dir": cache_dir},
                compute=ray.data.TaskPoolStrategy(size=min(cfg.workers, len(rows)) or None))
    yield from ds.iter_rows()


def prepare_shards(scannet_uri: str, annotations_dir: str | Path | None, out_uri: str, cfg: PrepConfig, *,
                   label_map: str | None = None, scene_ids: list[str] | None = None, progress: bool = True,
                   cache_dir: str | Path | None = None) -> PrepareSummary:
    """Sample every scene under `scannet_uri` into shards at `out_uri`; see the module docstring.

    scannet_uri: ScanNet `scans/` folder (or its parent), local or s3://.
    annotations_dir: folder with the benchmark annotation files (local or s3://), or None.
    label_map: `scannetv2-labels.combined.tsv`; found next to the scans when not given.
    scene_ids: restrict to these scenes (others already in the manifest are kept).
    """
    start = time.monotonic()
    out_uri = str(out_uri)
    # Scene folders, label map and cache dir go into Ray tasks, which may run with another cwd.
    scannet_uri = absolute_local(scannet_uri)
    label_map = absolute_local(label_map) if label_map else label_map
    summary = PrepareSummary(out_uri=out_uri)
    storage.make_dirs(out_uri)
    cache = Path(absolute_local(cache_dir)) if cache_dir else Path(tempfile.mkdtemp(prefix="vidllm-prepare-cache-"))
    own_cache = cache_dir is None

    try:
        if annotations_dir is not None and storage.is_s3(annotations_dir):
            annotations_dir = storage.download_tree(annotations_dir, cache / "annotations")
        by_scene = load_scene_annotations(annotations_dir)
        scenes = list_scenes(scannet_uri)
        if scene_ids is not None:
            wanted = set(scene_ids)
            scenes = [s for s in scenes if s[0] in wanted]
        label_map = label_map or find_label_map(scannet_uri)
        cfg_digest = config_digest(cfg)

        existing = {e.key: e for e in read_manifest(out_uri)}
        _clean_orphans(out_uri, {e.shard for e in existing.values()})
        used = [_shard_index(e.shard) for e in existing.values()]
        next_index = max([i for i in used if i is not None], default=-1) + 1

        todo: list[dict[str, Any]] = []
        for scene_id, scene_uri in tqdm(scenes, desc="digest inputs", unit="scene", disable=not progress):
            annotations_json = json.dumps(by_scene.get(scene_id, []), sort_keys=True)
            src = source_digest(scene_uri)
            input_digest = hashlib.sha256(f"{src}\0{cfg_digest}\0{annotations_json}".encode()).hexdigest()
            entry = existing.get(scene_id)
            if entry is not None and entry.input_digest == input_digest and entry.config_digest == cfg_digest:
                summary.skipped.append(scene_id)
                continue
            todo.append({"scene_id": scene_id, "scene_uri": scene_uri, "annotations_json": annotations_json,
                         "source_digest": src, "input_digest": input_digest})

        if todo:
            started_ray = _ensure_ray(cfg.workers)
            writer = ShardWriter(out_uri, dict(existing), next_index, cfg.shard_max_bytes, cfg_digest, summary)
            try:
                bar = tqdm(total=len(todo), desc="prepare scenes", unit="scene", disable=not progress)
                inputs = {r["scene_id"]: r for r in todo}
                for result in _run_scenes(todo, cfg, label_map, str(cache)):
                    scene_id = result["scene_id"]
                    summary.frames_dropped += int(result.get("dropped_frames", 0))
                    if warnings := json.loads(result.get("warnings_json") or "[]"):
                        summary.warnings[scene_id] = warnings
                        for warning in warnings:
                            log.warning("prepare: %s: %s", scene_id, warning)
                    if result["error"]:
                        summary.failed[scene_id] = result["error"]
                        bar.write(f"prepare: {scene_id} failed: {result['error']}", file=sys.stderr)
                    else:
                        members = dict(zip(result["names"], result["blobs"]))
                        writer.add(scene_id, scene_id, members, cfg.frames, inputs[scene_id]["input_digest"])
                        summary.ok.append(scene_id)
                        summary.frames_written += cfg.frames
                    bar.update(1)
                writer.commit()
                bar.close()
            finally:
                writer.close()
                if started_ray:
                    import ray

                    ray.shutdown()
    finally:
        if own_cache:
            shutil.rmtree(cache, ignore_errors=True)
    summary.seconds = time.monotonic() - start
    return summary
