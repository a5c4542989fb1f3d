"""Run a model over a benchmark's shards and write predictions JSONL (the engine behind `vidllm predict`).

Each shard sample is one scene clip carrying its benchmark instructions (`annotations.json`).
Per scene the model sees the clip once per `generate` call; answers, boxes and geometry are
mapped to ScanNet's axis-aligned world by the evaluation protocol:

- `first_camera_gt`: the model's gravity-aligned scene frame is moved to the GT first camera
  centre (translation only: predicted rotation and metric scale errors still count).
- `umeyama_sim3`: a Sim(3) fitted from predicted to GT camera centres is applied (needs ≥ 3
  non-collinear frames); box sizes are scaled, boxes stay axis-aligned.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vidllm.artifacts import run_dir as rd
from vidllm.data.scannet.annotations import Instruction
from vidllm.errors import DataError, VidLLMError
from vidllm.eval.benchmarks import registry
from vidllm.eval.geometry_metrics import backproject_depth
from vidllm.eval.predictions import PROTOCOLS, write_predictions


@dataclass
class PredictSummary:
    benchmark: str
    protocol: str
    scenes: int = 0
    predictions: int = 0
    seconds_per_scene: float = 0.0
    geometry_files: list[str] = field(default_factory=list)


@dataclass
class WorldMap:
    """Scene frame → ScanNet axis-aligned world: x_world = scale · R @ x + t."""

    scale: float
    rotation: np.ndarray  # [3,3]
    translation: np.ndarray  # [3]

    def points(self, xyz: np.ndarray) -> np.ndarray:
        return self.scale * xyz @ self.rotation.T + self.translation

    def boxes(self, boxes: np.ndarray) -> np.ndarray:
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 6)
        return np.concatenate([self.points(boxes[:, :3]), self.scale * boxes[:, 3:]], axis=1)

    def poses(self, camera_to_scene: np.ndarray) -> np.ndarray:
        out = np.array(camera_to_scene, dtype=np.float64)
        out[:, :3, :3] = self.rotation @ out[:, :3, :3]
        out[:, :3, 3] = self.points(out[:, :3, 3])
        return out


def scene_to_world_map(protocol: str, pred_camera_to_scene: np.ndarray, gt_camera_to_aligned: np.ndarray) -> WorldMap:
    if protocol == "first_camera_gt":
        return WorldMap(1.0, np.eye(3), gt_camera_to_aligned[0, :3, 3] - pred_camera_to_scene[0, :3, 3])
    if protocol == "umeyama_sim3":
        from vidllm.geometry import umeyama_sim3

        src = torch.as_tensor(pred_camera_to_scene[:, :3, 3], dtype=torch.float64)
        dst = torch.as_tensor(gt_camera_to_aligned[:, :3, 3], dtype=torch.float64)
        centred = src - src.mean(0)
        if len(src) < 3 or torch.linalg.matrix_rank(centred, tol=1e-6) < 2:
            raise VidLLMError("protocol umeyama_sim3 needs at least 3 non-collinear predicted camera centres")
        scale, rot, trans = umeyama_sim3(src, dst)
        return WorldMap(float(scale), rot.numpy(), trans.numpy())
    raise VidLLMError(f"unknown evaluation protocol '{protocol}'")


def _instructions(sample: dict[str, Any], benchmark: str, split: str | None) -> list[Instruction]:
    records = sample["annotations"]
    # Nr3D/Sr3D records carry no split (their csv covers all scans). A scene lies in one split, so
    # they take the split of the scene's other records; otherwise `--split val` would keep train scenes.
    scene_splits = {r.get("split") for r in records} - {None}
    scene_split = next(iter(scene_splits)) if len(scene_splits) == 1 else None
    out = []
    for record in records:
        if record.get("task") != benchmark:
            continue
        record_split = record.get("split") or scene_split
        if split is not None and record_split is not None and record_split != split:
            continue
        out.append(Instruction.from_dict({k: v for k, v in record.items() if k != "split"}))
    return out


def _np(t: torch.Tensor | None) -> np.ndarray:
    return np.zeros((0, 6)) if t is None else t.detach().float().cpu().numpy()


def predict(
    model_dir: str | Path,
    benchmark: str,
    shards_uri: str,
    out_path: str | Path,
    protocol: str = "first_camera_gt",
    split: str | None = None,
    max_new_tokens: int = 32,
    geometry_dir: str | Path | None = None,
    limit_scenes: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    proposals: str = "own",
    patch_geometry: str | None = None,
) -> PredictSummary:
    """Predict every `benchmark` instruction found in the shards; write JSONL + `.meta.json` atomically.

    `geometry_dir` (default: `<out dir>/geometry` for recon) receives `<scene>.npz` files in the
    run-directory format; recon prediction lines point at them. `progress(samples_read, total)` is
    called after every shard sample (scene clip).

    `proposals` (grounding benchmarks: ScanRefer, Multi3DRefer, Nr3D, Sr3D): "own" = each
    `<ground>` selects among the model's own proposals (from the video alone) and refines the
    chosen box; "gt" = it selects among the ground-truth instances (Nr3D/Sr3D then answer with
    the chosen instance's box, ReferIt3D's protocol). Recorded in the predictions' meta.
    `patch_geometry` (default: the model's config): "ground_truth" places the 3D patches with
    the sample's depth and poses (the upper-bound ablation).
    """
    from vidllm.artifacts.model_dir import load_pretrained
    from vidllm.data.shards.format import ShardDataset
    from vidllm.tokenizer import build_prompt

    spec = registry.get(benchmark)
    task = spec.task
    if protocol not in PROTOCOLS:
        raise VidLLMError(f"unknown evaluation protocol '{protocol}' (choose from {', '.join(PROTOCOLS)})")
    out_path = Path(out_path)
    dataset = ShardDataset(shards_uri)  # a missing manifest fails here, before the model loads
    total = len(dataset) if limit_scenes is None else min(len(dataset), limit_scenes)
    model, tokenizer = load_pretrained(model_dir, merge_lora=True)
    if tokenizer is None:
        raise DataError(model_dir, "model directory has no tokenizer/ (needed to read prompts)")
    model.eval()
    if proposals not in ("own", "gt"):
        raise VidLLMError(f"unknown proposals protocol '{proposals}' (choose from own, gt)")
    gt_geometry = (patch_geometry or model.config.patch_geometry) == "ground_truth"
    geo_dir = Path(geometry_dir) if geometry_dir is not None else out_path.parent / rd.GEOMETRY_DIR
    summary = PredictSummary(benchmark, protocol)
    records: list[dict[str, Any]] = []
    seconds: list[float] = []

    for samples_read, sample in enumerate(dataset, start=1):
        if limit_scenes is not None and summary.scenes >= limit_scenes:
            break
        if progress is not None:
            progress(samples_read, total)
        meta = sample["meta"]
        scene_id = meta["scene_id"]
        where = f"{shards_uri}:{sample['key']}"
        instructions = _instructions(sample, benchmark, split)
        if task.kind != "geometry" and not instructions:
            continue
        alignment = np.asarray(meta.get("axis_alignment", np.eye(4)), dtype=np.float64)
        gt_poses = alignment @ sample["camera_to_world"].double().numpy()  # [S,4,4] axis-aligned world
        if not np.isfinite(gt_poses).all():
            raise DataError(where, "non-finite ground-truth pose in the sample")
        objects = {int(o["object_id"]): np.asarray(o["box"], dtype=np.float64) for o in meta.get("objects", [])}
        images = sample["images"][None]  # [1,S,3,H,W]
        centre = torch.as_tensor(gt_poses[0, :3, 3], dtype=torch.float32)
        geometry = _ground_truth_geometry(sample) if gt_geometry else None

        start = time.perf_counter()
        results: list[Any] = []
        if task.kind == "geometry":  # reconstruction only: one call per scene, no instruction
            results = model.generate(images, [build_prompt("Describe the room.")], tokenizer, max_new_tokens=1,
                                     first_camera_center=centre, geometry=geometry)
        elif task.object_prompt:  # one call for the scene; each prompt's <obj> token carries its box
            boxes = []
            for inst in instructions:
                box = objects.get(inst.target_object_ids[0])
                if box is None:
                    raise DataError(where, f"{inst.id}: object {inst.target_object_ids[0]} is not in the scene")
                boxes.append(np.concatenate([box[:3] - gt_poses[0, :3, 3], box[3:]]))
            results = model.generate(images, [build_prompt(inst.text, with_object=True) for inst in instructions],
                                     tokenizer, max_new_tokens=max_new_tokens,
                                     object_boxes=torch.as_tensor(np.stack(boxes), dtype=torch.float32),
                                     first_camera_center=centre, geometry=geometry)
        else:
            candidates: torch.Tensor | str | None = "own" if task.grounding else None
            if task.grounding and proposals == "gt" and objects:
                ids = sorted(objects)
                scene_boxes = np.stack([objects[i] for i in ids])
                scene_boxes[:, :3] -= gt_poses[0, :3, 3]
                candidates = torch.as_tensor(scene_boxes, dtype=torch.float32)[None]
            prompts = [build_prompt(i.text, i.situation, grounding=task.grounding) for i in instructions]
            results = model.generate(images, prompts, tokenizer, max_new_tokens=max_new_tokens,
                                     proposals=candidates, first_camera_center=centre, geometry=geometry)
        seconds.append(time.perf_counter() - start)

        geometry = results[0]
        world = scene_to_world_map(protocol, geometry.camera_to_world.double().cpu().numpy(), gt_poses)
        if task.kind == "geometry":
            depth_gt = sample["depths"].numpy()
            intrinsics = sample["intrinsics"].double().numpy()
            points_gt = np.concatenate([backproject_depth(d, k, p) for d, k, p in zip(depth_gt, intrinsics, gt_poses)])
            geo_path = geo_dir / f"{scene_id}.npz"
            rd.write_geometry(
                geo_path,
                frame_ids=np.asarray(meta.get("source_frame_ids", range(len(gt_poses))), dtype=np.int64),
                depth_pred=geometry.depth.float().cpu().numpy() * world.scale,
                depth_gt=depth_gt.astype(np.float32),
                camera_to_world_pred=world.poses(geometry.camera_to_world.double().cpu().numpy()),
                camera_to_world_gt=gt_poses,
                points_pred=world.points(geometry.points.double().cpu().numpy()).astype(np.float32),
                points_gt=points_gt.astype(np.float32),
                boxes_gt=np.stack(list(objects.values())) if objects else np.zeros((0, 6)),
                colors=(sample["images"].permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8),
            )
            summary.geometry_files.append(str(geo_path))
            # Relative to the JSONL, so the run directory can be moved and rescored.
            records.append({"id": scene_id, "geometry": os.path.relpath(geo_path.resolve(), out_path.parent.resolve())})
        else:
            for inst, result in zip(instructions, results, strict=True):
                # One box per <ground>. Multi3DRefer keeps them all, and an answer without
                # <ground> (the zero-target answer "none") is the empty prediction scoring expects.
                boxes = world.boxes(_np(result.boxes))
                if (spec.answers_with_gt_instance and proposals == "gt" and result.match_logits is not None
                        and len(result.match_logits)):
                    logits = result.match_logits[0]
                    # The last column, "referent not among the proposals", is no answer here: a
                    # ReferIt3D target is always one of the scene's instances.
                    choice = int(logits[:-1].argmax())
                    boxes = np.stack([objects[sorted(objects)[choice]]])
                elif spec.first_box_only:
                    boxes = boxes[:1]
                elif task.object_prompt:
                    # The caption describes the prompted object: its (ground-truth) box is the
                    # line's box, so the m@0.5 gate is the GT-box setting, recorded as such.
                    boxes = objects[inst.target_object_ids[0]][None]
                records.append({"id": inst.id, "text": result.text, "boxes": np.round(boxes, 4).tolist()})
        summary.scenes += 1

    if not records:
        raise DataError(shards_uri, f"no {benchmark} instructions in these shards" + (f" (split {split})" if split else ""))
    summary.predictions = len(records)
    summary.seconds_per_scene = float(np.mean(seconds)) if seconds else 0.0
    write_predictions(out_path, records, meta={
        "benchmark": benchmark, "protocol": protocol, "model": str(model_dir), "shards": str(shards_uri),
        "split": split, "scenes": summary.scenes, "seconds_per_scene": summary.seconds_per_scene,
        "scan2cap_prompt_box": "ground-truth object box" if task.object_prompt else None,
        "proposals": ({"own": "own proposals", "gt": "ground-truth instances"}[proposals]
                      if task.grounding else None),
        "patch_geometry": "ground_truth" if gt_geometry else "predicted",
    })
    return summary


def _ground_truth_geometry(sample: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The sample's depth and poses as `VidLLM.encode_video(geometry=...)` takes them."""
    from vidllm.geometry import ground_truth_geometry
    from vidllm.losses import reconstruction_targets

    alignment = torch.as_tensor(sample["meta"].get("axis_alignment", np.eye(4)), dtype=torch.float32)[None]
    depths = sample["depths"][None].float()
    targets = reconstruction_targets(sample["camera_to_world"][None].float(), sample["intrinsics"][None].float(),
                                     depths, alignment, tuple(depths.shape[-2:]))
    return ground_truth_geometry(targets)
