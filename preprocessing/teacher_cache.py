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
keys and unchanged ones are never recomputed. Each file is written under a temporary name and
committed atomically (`vidllm.storage.atomic_output`): a key that exists is complete.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from vidllm import storage
from vidllm.config import TeacherConfig
from vidllm.errors import DataError, VidLLMError

# Bump when the way features are computed changes (preprocessing, layer, dtype handling).
FEATURE_CODE_VERSION = 1
TEACHER_ROLES = ("geometry", "semantic")
SUFFIX = ".safetensors"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class TeacherCacheSummary:
    computed: int = 0  # (sample, teacher) feature files written by this run
    reused: int = 0  # already present, skipped
    forward_passes: int = 0  # teacher forward calls (0 when everything was cached)
    samples: int = 0
    cache_uri: str = ""

    def line(self) -> str:
        return (f"teacher cache {self.cache_uri}: {self.samples} samples, {self.computed} computed, "
                f"{self.reused} reused, {self.forward_passes} teacher forward passes")


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
        tmp = out / f".{role}.tmp"
        build().save_pretrained(str(tmp))
        tmp.replace(target)
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


def write_features(uri: str, tensors: dict[str, Tensor], metadata: dict[str, str]) -> None:
    from safetensors.torch import save

    data = save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata)
    with storage.atomic_output(uri) as f:
        f.write(data)


def load_teacher_features(cache_uri: str, key: str) -> dict[str, Any]:
    """One cached feature file → {"patch_tokens": fp16 [S,P,C], ["pooled": fp16 [S,C]], "grid": (h, w), "meta": {...}}."""
    from safetensors.torch import load

    uri = feature_uri(cache_uri, key)
    try:
        data = storage.read_bytes(uri)
    except FileNotFoundError:
        raise DataError(uri, "teacher features not in the cache: run `vidllm teachers` first") from None
    try:
        tensors = load(data)
        # `load` drops the metadata; it sits in the JSON header (8-byte little-endian length first).
        header_len = int.from_bytes(data[:8], "little")
        meta = json.loads(data[8:8 + header_len]).get("__metadata__", {})
    except Exception as exc:
        raise DataError(uri, f"corrupt teacher feature file ({exc})") from None
    if "patch_tokens" not in tensors or "grid" not in meta:
        raise DataError(uri, "teacher feature file lacks patch_tokens or grid metadata")
    grid = tuple(int(v) for v in meta["grid"].split("x"))
    return {**tensors, "grid": grid, "meta": meta}


def feature_keys(cache_uri: str, shards_uri: str, teachers: TeacherConfig) -> dict[str, dict[str, str]]:
    """{sample key: {role: cache key}} for every manifest sample (the cache need not be complete)."""
    from vidllm.data.shards import read_manifest

    specs = {role: teacher_spec(teachers, role) for role in TEACHER_ROLES}
    return {e.key: {role: spec.key(e.digest) for role, spec in specs.items()} for e in read_manifest(shards_uri)}


def build_teacher_cache(shards_uri: str, cache_uri: str, teachers: TeacherConfig,
                        progress: bool = True) -> TeacherCacheSummary:
    """Compute the missing (sample, teacher) features of a shard dataset; present keys are skipped.

    Teachers are loaded only if something is missing, and a sample's frames are decoded only
    if one of its keys is missing, so a warm re-run reads the manifest and lists keys only.
    """
    from tqdm import tqdm

    from vidllm.data.shards import ShardDataset, manifest_uri, read_manifest

    entries = read_manifest(shards_uri)
    if not entries:
        raise DataError(manifest_uri(shards_uri), "no manifest (or an empty one): run `vidllm prepare` first")
    specs = {role: teacher_spec(teachers, role) for role in TEACHER_ROLES}
    summary = TeacherCacheSummary(samples=len(entries), cache_uri=str(cache_uri))
    missing: dict[str, list[str]] = {}  # sample key -> roles to compute
    for e in entries:
        roles = [role for role, spec in specs.items() if not storage.exists(feature_uri(cache_uri, spec.key(e.digest)))]
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
