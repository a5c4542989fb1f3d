"""Content-addressed cache of Stage-1 teacher features (paper §3.4).

Teachers:
- geometry: VGGT's DINO patch embed, a `Dinov2Model` / `Dinov2WithRegistersModel` directory. It
  sees the clip's frames at their stored size (multiples of 14, as VGGT does), so its patch grid
  is the student's.
- semantic: a CLIP vision tower (`CLIPVisionModel` directory). Frames are resized to a square
  `semantic_image_size` with CLIP's normalisation; patch tokens (CLS dropped) and the pooled
  embedding are kept. Its grid is brought onto the student's at training time (`resample_tokens`).

Layout under `cache_uri` (a local folder or `s3://` prefix)::

    <key[:2]>/<key>.safetensors   tensors `patch_tokens` fp16 [S, P, C] (+ `pooled` fp16 [S, C]
                                  for the semantic teacher); metadata: grid, teacher id, sample key

    key = sha256(frame digest, teacher id, weights digest, preprocessing digest, FEATURE_CODE_VERSION)

The frame digest is the sample's content digest from the shard manifest, so new frames get new
keys and unchanged ones are never recomputed. Each file is written under a temporary name
(`.<key>.safetensors.<random>.tmp` beside it) and committed atomically
(`vidllm.artifacts.storage.atomic_output`); temporary files left by a killed run are removed by the next
`build_teacher_cache` on a local cache.

Integrity: the metadata holds `payload_sha256`, a digest of the tensors (`payload_digest`).
Reading a file (`load_teacher_features`, and `build_teacher_cache` for every present key) checks
that it parses, that the digest matches, and that the tensors are finite; a file that fails is a
`DataError` at load time, and `build_teacher_cache` logs it and recomputes it (`repaired`).
Files written before the digest existed are still read (only the finiteness check applies).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from vidllm.artifacts import storage
from vidllm.artifacts.files import atomic_dir
from vidllm.config import TeacherConfig
from vidllm.errors import DataError, VidLLMError

log = logging.getLogger(__name__)

# Bump when the way features are computed changes (preprocessing, layer, dtype handling).
FEATURE_CODE_VERSION = 1
TEACHER_ROLES = ("geometry", "semantic")
SUFFIX = ".safetensors"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DIGEST_KEY = "payload_sha256"  # metadata key of the tensors' digest (`payload_digest`)
# A temporary file younger than this may belong to a build still running: left alone.
TEMP_GRACE_SECONDS = 300.0


@dataclass
class TeacherCacheSummary:
    computed: int = 0  # (sample, teacher) feature files written by this run
    reused: int = 0  # already present, skipped
    forward_passes: int = 0  # teacher forward calls (0 when everything was cached)
    samples: int = 0
    cache_uri: str = ""
    repaired: int = 0  # present but corrupt (truncated, digest mismatch, non-finite): recomputed (in `computed`)
    temp_removed: int = 0  # temporary files of killed runs removed

    def line(self) -> str:
        return (f"teacher cache {self.cache_uri}: {self.samples} samples, {self.computed} computed, "
                f"{self.reused} reused, {self.repaired} repaired, {self.forward_passes} teacher forward passes")


@dataclass(frozen=True)
class TeacherSpec:
    """What identifies one teacher's features: role, model id, weights and preprocessing."""

    role: str  # "geometry" | "semantic"
    teacher_id: str  # model class + architecture summary
    weights_digest: str
    preprocessing: dict[str, Any] = field(default_factory=dict)

    @property
    def preprocessing_digest(self) -> str:
        return hashlib.sha256(json.dumps(self.preprocessing, sort_keys=True).encode()).hexdigest()

    def key(self, frame_digest: str) -> str:
        h = hashlib.sha256()
        for part in (frame_digest, self.teacher_id, self.weights_digest, self.preprocessing_digest,
                     str(FEATURE_CODE_VERSION)):
            h.update(part.encode())
            h.update(b"\0")
        return h.hexdigest()


def feature_uri(cache_uri: str, key: str) -> str:
    return storage.join(cache_uri, key[:2], key + SUFFIX)


# ----------------------------------------------------------------------------- teachers


@lru_cache(maxsize=16)
def _weights_digest_cached(path: str, stamp: tuple) -> str:
    h = hashlib.sha256()
    for name, _, _ in stamp:
        h.update(name.encode())
        with open(Path(path) / name, "rb") as f:
            while chunk := f.read(8 << 20):
                h.update(chunk)
    return h.hexdigest()


def weights_digest(model_dir: str | Path) -> str:
    """sha256 over the weight files of a `save_pretrained` directory (memoised by size and mtime)."""
    root = Path(model_dir)
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
    if not files:
        raise DataError(root, "teacher directory has no weight files (*.safetensors / *.bin)")
    stamp = tuple((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    return _weights_digest_cached(str(root), stamp)


def _teacher_dir(teachers: TeacherConfig, role: str) -> Path:
    path = getattr(teachers, role)
    if path is None:
        raise VidLLMError(f"teachers.{role} is not set: pass --{role}-teacher DIR (or --init-random DIR "
                          "for random tiny teachers)")
    if not Path(path).is_dir():
        raise DataError(path, f"{role} teacher directory not found")
    if not (Path(path) / "config.json").is_file():
        raise DataError(path, f"{role} teacher directory has no config.json (save it with save_pretrained)")
    return Path(path)


def teacher_spec(teachers: TeacherConfig, role: str) -> TeacherSpec:
    """The cache identity of one teacher, from its directory (config + weight bytes)."""
    path = _teacher_dir(teachers, role)
    try:
        config = json.loads((path / "config.json").read_text())
    except json.JSONDecodeError as exc:
        raise DataError(path / "config.json", f"not valid JSON: {exc}") from None
    if role == "semantic":
        config = config.get("vision_config", config)  # a full CLIPModel config also works
    arch = {k: config.get(k) for k in ("model_type", "hidden_size", "num_hidden_layers", "patch_size",
                                        "num_register_tokens")}
    teacher_id = f"{role}:" + json.dumps(arch, sort_keys=True)
    if role == "geometry":
        prep = {"mean": IMAGENET_MEAN, "std": IMAGENET_STD, "size": "native", "output": "last_hidden_state",
                "dtype": teachers.dtype}
    else:
        prep = {"mean": CLIP_MEAN, "std": CLIP_STD, "size": teachers.semantic_image_size, "resize": "bicubic",
                "output": "last_hidden_state[1:] + pooler_output", "dtype": teachers.dtype}
    return TeacherSpec(role, teacher_id, weights_digest(path), prep)


def load_teacher(teachers: TeacherConfig, role: str) -> torch.nn.Module:
    """The teacher model from its local directory, in eval mode."""
    from transformers import CLIPVisionModel, Dinov2Model, Dinov2WithRegistersModel

    path = _teacher_dir(teachers, role)
    if role == "semantic":
        model = CLIPVisionModel.from_pretrained(str(path))
    else:
        config = json.loads((path / "config.json").read_text())
        cls = Dinov2WithRegistersModel if config.get("model_type") == "dinov2_with_registers" else Dinov2Model
        model = cls.from_pretrained(str(path))
    return model.eval()


def init_random_teachers(teachers: TeacherConfig, out_dir: str | Path, seed: int = 0) -> TeacherConfig:
    """Write random-init teachers sized by `teachers.random_*` to `out_dir/{geometry,semantic}`
    (kept if already there) and return the config pointing at them. For tiny/demo runs and tests."""
    from transformers import CLIPVisionConfig, CLIPVisionModel, Dinov2Config, Dinov2Model

    out = Path(out_dir)
    common = dict(hidden_size=teachers.random_hidden_size, num_hidden_layers=teachers.random_num_layers,
                  num_attention_heads=teachers.random_num_heads, patch_size=teachers.random_patch_size)
    builders = {
        "geometry": lambda: Dinov2Model(Dinov2Config(image_size=518, **common)),
        "semantic": lambda: CLIPVisionModel(CLIPVisionConfig(
            image_size=teachers.semantic_image_size, intermediate_size=4 * teachers.random_hidden_size, **common)),
    }
    for role, build in builders.items():
        target = out / role
        if (target / "config.json").is_file():
            continue
        torch.manual_seed(seed + (0 if role == "geometry" else 1))
        with atomic_dir(target) as tmp:
            build().save_pretrained(str(tmp))
    return teachers.model_copy(update={"geometry": str(out / "geometry"), "semantic": str(out / "semantic")})


# ----------------------------------------------------------------------------- features


@torch.no_grad()
def geometry_features(model: torch.nn.Module, images: Tensor, frames_per_batch: int) -> dict[str, Tensor]:
    """images `[S, 3, H, W]` in [0, 1] → patch_tokens `[S, P, C]` fp16, P = (H/p)(W/p)."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    prefix = 1 + int(getattr(model.config, "num_register_tokens", 0) or 0)
    chunks = []
    for start in range(0, images.shape[0], frames_per_batch):
        pixels = (images[start:start + frames_per_batch] - mean) / std
        chunks.append(model(pixel_values=pixels).last_hidden_state[:, prefix:])
    return {"patch_tokens": torch.cat(chunks).half()}


@torch.no_grad()
def semantic_features(model: torch.nn.Module, images: Tensor, size: int, frames_per_batch: int) -> dict[str, Tensor]:
    """images `[S, 3, H, W]` in [0, 1] → patch_tokens `[S, (size/p)², C]` and pooled `[S, C]`, fp16."""
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    patches, pooled = [], []
    for start in range(0, images.shape[0], frames_per_batch):
        frames = F.interpolate(images[start:start + frames_per_batch], size=(size, size), mode="bicubic",
                               align_corners=False).clamp(0, 1)
        out = model(pixel_values=(frames - mean) / std)
        patches.append(out.last_hidden_state[:, 1:])
        pooled.append(out.pooler_output)
    return {"patch_tokens": torch.cat(patches).half(), "pooled": torch.cat(pooled).half()}


def payload_digest(tensors: dict[str, Tensor]) -> str:
    """sha256 over the tensors (name, dtype, shape and bytes, by name), independent of the file layout."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


def write_features(uri: str, tensors: dict[str, Tensor], metadata: dict[str, str]) -> None:
    """Write one feature file atomically, its tensors' digest in the metadata (`DIGEST_KEY`)."""
    from safetensors.torch import save

    tensors = {k: v.contiguous() for k, v in tensors.items()}
    data = save(tensors, metadata={**metadata, DIGEST_KEY: payload_digest(tensors)})
    with storage.atomic_output(uri) as f:
        f.write(data)


def _parse_features(uri: str, data: bytes) -> dict[str, Any]:
    """Parse and verify one feature file's bytes; DataError naming `uri` if it is corrupt: unparsable
    (e.g. truncated), digest mismatch (files without a digest skip that check), non-finite values."""
    from safetensors.torch import load

    try:
        tensors = load(data)
        # `load` drops the metadata; it sits in the JSON header (8-byte little-endian length first).
        header_len = int.from_bytes(data[:8], "little")
        meta = json.loads(data[8:8 + header_len]).get("__metadata__", {}) or {}
    except Exception as exc:
        raise DataError(uri, f"corrupt teacher feature file ({exc})") from None
    if "patch_tokens" not in tensors or "grid" not in meta:
        raise DataError(uri, "teacher feature file lacks patch_tokens or grid metadata")
    expected = meta.get(DIGEST_KEY)
    if expected is not None and payload_digest(tensors) != expected:
        raise DataError(uri, "corrupt teacher feature file (tensor digest mismatch)")
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise DataError(uri, f"corrupt teacher feature file (non-finite values in '{name}')")
    try:
        grid = tuple(int(v) for v in meta["grid"].split("x"))
    except ValueError:
        raise DataError(uri, f"corrupt teacher feature file (bad grid {meta['grid']!r})") from None
    return {**tensors, "grid": grid, "meta": meta}


def load_teacher_features(cache_uri: str, key: str) -> dict[str, Any]:
    """One cached feature file → {"patch_tokens": fp16 [S,P,C], ["pooled": fp16 [S,C]], "grid": (h, w), "meta": {...}}.

    DataError naming the file if it is missing or corrupt (`_parse_features`); rebuild it with
    `vidllm teachers` (`build_teacher_cache` recomputes corrupt entries)."""
    uri = feature_uri(cache_uri, key)
    try:
        data = storage.read_bytes(uri)
    except FileNotFoundError:
        raise DataError(uri, "teacher features not in the cache: run `vidllm teachers` first") from None
    return _parse_features(uri, data)


def _intact(uri: str) -> bool:
    """Whether the feature file at `uri` exists and verifies; a corrupt one is logged (warning)."""
    try:
        data = storage.read_bytes(uri)
    except FileNotFoundError:
        return False
    try:
        _parse_features(uri, data)
    except DataError as exc:
        log.warning("%s; recomputing it", exc)
        raise
    return True


def remove_stale_temp_files(cache_uri: str, grace_seconds: float = TEMP_GRACE_SECONDS) -> int:
    """Delete the temporary files (`.<key>.safetensors.*.tmp`) that killed runs left in a local
    cache, if older than `grace_seconds` (younger ones may be a running build's). Returns the count."""
    if storage.is_s3(str(cache_uri)) or not Path(cache_uri).is_dir():
        return 0
    removed = 0
    now = time.time()
    for tmp in Path(cache_uri).glob(f"*/.*{SUFFIX}.*.tmp"):
        try:
            if now - tmp.stat().st_mtime < grace_seconds:
                continue
            tmp.unlink()
        except FileNotFoundError:
            continue
        log.warning("%s: removed a temporary file left by an interrupted teacher-cache build", tmp)
        removed += 1
    return removed


def feature_keys(cache_uri: str, shards_uri: str, teachers: TeacherConfig) -> dict[str, dict[str, str]]:
    """{sample key: {role: cache key}} for every manifest sample (the cache need not be complete)."""
    from vidllm.data.shards.format import read_manifest

    specs = {role: teacher_spec(teachers, role) for role in TEACHER_ROLES}
    return {e.key: {role: spec.key(e.digest) for role, spec in specs.items()} for e in read_manifest(shards_uri)}


def build_teacher_cache(shards_uri: str, cache_uri: str, teachers: TeacherConfig,
                        progress: bool = True, verify: bool = True) -> TeacherCacheSummary:
    """Compute the missing (sample, teacher) features of a shard dataset; present keys are skipped.

    Present files are read and verified first (`_parse_features`): a corrupt one (truncated,
    digest mismatch, non-finite) is logged and recomputed (`summary.repaired`). Temporary files
    of killed runs are removed first (local caches). `verify=False` only checks that keys exist
    (a warm re-run then lists keys only, reading no file). Teachers are loaded only if something
    is missing, and a sample's frames are decoded only if one of its keys is missing.
    """
    from tqdm import tqdm

    from vidllm.data.shards.format import ShardDataset, manifest_uri, read_manifest

    entries = read_manifest(shards_uri)
    if not entries:
        raise DataError(manifest_uri(shards_uri), "no manifest (or an empty one): run `vidllm prepare` first")
    specs = {role: teacher_spec(teachers, role) for role in TEACHER_ROLES}
    summary = TeacherCacheSummary(samples=len(entries), cache_uri=str(cache_uri))
    summary.temp_removed = remove_stale_temp_files(cache_uri)
    missing: dict[str, list[str]] = {}  # sample key -> roles to compute
    for e in entries:
        roles = []
        for role, spec in specs.items():
            try:
                uri = feature_uri(cache_uri, spec.key(e.digest))
                present = _intact(uri) if verify else storage.exists(uri)
            except DataError:
                summary.repaired += 1
                present = False
            if not present:
                roles.append(role)
        summary.reused += len(TEACHER_ROLES) - len(roles)
        if roles:
            missing[e.key] = roles
    if not missing:
        return summary
    digests = {e.key: e.digest for e in entries}
    models = {role: load_teacher(teachers, role) for role in TEACHER_ROLES if any(role in r for r in missing.values())}
    bar = tqdm(total=len(missing), desc="teacher features", unit="clip", disable=not progress)
    try:
        for sample in ShardDataset(shards_uri):
            roles = missing.get(sample["key"])
            if not roles:
                continue
            images = sample["images"].float()  # [S, 3, H, W] in [0, 1]
            for role in roles:
                spec = specs[role]
                if role == "geometry":
                    feats = geometry_features(models[role], images, teachers.frames_per_batch)
                    patch = int(models[role].config.patch_size)
                    grid = (images.shape[-2] // patch, images.shape[-1] // patch)
                else:
                    feats = semantic_features(models[role], images, teachers.semantic_image_size,
                                              teachers.frames_per_batch)
                    side = teachers.semantic_image_size // int(models[role].config.patch_size)
                    grid = (side, side)
                summary.forward_passes += -(-images.shape[0] // teachers.frames_per_batch)
                if feats["patch_tokens"].shape[1] != grid[0] * grid[1]:
                    raise DataError(f"{shards_uri}:{sample['key']}", f"{role} teacher gave "
                                    f"{feats['patch_tokens'].shape[1]} tokens, expected a {grid[0]}x{grid[1]} grid")
                if not all(bool(torch.isfinite(v).all()) for v in feats.values()):
                    # Never cache these: a load would refuse them and every build would recompute them.
                    raise DataError(f"{shards_uri}:{sample['key']}", f"{role} teacher gave non-finite features "
                                    f"(fp16 overflow? check the teacher weights and teachers.dtype)")
                write_features(feature_uri(cache_uri, spec.key(digests[sample["key"]])), feats, {
                    "grid": f"{grid[0]}x{grid[1]}", "teacher_id": spec.teacher_id, "role": role,
                    "sample_key": sample["key"], "frame_digest": digests[sample["key"]],
                    "preprocessing": json.dumps(spec.preprocessing, sort_keys=True),
                    "feature_code_version": str(FEATURE_CODE_VERSION),
                })
                summary.computed += 1
            bar.update(1)
    finally:
        bar.close()
    return summary
