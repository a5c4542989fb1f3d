"""Miniature foundation models, saved in the formats the real ones come in.

The paper starts from pretrained VGGT (geometry), DINOv2 and CLIP (semantics). Without those
weights, `pretrain_teachers(cfg, out_dir)` trains small versions on a synthetic corpus of its own
(`vidllm.data.synthetic.generate`, seed `data.synth.seed + teachers.pretrain.seed_offset`, so none of its
scenes is a benchmark scene) and writes

    out_dir/vggt.safetensors   a VGGT-format checkpoint (VGGT key names, `to_vggt_state_dict`) of the
                               model's own encoder + reconstruction branch trained on RGB-D + poses
                               with the VGGT-style camera / depth / point losses; with
                               teachers.pretrain.dino_steps the encoder first learns per-patch
                               object class and colour (a miniature DINOv2: VGGT's patch embed
                               starts from DINOv2, whose patch tokens carry semantics)
    out_dir/geometry/          its DINO patch embed as a Dinov2 directory (`export_vggt_dino`, as
                               `vidllm vggt-dino` does with real VGGT weights): teachers.geometry
    out_dir/semantic/          a CLIPVisionModel trained with per-patch object-class and colour heads
                               (labels ray-cast from the scene geometry): teachers.semantic
    out_dir/manifest.json      paths, the digest of the config parts that determine them, metrics

Use them as the real ones: `model.init.vggt=out_dir/vggt.safetensors`,
`teachers.geometry=out_dir/geometry`, `teachers.semantic=out_dir/semantic`.

Every output is written under a temporary name and renamed into place, the manifest last; a
second call with the same config and intact outputs returns the manifest (`reused: true`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vidllm.artifacts.files import atomic_file, commit_dir
from vidllm.config import ConfigError, VidLLMConfig
from vidllm.data.synthetic.generate import RENDER_VERSION

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "vidllm-pretrained-teachers"
CODE_VERSION = 2  # 2: compact corpus (uint8 frames, float16 CLIP inputs)
VGGT_NAME, GEOMETRY_NAME, SEMANTIC_NAME = "vggt.safetensors", "geometry", "semantic"
HELDOUT_FRACTION = 0.2
IGNORE = -100


# ----------------------------------------------------------------------------- corpus


@dataclass
class CorpusScene:
    scene_id: str
    # Compact dtypes, converted per batch: a corpus of hundreds of scenes is held in memory.
    images: Tensor  # [F, 3, H, W] uint8 RGB
    depth: Tensor  # [F, H, W] float32 metres, 0 = none
    poses: Tensor  # [F, 4, 4] camera → scan world
    intrinsics: Tensor  # [3, 3] of the H x W frames
    axis_alignment: Tensor  # [4, 4]
    classes: Tensor  # [F, H, W] int16 index into class_names()
    colors: Tensor  # [F, H, W] int16 index into color_names(), IGNORE on room surfaces


def class_names() -> list[str]:
    from vidllm.data.synthetic.room_layout import CATEGORIES, ROOM_CATEGORIES

    return [*CATEGORIES, *ROOM_CATEGORIES]


def color_names() -> list[str]:
    from vidllm.data.synthetic.room_layout import COLORS

    return list(COLORS)


def pretrain_synth_config(cfg: VidLLMConfig):
    """The pretraining corpus: the recipe's frame size and room statistics, its own seed."""
    pt = cfg.teachers.pretrain
    return cfg.data.synth.model_copy(update={
        "scenes": pt.scenes, "frames": pt.frames, "seed": cfg.data.synth.seed + pt.seed_offset,
        "invalid_pose_fraction": 0.0, "clip_frames": pt.frames, "val_fraction": HELDOUT_FRACTION})


def _pixel_labels(synth_scene, camera_to_aligned: np.ndarray, intrinsic: np.ndarray,
                  size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel class and colour ids of one frame, ray-cast from the scene's boxes on the
    network input's own grid (so they line up with the resized, cropped frame exactly)."""
    from vidllm.data.synthetic.raycast import ROOM_FACES, cast_view

    names, colors = class_names(), color_names()
    objects = synth_scene.objects
    boxes = np.array([o.box for o in objects], dtype=np.float32).reshape(-1, 6)
    lo, hi = boxes[:, :3] - boxes[:, 3:] / 2, boxes[:, :3] + boxes[:, 3:] / 2
    hits = cast_view(camera_to_aligned, intrinsic, size[0], size[1], np.zeros(3, np.float32),
                     synth_scene.room_size.astype(np.float32), lo, hi)
    face_class = [names.index("floor" if f == "floor" else "ceiling" if f == "ceiling" else "wall") for f in ROOM_FACES]
    surface_class = np.array([names.index(o.label) for o in objects] + face_class, dtype=np.int64)
    surface_color = np.array([colors.index(o.color_name) for o in objects] + [IGNORE] * len(ROOM_FACES),
                             dtype=np.int64)
    surface = hits.surface.astype(np.int64)
    return surface_class[surface], surface_color[surface]


def build_corpus(cfg: VidLLMConfig, work_dir: Path, progress: bool = True) -> list[CorpusScene]:
    """Generate the pretraining scenes (ScanNet format, under `work_dir`) and read them back with
    the ScanNet reader, resized and cropped as `prepare` does (data.prep.short_side)."""
    from tqdm import tqdm

    from vidllm.data.frames import adjust_intrinsics, plan_resize_crop, resample_depth, resize_color
    from vidllm.data.scannet.scans import load_scene
    from vidllm.data.synthetic.generate import generate_scene, split_scene_ids

    synth_cfg = pretrain_synth_config(cfg)
    scan_dir = work_dir / "scans"
    splits = split_scene_ids(synth_cfg.scenes, synth_cfg.val_fraction)
    corpus = []
    for index in tqdm(range(synth_cfg.scenes), desc="pretraining scenes", unit="scene", disable=not progress):
        synth = generate_scene(index, scan_dir, synth_cfg, splits[index], keep_depths=False)
        with load_scene(synth.path) as scene:
            plan = plan_resize_crop(scene.color_size, cfg.data.prep.short_side, cfg.data.prep.patch_multiple)
            k = adjust_intrinsics(scene.intrinsic_color, plan)
            images, depths, poses, classes, colors = [], [], [], [], []
            for frame_id in scene.valid_frame_ids:
                images.append(resize_color(scene.read_color(int(frame_id)), plan))
                depths.append(resample_depth(scene.read_depth(int(frame_id)), scene.intrinsic_depth, k, plan.out_size))
                pose = scene.pose(int(frame_id))
                poses.append(pose)
                cls, col = _pixel_labels(synth, scene.axis_alignment @ pose, k, plan.out_size)
                classes.append(cls)
                colors.append(col)
            corpus.append(CorpusScene(
                scene_id=scene.scene_id,
                images=torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(),
                depth=torch.from_numpy(np.stack(depths).astype(np.float32)),
                poses=torch.from_numpy(np.stack(poses)).float(),
                intrinsics=torch.from_numpy(k).float(),
                axis_alignment=torch.from_numpy(np.asarray(scene.axis_alignment)).float(),
                classes=torch.from_numpy(np.stack(classes).astype(np.int16)),
                colors=torch.from_numpy(np.stack(colors).astype(np.int16))))
    return corpus


def split_corpus(corpus: list[CorpusScene]) -> tuple[list[CorpusScene], list[CorpusScene]]:
    """(train, held out): the last ~20% of the scenes (at least one) are held out."""
    held = max(1, round(HELDOUT_FRACTION * len(corpus)))
    return corpus[:-held], corpus[-held:]


# ----------------------------------------------------------------------------- miniature VGGT


def _vggt_modules(cfg: VidLLMConfig) -> tuple[nn.Module, nn.Module]:
    """(encoder, reconstruction branch) sized by cfg.model, without the metric depth model
    (VGGT has none): the parts a VGGT checkpoint holds."""
    from vidllm.models.encoder import SharedEncoder
    from vidllm.models.reconstruction import ReconstructionBranch

    model_cfg = cfg.model
    if model_cfg.encoder.hidden_size != model_cfg.aggregator.embed_dim:
        raise ConfigError(f"a VGGT checkpoint needs model.encoder.hidden_size ({model_cfg.encoder.hidden_size}) = "
                          f"model.aggregator.embed_dim ({model_cfg.aggregator.embed_dim}): VGGT has no input "
                          "projection")
    encoder = SharedEncoder(model_cfg.encoder.model_copy(update={"pretrained": None}))
    no_md = model_cfg.model_copy(update={"metric_depth": model_cfg.metric_depth.model_copy(update={"enabled": False})})
    return encoder, ReconstructionBranch(no_md, encoder.hidden_size)


def _clip_batch(scenes: list[CorpusScene], frame_ids: list[list[int]]) -> dict[str, Tensor]:
    return {
        "images": torch.stack([s.images[f] for s, f in zip(scenes, frame_ids)]).float() / 255.0,
        "depth": torch.stack([s.depth[f] for s, f in zip(scenes, frame_ids)]),
        "poses": torch.stack([s.poses[f] for s, f in zip(scenes, frame_ids)]),
        "intrinsics": torch.stack([s.intrinsics.expand(len(f), 3, 3) for s, f in zip(scenes, frame_ids)]),
        "axis_alignment": torch.stack([s.axis_alignment for s in scenes]),
    }


def _vggt_forward(encoder: nn.Module, recon: nn.Module, batch: dict[str, Tensor], with_points: bool) -> dict:
    tokens = encoder(batch["images"])
    return recon(tokens, batch["images"], tokens, with_points=with_points)


def _vggt_loss(out: dict, batch: dict[str, Tensor], weights) -> tuple[Tensor, dict[str, float]]:
    from vidllm.losses.recon import camera_loss, depth_loss, point_loss, reconstruction_targets

    images = batch["images"]
    targets = reconstruction_targets(batch["poses"], batch["intrinsics"], batch["depth"], batch["axis_alignment"],
                                     tuple(images.shape[-2:]))
    mask = targets["valid_mask"] & targets["sequence_valid"].view(-1, 1, 1, 1)
    cam = camera_loss(out["pose_enc_list"], targets["pose_enc"], gamma=weights.camera_gamma,
                      loss_type=weights.camera_loss_type, sequence_valid=targets["sequence_valid"])
    dep = depth_loss(out["depth"], out["depth_conf"], targets["depth"], mask, alpha=weights.conf_alpha,
                     grad_weight=weights.grad_weight, valid_range=weights.valid_range)
    total = weights.camera * cam["total"] + weights.depth * dep["total"]
    terms = {"camera": float(cam["total"].detach()), "depth": float(dep["total"].detach())}
    if "world_points" in out:
        pts = point_loss(out["world_points"], out["world_points_conf"], targets["points"], mask,
                         alpha=weights.conf_alpha, grad_weight=weights.grad_weight, valid_range=weights.valid_range)
        total = total + weights.point * pts["total"]
        terms["point"] = float(pts["total"].detach())
    return total, terms


def _lr_lambda(steps: int):
    warmup = max(1, steps // 20)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    return factor


@torch.no_grad()
def vggt_heldout_scores(encoder: nn.Module, recon: nn.Module, scenes: list[CorpusScene], frames: int) -> dict[str, float]:
    """Held-out scores of a miniature VGGT on an evenly spaced clip of `frames` per scene.

    Depth: δ1 (share of valid pixels with max(pred/gt, gt/pred) < 1.25) and AbsRel of the relative
    depth after per-scene median scale alignment. Cameras: RRA@15, RTA@15 and AUC@30 over every
    frame pair (`vidllm.eval.geometry_metrics.pose_metrics`, scale-free as for Co3Dv2)."""
    from vidllm.data.frames import sample_frame_ids
    from vidllm.eval.geometry_metrics import pose_errors, pose_auc
    from vidllm.geometry import pose_encoding_to_extri_intri, se3_inverse, to_homogeneous

    encoder.eval(), recon.eval()
    hits = total = 0
    abs_rel = 0.0
    rot_errors, trans_errors = [], []
    for scene in scenes:
        ids = [int(i) for i in sample_frame_ids(np.arange(len(scene.images)), frames)]
        batch = _clip_batch([scene], [ids])
        with torch.no_grad():
            out = _vggt_forward(encoder, recon, batch, with_points=False)
        pred, gt = out["depth"][0], batch["depth"][0]
        valid = gt > 0
        scale = gt[valid].median() / pred[valid].median().clamp_min(1e-8)
        p, g = pred[valid] * scale, gt[valid]
        ratio = torch.maximum(p / g, g / p.clamp_min(1e-8))
        hits += int((ratio < 1.25).sum())
        total += int(valid.sum())
        abs_rel += float(((p - g).abs() / g).sum())
        extrinsics, _ = pose_encoding_to_extri_intri(out["pose_enc"][0].float(), tuple(batch["images"].shape[-2:]))
        pred_c2w = se3_inverse(to_homogeneous(extrinsics)).double().numpy()
        rot, trans = pose_errors(pred_c2w, batch["poses"][0].double().numpy())
        rot_errors.append(rot), trans_errors.append(trans)
    rot, trans = np.concatenate(rot_errors), np.concatenate(trans_errors)
    return {"delta1": hits / max(1, total), "abs_rel": abs_rel / max(1, total),
            "pose_rra15": float((rot < 15).mean()), "pose_rta15": float((trans < 15).mean()),
            "pose_auc30": pose_auc(rot, trans, 30)}


def train_vggt(cfg: VidLLMConfig, train: list[CorpusScene], progress: bool = True,
               encoder_init: nn.Module | None = None) -> tuple[nn.Module, nn.Module, dict]:
    """The miniature VGGT (encoder + reconstruction branch) trained with VGGT's camera / depth /
    point losses; the encoder starts from `encoder_init` (the miniature DINOv2) when given."""
    from tqdm import tqdm

    from vidllm.losses.stage2 import Stage2LossWeights

    pt = cfg.teachers.pretrain
    weights = Stage2LossWeights.from_mapping(cfg.train.loss_weights)
    torch.manual_seed(cfg.train.seed)
    encoder, recon = _vggt_modules(cfg)
    if encoder_init is not None:
        encoder.load_state_dict(encoder_init.state_dict())
    with_points = recon.point_head is not None and weights.point > 0
    encoder_params = [p for p in encoder.parameters() if p.requires_grad]
    recon_params = [p for p in recon.parameters() if p.requires_grad]
    params = encoder_params + recon_params
    # A pretrained (DINOv2-stage) encoder is fine-tuned more gently than the new heads.
    encoder_lr = pt.lr * (pt.vggt_encoder_lr_scale if encoder_init is not None else 1.0)
    opt = torch.optim.AdamW([{"params": encoder_params, "lr": encoder_lr}, {"params": recon_params, "lr": pt.lr}],
                            lr=pt.lr, weight_decay=cfg.train.weight_decay, betas=tuple(cfg.train.betas))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(pt.vggt_steps))
    rng = np.random.default_rng([cfg.train.seed, 17])
    frames = pt.clip_frames or cfg.model.frames
    encoder.train(), recon.train()
    start, last = time.perf_counter(), {}
    bar = tqdm(range(pt.vggt_steps), desc="mini VGGT", unit="step", disable=not progress)
    for step in bar:
        picks = [train[int(i)] for i in rng.integers(0, len(train), pt.batch_size)]
        ids = [sorted(int(i) for i in rng.choice(len(s.images), size=frames, replace=len(s.images) < frames))
               for s in picks]
        batch = _clip_batch(picks, ids)
        out = _vggt_forward(encoder, recon, batch, with_points)
        loss, terms = _vggt_loss(out, batch, weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.train.grad_clip)
        opt.step()
        sched.step()
        last = {"loss": float(loss.detach()), **terms}
        rate = (step + 1) * pt.batch_size / (time.perf_counter() - start)
        bar.set_postfix(loss=f"{last['loss']:.3f}", clips_per_s=f"{rate:.2f}")
        if (step + 1) % pt.log_every == 0 or step + 1 == pt.vggt_steps:
            log.info("mini VGGT step %d/%d loss %.4f (%s) %.2f clips/s", step + 1, pt.vggt_steps, last["loss"],
                     ", ".join(f"{k} {v:.3f}" for k, v in terms.items()), rate)
    bar.close()
    return encoder, recon, last


def save_vggt(encoder: nn.Module, recon: nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    from vidllm.models.convert import to_vggt_state_dict

    sd = to_vggt_state_dict({"encoder": encoder, "reconstruction": recon})
    save_file(sd, str(path), metadata={"format": "pt", "source": "vidllm pretrain-teachers (miniature VGGT)"})


# ----------------------------------------------------------------------------- miniature CLIP


def _clip_config(cfg: VidLLMConfig):
    from transformers import CLIPVisionConfig

    t = cfg.teachers  # sized exactly as `init_random_teachers` sizes the random semantic teacher
    return CLIPVisionConfig(image_size=t.semantic_image_size, intermediate_size=4 * t.random_hidden_size,
                            hidden_size=t.random_hidden_size, num_hidden_layers=t.random_num_layers,
                            num_attention_heads=t.random_num_heads, patch_size=t.random_patch_size)


def _grid_labels(labels: Tensor, patch: int, num_classes: int) -> Tensor:
    """[N, H, W] per-pixel ids (IGNORE allowed) → [N, (H/p)·(W/p)] majority id per patch, row-major
    (IGNORE where no pixel has a label)."""
    known = labels != IGNORE
    onehot = F.one_hot(torch.where(known, labels, 0), num_classes).float() * known[..., None]
    counts = F.avg_pool2d(onehot.permute(0, 3, 1, 2), patch, patch)  # [N, K, h, w]
    best = counts.argmax(1).flatten(1)
    return torch.where(counts.amax(1).flatten(1) > 0, best, torch.full_like(best, IGNORE))


def _patch_labels(labels: Tensor, size: int, patch: int, num_classes: int) -> Tensor:
    """[N, H, W] per-pixel ids → [N, (size/p)²] majority id per patch of the square-resized frame."""
    square = F.interpolate(labels[:, None].float(), size=(size, size), mode="nearest")[:, 0].long()
    return _grid_labels(square, patch, num_classes)


def _on_furniture(classes: Tensor, labels: Tensor) -> Tensor:
    """`labels` where `classes` is furniture, IGNORE on room surfaces (the last three classes: they
    have no colour, and the questions ask about furniture)."""
    return torch.where(classes < len(class_names()) - 3, labels, torch.full_like(labels, IGNORE))


def _as_float(pixels: Tensor) -> Tensor:
    """Stored frames (uint8 RGB, or float16 CLIP inputs) → float32 network inputs."""
    return pixels.float() / 255.0 if pixels.dtype == torch.uint8 else pixels.float()


def _semantic_set(scenes: list[CorpusScene], size: int, patch: int) -> dict[str, Tensor]:
    """CLIP inputs (resized and normalised exactly as `semantic_features` does; stored as float16,
    converted per batch) with patch labels. Built scene by scene: the per-pixel one-hot of a whole
    corpus at once would not fit in memory."""
    from vidllm.data.teacher_cache import CLIP_MEAN, CLIP_STD

    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    pixels, classes, colors = [], [], []
    for scene in scenes:
        frames = F.interpolate(scene.images.float() / 255.0, size=(size, size), mode="bicubic",
                               align_corners=False).clamp(0, 1)
        pixels.append(((frames - mean) / std).half())
        classes.append(_patch_labels(scene.classes.long(), size, patch, len(class_names())))
        colors.append(_patch_labels(scene.colors.long(), size, patch, len(color_names())))
    classes_t = torch.cat(classes)
    return {"pixels": torch.cat(pixels), "classes": classes_t, "colors": _on_furniture(classes_t, torch.cat(colors))}


def _encoder_set(scenes: list[CorpusScene], patch: int) -> dict[str, Tensor]:
    """The encoder's own inputs (uint8 frames at the corpus size, as VGGT sees them) with labels on
    its patch grid."""
    classes = torch.cat([_grid_labels(s.classes.long(), patch, len(class_names())) for s in scenes])
    colors = torch.cat([_grid_labels(s.colors.long(), patch, len(color_names())) for s in scenes])
    return {"pixels": torch.cat([s.images for s in scenes]), "classes": classes,
            "colors": _on_furniture(classes, colors)}


def _accuracy(logits: Tensor, labels: Tensor) -> float:
    known = labels != IGNORE
    return float((logits.argmax(-1)[known] == labels[known]).float().mean()) if known.any() else float("nan")


@torch.no_grad()
def _tokens_in_chunks(module: nn.Module, tokens_of, pixels: Tensor, chunk: int = 64) -> Tensor:
    module.eval()
    return torch.cat([tokens_of(_as_float(pixels[i:i + chunk])) for i in range(0, len(pixels), chunk)])


def _clip_tokens(model: nn.Module, pixels: Tensor) -> Tensor:
    return model(pixel_values=pixels).last_hidden_state[:, 1:]  # without CLS


def _features(model: nn.Module, pixels: Tensor) -> Tensor:
    """The CLIP's patch tokens [N, P, C] of stored CLIP inputs."""
    return _tokens_in_chunks(model, lambda px: _clip_tokens(model, px), pixels)


def linear_probe(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, steps: int, seed: int) -> float:
    """Held-out accuracy of a linear classifier on frozen (standardised) patch features."""
    x, y = train_x.reshape(-1, train_x.shape[-1]), train_y.reshape(-1)
    keep = y != IGNORE
    x, y = x[keep], y[keep]
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    torch.manual_seed(seed)
    probe = nn.Linear(x.shape[-1], int(max(y.max(), test_y.max())) + 1)
    opt = torch.optim.Adam(probe.parameters(), lr=1e-2)
    xs = (x - mean) / std
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(probe(xs), y).backward()
        opt.step()
    with torch.no_grad():
        tx = (test_x.reshape(-1, test_x.shape[-1]) - mean) / std
        return _accuracy(probe(tx), test_y.reshape(-1))


@torch.no_grad()
def clip_head_scores(heads: nn.Module, tokens: Tensor, test_set: dict[str, Tensor]) -> dict[str, float]:
    """Held-out accuracies of the CLIP's class and colour heads on `tokens` [N, P, C] of `test_set`.

    Also on furniture patches only (walls and floor are most patches and easy; the questions ask
    about furniture), plainly and balanced (the mean of per-class recalls, so always answering
    the commonest class scores 1/classes), each with its chance level.
    """
    class_logits = heads["class"](tokens)
    furniture_labels = _on_furniture(test_set["classes"], test_set["classes"])
    known_furniture = furniture_labels[furniture_labels != IGNORE]
    predicted = class_logits.argmax(-1)[furniture_labels != IGNORE]
    present = known_furniture.unique()
    balanced = float(sum((predicted[known_furniture == c] == c).float().mean() for c in present)) / max(1, len(present))
    return {
        "clip_class_head_accuracy": _accuracy(class_logits, test_set["classes"]),
        "clip_color_head_accuracy": _accuracy(heads["color"](tokens), test_set["colors"]),
        "clip_furniture_class_accuracy": _accuracy(class_logits, furniture_labels),
        "furniture_class_chance_accuracy": float(torch.bincount(known_furniture).max() / max(1, known_furniture.numel())),
        "clip_furniture_balanced_accuracy": balanced,
        "furniture_balanced_chance_accuracy": 1.0 / max(1, len(present)),
    }


def _class_weights(classes: Tensor, num_classes: int, power: float) -> Tensor | None:
    """Per-class loss weights ∝ frequency^-power, scaled so a labelled patch weighs 1 on average."""
    if power == 0:
        return None
    counts = torch.bincount(classes[classes != IGNORE], minlength=num_classes).float()
    weight = torch.where(counts > 0, counts.clamp_min(1) ** -power, torch.zeros_like(counts))
    return weight * counts.sum() / (weight * counts).sum().clamp_min(1e-12)


def _train_patch_heads(name: str, tokens_of, modules: list[nn.Module], hidden: int, train_set: dict[str, Tensor],
                       grid: tuple[int, int], steps: int, seed: int, cfg: VidLLMConfig,
                       progress: bool) -> tuple[nn.Module, dict[str, float]]:
    """Train `modules` and per-patch class + colour heads on `train_set` (labels on the `grid` of
    the tokens `tokens_of(pixels)` returns, [N, P, hidden]). Returns (heads, last losses)."""
    from tqdm import tqdm

    pt = cfg.teachers.pretrain
    heads = nn.ModuleDict({"class": nn.Linear(hidden, len(class_names())), "color": nn.Linear(hidden, len(color_names()))})
    params = [p for m in modules for p in m.parameters() if p.requires_grad] + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=pt.lr, weight_decay=cfg.train.weight_decay, betas=tuple(cfg.train.betas))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(steps))
    gen = torch.Generator().manual_seed(seed)
    batch_size = pt.batch_size * cfg.model.frames
    n = len(train_set["pixels"])
    class_weight = _class_weights(train_set["classes"], len(class_names()), pt.class_balance)
    for module in modules:
        module.train()
    start, last = time.perf_counter(), {}
    bar = tqdm(range(steps), desc=name, unit="step", disable=not progress)
    for step in bar:
        idx = torch.randint(0, n, (min(batch_size, n),), generator=gen)
        pixels, classes, colors = (train_set[k][idx] for k in ("pixels", "classes", "colors"))
        pixels = _as_float(pixels)
        if torch.rand((), generator=gen) < 0.5:  # horizontal flip, labels with it
            pixels = pixels.flip(-1)
            classes = classes.view(-1, *grid).flip(-1).reshape(len(idx), -1)
            colors = colors.view(-1, *grid).flip(-1).reshape(len(idx), -1)
        tokens = tokens_of(pixels)
        loss_class = F.cross_entropy(heads["class"](tokens).flatten(0, 1), classes.reshape(-1), weight=class_weight,
                                     ignore_index=IGNORE)
        color_known = (colors != IGNORE).any()
        loss_color = (F.cross_entropy(heads["color"](tokens).flatten(0, 1), colors.reshape(-1), ignore_index=IGNORE)
                      if color_known else tokens.sum() * 0)
        loss = loss_class + loss_color
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.train.grad_clip)
        opt.step()
        sched.step()
        last = {"loss": float(loss.detach()), "class": float(loss_class.detach()), "color": float(loss_color.detach())}
        rate = (step + 1) * len(idx) / (time.perf_counter() - start)
        bar.set_postfix(loss=f"{last['loss']:.3f}", frames_per_s=f"{rate:.1f}")
        if (step + 1) % pt.log_every == 0 or step + 1 == steps:
            log.info("%s step %d/%d loss %.4f (class %.3f, colour %.3f) %.1f frames/s", name, step + 1, steps,
                     last["loss"], last["class"], last["color"], rate)
    bar.close()
    for module in modules:
        module.eval()
    return heads.eval(), last


def train_clip(cfg: VidLLMConfig, train_set: dict[str, Tensor], progress: bool = True) -> tuple[nn.Module, nn.Module, dict]:
    """(trained CLIPVisionModel, its random init, the heads and last losses)."""
    from transformers import CLIPVisionModel

    pt = cfg.teachers.pretrain
    # The same seed as `init_random_teachers`' semantic teacher: the control is that very model.
    torch.manual_seed(cfg.train.seed + 1)
    model = CLIPVisionModel(_clip_config(cfg))
    control = copy.deepcopy(model).eval()
    g = math.isqrt(train_set["classes"].shape[1])
    heads, last = _train_patch_heads("mini CLIP", lambda px: _clip_tokens(model, px), [model],
                                     model.config.hidden_size, train_set, (g, g), pt.clip_steps, cfg.train.seed + 2,
                                     cfg, progress)
    return model, control, {"heads": heads, **last}


def _encoder_tokens(encoder: nn.Module, pixels: Tensor) -> Tensor:
    """[N, 3, H, W] frames in [0, 1] → the encoder's patch tokens [N, P, C] (each frame alone)."""
    return encoder(pixels[:, None])[:, 0]


def encoder_features(encoder: nn.Module, pixels: Tensor) -> Tensor:
    """The encoder's patch tokens [N, P, C] of stored uint8 frames."""
    return _tokens_in_chunks(encoder, lambda px: _encoder_tokens(encoder, px), pixels)


def train_dino(cfg: VidLLMConfig, train_set: dict[str, Tensor], grid: tuple[int, int],
               progress: bool = True) -> tuple[nn.Module, nn.Module, dict]:
    """The miniature DINOv2: VGGT's patch embed starts from DINOv2, whose patch tokens already
    carry object semantics; so the miniature VGGT's encoder first learns per-patch object class
    and colour (`teachers.pretrain.dino_steps`), the stand-in for DINOv2's self-supervision.
    Returns (encoder, its class/colour heads, last losses); the encoder is initialised exactly as
    `train_vggt`'s would be."""
    pt = cfg.teachers.pretrain
    torch.manual_seed(cfg.train.seed)
    encoder, _ = _vggt_modules(cfg)
    heads, last = _train_patch_heads("mini DINOv2", lambda px: _encoder_tokens(encoder, px), [encoder],
                                     encoder.hidden_size, train_set, grid, pt.dino_steps, cfg.train.seed + 3, cfg,
                                     progress)
    return encoder, heads, last


def save_clip(model: nn.Module, out_dir: Path, cfg: VidLLMConfig) -> None:
    from vidllm.data.teacher_cache import CLIP_MEAN, CLIP_STD

    model.save_pretrained(str(out_dir), safe_serialization=True)
    try:  # the image processor is for users of the directory; `semantic_features` does its own
        from transformers import CLIPImageProcessor

        side = cfg.teachers.semantic_image_size
        CLIPImageProcessor(size={"height": side, "width": side}, do_center_crop=False, image_mean=list(CLIP_MEAN),
                           image_std=list(CLIP_STD), resample=3).save_pretrained(str(out_dir))
    except Exception as exc:  # noqa: BLE001 — optional extra (e.g. PIL/torchvision missing)
        log.warning("no image processor config written: %s", exc)


# ----------------------------------------------------------------------------- manifest


def config_parts(cfg: VidLLMConfig) -> dict[str, Any]:
    """The config values that determine the pretrained teachers (digest input)."""
    synth = pretrain_synth_config(cfg).model_dump(mode="json")
    return {
        "code_version": CODE_VERSION,
        "render_version": RENDER_VERSION,
        "pretrain": cfg.teachers.pretrain.model_dump(mode="json"),
        "synth": synth,
        "prep": {"short_side": cfg.data.prep.short_side, "patch_multiple": cfg.data.prep.patch_multiple},
        "model": {k: cfg.model.model_dump(mode="json")[k] for k in ("encoder", "aggregator", "heads", "frames")},
        "train": {"seed": cfg.train.seed, "weight_decay": cfg.train.weight_decay, "betas": list(cfg.train.betas),
                  "grad_clip": cfg.train.grad_clip, "loss_weights": cfg.train.loss_weights},
        "semantic": {k: getattr(cfg.teachers, k) for k in ("semantic_image_size", "random_hidden_size",
                                                            "random_num_layers", "random_num_heads",
                                                            "random_patch_size")},
    }


def config_digest(cfg: VidLLMConfig) -> str:
    return hashlib.sha256(json.dumps(config_parts(cfg), sort_keys=True).encode()).hexdigest()


def _paths(out: Path) -> dict[str, Path]:
    return {"vggt": out / VGGT_NAME, "geometry": out / GEOMETRY_NAME, "semantic": out / SEMANTIC_NAME}


def _intact(out: Path) -> bool:
    paths = _paths(out)
    return (paths["vggt"].is_file() and (paths["geometry"] / "config.json").is_file()
            and (paths["semantic"] / "config.json").is_file()
            and any(paths["geometry"].glob("*.safetensors")) and any(paths["semantic"].glob("*.safetensors")))


def read_manifest(out_dir: str | Path) -> dict[str, Any] | None:
    """The manifest with absolute paths, or None if there is none (or it is unreadable)."""
    out = Path(out_dir)
    try:
        manifest = json.loads((out / MANIFEST_NAME).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        return None
    manifest.update({k: str(p.resolve()) for k, p in _paths(out).items()})
    return manifest


def _write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    with atomic_file(out / MANIFEST_NAME, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)


# ----------------------------------------------------------------------------- entry point


def pretrain_teachers(cfg: VidLLMConfig, out_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    """Train the miniature VGGT and CLIP and write them to `out_dir` (module docstring).

    Returns the manifest: `vggt`, `geometry`, `semantic` (absolute paths), `digest`, `metrics`
    (vggt_depth_delta1 / _abs_rel and vggt_pose_auc30 / _rra15 / _rta15 on held-out pretraining
    scenes, depth δ1 and pose AUC@30 for the untrained
    init, clip class / colour head accuracy, linear-probe class accuracy of the trained CLIP and
    of its random init, chance), `corpus`, `config`, `seconds`, `reused`.
    """
    from vidllm.models.convert import export_vggt_dino

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a folder")
    digest = config_digest(cfg)
    existing = read_manifest(out)
    if existing is not None and existing.get("digest") == digest and _intact(out):
        log.info("pretrained teachers in %s match the config (digest %s): reused", out, digest[:12])
        return {**existing, "reused": True}

    pt = cfg.teachers.pretrain
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".pretrain-tmp-", dir=out))
    seconds: dict[str, float] = {}
    try:
        t0 = time.perf_counter()
        corpus = build_corpus(cfg, work, progress)
        train, heldout = split_corpus(corpus)
        seconds["corpus"] = time.perf_counter() - t0

        dino_scores: dict[str, float] = {}
        dino = None
        if pt.dino_steps > 0:
            t0 = time.perf_counter()
            patch = cfg.model.encoder.patch_size
            grid = (corpus[0].images.shape[-2] // patch, corpus[0].images.shape[-1] // patch)
            dino_train, dino_test = _encoder_set(train, patch), _encoder_set(heldout, patch)
            dino, dino_heads, _ = train_dino(cfg, dino_train, grid, progress)
            dino_scores = {f"dino_{k.removeprefix('clip_')}": v for k, v in
                           clip_head_scores(dino_heads, encoder_features(dino, dino_test["pixels"]), dino_test).items()}
            seconds["dino"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        torch.manual_seed(cfg.train.seed)
        init_encoder, init_recon = _vggt_modules(cfg)  # the same init train_vggt starts from
        if dino is not None:
            init_encoder.load_state_dict(dino.state_dict())
        init_depth = vggt_heldout_scores(init_encoder, init_recon, heldout, cfg.model.frames)
        del init_encoder, init_recon
        encoder, recon, vggt_last = train_vggt(cfg, train, progress, encoder_init=dino)
        depth = vggt_heldout_scores(encoder, recon, heldout, cfg.model.frames)
        if dino is not None:
            # Does VGGT training keep the semantics? The DINOv2 stage's heads on the trained encoder.
            kept = clip_head_scores(dino_heads, encoder_features(encoder, dino_test["pixels"]), dino_test)
            dino_scores["vggt_encoder_furniture_balanced_accuracy"] = kept["clip_furniture_balanced_accuracy"]
            del dino, dino_train, dino_test
        save_vggt(encoder, recon, work / VGGT_NAME)
        export_vggt_dino(work / VGGT_NAME, work / GEOMETRY_NAME, num_heads=cfg.model.encoder.num_heads)
        seconds["vggt"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        size, patch = cfg.teachers.semantic_image_size, cfg.teachers.random_patch_size
        if size % patch:
            raise ConfigError(f"teachers.semantic_image_size ({size}) is not a multiple of teachers.random_patch_size "
                              f"({patch})")
        train_set, test_set = _semantic_set(train, size, patch), _semantic_set(heldout, size, patch)
        clip, control, clip_last = train_clip(cfg, train_set, progress)
        heads = clip_last.pop("heads")
        test_tokens = _features(clip, test_set["pixels"])
        scores = clip_head_scores(heads, test_tokens, test_set)
        probe = {}
        for name, model in (("trained", clip), ("random_init", control)):
            probe[name] = linear_probe(_features(model, train_set["pixels"]), train_set["classes"], test_tokens
                                       if name == "trained" else _features(model, test_set["pixels"]),
                                       test_set["classes"], pt.probe_steps, cfg.train.seed)
        known = test_set["classes"][test_set["classes"] != IGNORE]
        chance = float(torch.bincount(known).max() / max(1, known.numel()))
        save_clip(clip, work / SEMANTIC_NAME, cfg)
        seconds["clip"] = time.perf_counter() - t0

        metrics = {
            "vggt_depth_delta1": depth["delta1"], "vggt_depth_abs_rel": depth["abs_rel"],
            "vggt_depth_delta1_init": init_depth["delta1"], "vggt_depth_abs_rel_init": init_depth["abs_rel"],
            "vggt_pose_auc30": depth["pose_auc30"], "vggt_pose_rra15": depth["pose_rra15"],
            "vggt_pose_rta15": depth["pose_rta15"], "vggt_pose_auc30_init": init_depth["pose_auc30"],
            "vggt_final_loss": vggt_last.get("loss"),
            **dino_scores,
            **scores,
            "clip_probe_class_accuracy": probe["trained"],
            "clip_probe_class_accuracy_random_init": probe["random_init"],
            "class_chance_accuracy": chance, "clip_final_loss": clip_last.get("loss"),
        }
        manifest = {
            "format": MANIFEST_FORMAT, "version": CODE_VERSION, "digest": digest, "recipe": cfg.recipe,
            "vggt": VGGT_NAME, "geometry": GEOMETRY_NAME, "semantic": SEMANTIC_NAME,
            "metrics": metrics,
            "corpus": {"scenes": len(corpus), "train_scenes": len(train), "heldout_scenes": len(heldout),
                       "frames_per_scene": pt.frames, "seed": pretrain_synth_config(cfg).seed,
                       "benchmark_seed": cfg.data.synth.seed, "frame_size": list(corpus[0].images.shape[-2:][::-1]),
                       "class_names": class_names(), "color_names": color_names()},
            "config": config_parts(cfg),
            "seconds": {k: round(v, 2) for k, v in seconds.items()},
        }
        # Outputs change only after the old manifest is gone, so a manifest never names stale files.
        (out / MANIFEST_NAME).unlink(missing_ok=True)
        for key, target in _paths(out).items():
            commit_dir(work / target.name, target)
        _write_manifest(out, manifest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = read_manifest(out)
    assert result is not None
    return {**result, "reused": False}


MINIATURE_DIR = "miniature"  # under a teachers folder: the miniatures beside the random teachers, never mixed


def fill_teachers(cfg: VidLLMConfig, out_dir: str | Path, progress: bool = False) -> VidLLMConfig:
    """cfg with every unset teacher filled from `out_dir`: the one fallback rule of the flow, the CLI
    (`--init-random DIR`) and `vidllm ablate`.

    With `teachers.miniatures`, the miniature pretrained teachers (trained once into
    out_dir/miniature by `pretrain_teachers`, reused while their config digest holds) fill
    teachers.geometry, teachers.semantic and model.init.vggt. Whatever is still unset gets a
    random-init teacher (out_dir/geometry, out_dir/semantic; tiny/demo runs, no downloads).
    Paths already set are never replaced.
    """
    from vidllm.data.teacher_cache import init_random_teachers

    teachers, vggt = cfg.teachers, cfg.model.init.vggt
    if teachers.miniatures and (teachers.geometry is None or teachers.semantic is None or vggt is None):
        made = pretrain_teachers(cfg, Path(out_dir) / MINIATURE_DIR, progress=progress)
        teachers = teachers.model_copy(update={"geometry": teachers.geometry or made["geometry"],
                                               "semantic": teachers.semantic or made["semantic"]})
        vggt = vggt or made["vggt"]
    if teachers.geometry is None or teachers.semantic is None:
        log.warning("teachers.geometry/semantic not set: using random-init teachers in %s (fine for the tiny/demo "
                    "recipes; set real teacher directories, or teachers.miniatures=true, otherwise)", out_dir)
        made_random = init_random_teachers(teachers, out_dir, seed=cfg.train.seed)
        teachers = teachers.model_copy(update={"geometry": teachers.geometry or made_random.geometry,
                                               "semantic": teachers.semantic or made_random.semantic})
    init = cfg.model.init.model_copy(update={"vggt": vggt})
    return cfg.model_copy(update={"teachers": teachers, "model": cfg.model.model_copy(update={"init": init})})
