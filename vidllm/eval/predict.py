"""Run a model over a benchmark's shards and write predictions JSONL (the engine behind `vidllm predict`).

Each shard sample is one scene clip carrying its benchmark instructions (`annotations.json`).
Per scene the model sees the clip once per `generate` call; answers, boxes and geometry are
mapped to ScanNet's axis-aligned world by the declared evaluation protocol (P0, P1, P2; cards in
`vidllm.eval.protocols`). Boxes given to the model (external or ground-truth proposals, Scan2Cap's
prompted box) go the other way, world → scene frame; under P2 that needs the predicted cameras
first, so such scenes get one extra reconstruction-only pass.

Scan2Cap follows its published protocol: each ground-truth object is captioned from the proposal
overlapping it most (own, external or ground-truth proposals), prompted with that proposal's box;
the line's box is that proposal, so scoring's IoU gate (m@k) measures the proposals.
"""

from __future__ import annotations

import logging
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
from vidllm.eval.predictions import write_predictions
from vidllm.eval.protocols import (
    CARDS,
    WorldMap,
    canonical_protocol,
    proposal_source,
    scene_frame_record,
    scene_to_world_map,
)

log = logging.getLogger(__name__)

# What Scan2Cap's <obj> token carries, per proposal source (meta "scan2cap_prompt_box").
SCAN2CAP_PROMPT_BOXES = {"own": "the own proposal overlapping the ground-truth object most",
                         "external": "the external proposal overlapping the ground-truth object most",
                         "gt": "ground-truth object box"}

__all__ = ["PredictSummary", "WorldMap", "predict", "scene_to_world_map"]


@dataclass
class PredictSummary:
    benchmark: str
    protocol: str
    scenes: int = 0
    predictions: int = 0
    seconds_per_scene: float = 0.0
    geometry_files: list[str] = field(default_factory=list)
    proposals: str | None = None  # own | external | gt, for benchmarks that use proposals


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


def _resolve_protocol(protocol: str | None, config_gt_geometry: bool) -> str:
    """The protocol a run actually follows. Without one: P0 for a model that places its patches
    with ground-truth geometry, else P1 (the behaviour before protocols were declared)."""
    if protocol is None:
        return "P0" if config_gt_geometry else "P1"
    if config_gt_geometry and protocol != "P0":
        if protocol == "P2":
            raise VidLLMError("protocol P2 aligns a predicted reconstruction, but this model places its 3D patches "
                              "with ground-truth geometry (model.patch_geometry: ground_truth): that is P0")
        log.warning("predict: the model places its 3D patches with ground-truth geometry: recorded as P0, not P1")
        return "P0"
    return protocol


def _top_proposals(boxes: np.ndarray, scores: np.ndarray | None, limit: int) -> np.ndarray:
    """At most `limit` proposals (the model's matcher size), the highest-scoring first when scored."""
    if scores is not None:
        boxes = boxes[np.argsort(-scores, kind="stable")]
    return boxes[:limit]


def predict(
    model_dir: str | Path,
    benchmark: str,
    shards_uri: str,
    out_path: str | Path,
    protocol: str | None = None,
    split: str | None = None,
    max_new_tokens: int = 32,
    geometry_dir: str | Path | None = None,
    limit_scenes: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    proposals: str | Path = "own",
    patch_geometry: str | None = None,
) -> PredictSummary:
    """Predict every `benchmark` instruction found in the shards; write JSONL + `.meta.json` atomically.

    `protocol`: P0, P1 or P2 (the former names first_camera_gt / umeyama_sim3 are P1 / P2);
    default P1, or P0 for a model whose `patch_geometry` is ground_truth. P0 places the 3D
    patches with the sample's GT depth and poses. Recorded in the meta with, per scene, the map
    applied and the predicted and GT camera centres ("scene_frames"), so scoring can change it.
    `geometry_dir` (default: `<out dir>/geometry` for recon) receives `<scene>.npz` files in the
    run-directory format; recon prediction lines point at them. `progress(samples_read, total)` is
    called after every shard sample (scene clip).

    `proposals` (grounding benchmarks and Scan2Cap): "own" = the model's own proposals (from the
    video alone); "gt" = the ground-truth instances (Nr3D/Sr3D then answer with the chosen
    instance's box, ReferIt3D's protocol); a path = external detector proposals
    (`vidllm.eval.benchmarks.ground_truth.load_scored_proposals` reads them; at most the model's
    `grounding.max_proposals`, highest score first), each `<ground>` selecting one by its match
    logits and answering with that proposal's box. Scan2Cap captions, per GT object, the
    proposal overlapping it most. Recorded in the meta as own / external / gt.
    `patch_geometry` (default: the model's config) "ground_truth" is protocol P0.
    """
    from vidllm.artifacts.model_dir import load_pretrained
    from vidllm.data.shards.format import ShardDataset
    from vidllm.eval.benchmarks.ground_truth import load_scored_proposals
    from vidllm.eval.grounding import box_iou_matrix
    from vidllm.tokenizer import build_prompt

    spec = registry.get(benchmark)
    if spec.dataset is not None:  # not a shard benchmark: `vidllm.eval.geometry_sets.predict_geometry_set`
        raise VidLLMError(f"{benchmark} reads its own dataset, not shards: vidllm predict --benchmark {benchmark} "
                          "--data ROOT")
    task = spec.task
    protocol = canonical_protocol(protocol) if protocol is not None else None
    if patch_geometry is not None and patch_geometry not in ("predicted", "ground_truth"):
        raise VidLLMError(f"unknown patch geometry '{patch_geometry}' (choose from predicted, ground_truth)")
    if protocol == "P0" and patch_geometry == "predicted":
        raise VidLLMError("protocol P0 places the 3D patches with ground-truth geometry, not the predicted one")
    source = proposal_source(str(proposals))
    if source == "external" and not Path(proposals).exists():
        raise DataError(proposals, "proposals folder or file not found")
    out_path = Path(out_path)
    dataset = ShardDataset(shards_uri)  # a missing manifest fails here, before the model loads
    total = len(dataset) if limit_scenes is None else min(len(dataset), limit_scenes)
    model, tokenizer = load_pretrained(model_dir, merge_lora=True)
    if tokenizer is None:
        raise DataError(model_dir, "model directory has no tokenizer/ (needed to read prompts)")
    model.eval()
    protocol = _resolve_protocol(protocol, (patch_geometry or model.config.patch_geometry) == "ground_truth")
    gt_geometry = protocol == "P0"
    uses_proposals = task.grounding or task.object_prompt
    max_proposals = model.config.grounding.max_proposals
    geo_dir = Path(geometry_dir) if geometry_dir is not None else out_path.parent / rd.GEOMETRY_DIR
    summary = PredictSummary(benchmark, protocol, proposals=source if uses_proposals else None)
    records: list[dict[str, Any]] = []
    scene_frames: dict[str, dict[str, Any]] = {}
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
        given: np.ndarray | None = None  # world-frame boxes handed to the model (external / GT proposals)
        if source == "external" and uses_proposals:
            scored = load_scored_proposals(proposals, [scene_id])[scene_id]
            given = _top_proposals(scored.boxes, scored.scores, max_proposals)
        elif source == "gt" and uses_proposals and objects:
            given = np.stack([objects[i] for i in sorted(objects)])

        start = time.perf_counter()
        # Placing world boxes in the scene frame: by definition the frame's origin is the first
        # camera, so under P0/P1 that is the GT first-camera translation; under P2 it is the
        # inverse Sim(3), which needs this scene's predicted cameras (one reconstruction pass,
        # which also yields the own proposals Scan2Cap captions from).
        first_pass = None
        if (given is not None and protocol == "P2") or (task.object_prompt and source == "own"):
            first_pass = model.generate(images, [build_prompt("Describe the room.")], tokenizer, max_new_tokens=1,
                                        proposals="own" if source == "own" else None, first_camera_center=centre,
                                        geometry=geometry)[0]
        if first_pass is not None:
            pre_map = scene_to_world_map(protocol, first_pass.camera_to_world.double().cpu().numpy(), gt_poses)
        else:
            pre_map = WorldMap(1.0, np.eye(3), gt_poses[0, :3, 3].copy())
        to_scene = pre_map.inverse()

        results: list[Any] = []
        captioned: dict[str, int] = {}  # Scan2Cap: instruction id -> index of the proposal it captions
        prompted: list[Instruction] = []
        candidates_world = np.zeros((0, 6))
        if task.kind == "geometry":  # reconstruction only: one call per scene, no instruction
            results = model.generate(images, [build_prompt("Describe the room.")], tokenizer, max_new_tokens=1,
                                     first_camera_center=centre, geometry=geometry)
        elif task.object_prompt:  # one call for the scene; each prompt's <obj> token carries a proposal's box
            if source == "own":
                candidates_scene = _np(first_pass.proposals).astype(np.float64).reshape(-1, 6)
                candidates_world = pre_map.boxes(candidates_scene)
            else:
                candidates_world = given if given is not None else np.zeros((0, 6))
                candidates_scene = to_scene.boxes(candidates_world)
            for inst in instructions:
                box = objects.get(inst.target_object_ids[0])
                if box is None:
                    raise DataError(where, f"{inst.id}: object {inst.target_object_ids[0]} is not in the scene")
                if len(candidates_world):
                    captioned[inst.id] = int(box_iou_matrix(candidates_world, box[None])[:, 0].argmax())
            prompted = [inst for inst in instructions if inst.id in captioned]
            if prompted:
                boxes_in = np.stack([candidates_scene[captioned[inst.id]] for inst in prompted])
                results = model.generate(images, [build_prompt(inst.text, with_object=True) for inst in prompted],
                                         tokenizer, max_new_tokens=max_new_tokens,
                                         object_boxes=torch.as_tensor(boxes_in, dtype=torch.float32),
                                         first_camera_center=centre, geometry=geometry)
            elif first_pass is not None:
                results = [first_pass]  # no proposal at all: nothing to caption, the scene frame still counts
            else:
                results = model.generate(images, [build_prompt("Describe the room.")], tokenizer, max_new_tokens=1,
                                         first_camera_center=centre, geometry=geometry)
        else:
            candidates: torch.Tensor | str | None = "own" if task.grounding else None
            if task.grounding and given is not None:
                candidates = torch.as_tensor(to_scene.boxes(given), dtype=torch.float32)[None] if len(given) else None
            prompts = [build_prompt(i.text, i.situation, grounding=task.grounding) for i in instructions]
            results = model.generate(images, prompts, tokenizer, max_new_tokens=max_new_tokens,
                                     proposals=candidates, first_camera_center=centre, geometry=geometry)
        seconds.append(time.perf_counter() - start)

        geometry = results[0]
        pred_cameras = geometry.camera_to_world.double().cpu().numpy()
        world = pre_map if first_pass is not None else scene_to_world_map(protocol, pred_cameras, gt_poses)
        if first_pass is not None:
            pred_cameras = first_pass.camera_to_world.double().cpu().numpy()
        scene_frames[scene_id] = scene_frame_record(world, pred_cameras[:, :3, 3], gt_poses[:, :3, 3])
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
        elif task.object_prompt:
            by_id = dict(zip((inst.id for inst in prompted), results, strict=True)) if prompted else {}
            for inst in instructions:
                if inst.id not in captioned:  # no proposal to caption: scored 0 by the IoU gate
                    records.append({"id": inst.id, "text": "", "boxes": []})
                    continue
                box = candidates_world[captioned[inst.id]][None]
                records.append({"id": inst.id, "text": by_id[inst.id].text, "boxes": np.round(box, 4).tolist()})
        else:
            for inst, result in zip(instructions, results, strict=True):
                # One box per <ground>. Multi3DRefer keeps them all, and an answer without
                # <ground> (the zero-target answer "none") is the empty prediction scoring expects.
                boxes = world.boxes(_np(result.boxes))
                logits = result.match_logits
                if given is not None and len(given) and logits is not None and len(logits):
                    # Given proposals: each <ground> answers with the proposal it selects, as given
                    # (world frame). The last column, "referent not among the proposals", is no
                    # answer here: the protocol selects among them.
                    choice = logits[:, :-1].argmax(-1).cpu().numpy()
                    if spec.answers_with_gt_instance:  # one referent: the first <ground>'s choice
                        boxes = given[choice[:1]]
                    elif source == "external":
                        boxes = given[choice]
                if spec.first_box_only:
                    boxes = boxes[:1]
                records.append({"id": inst.id, "text": result.text, "boxes": np.round(boxes, 4).tolist()})
        summary.scenes += 1

    if not records:
        raise DataError(shards_uri, f"no {benchmark} instructions in these shards" + (f" (split {split})" if split else ""))
    summary.predictions = len(records)
    summary.seconds_per_scene = float(np.mean(seconds)) if seconds else 0.0
    prompt_box = SCAN2CAP_PROMPT_BOXES[source] if task.object_prompt else None
    write_predictions(out_path, records, meta={
        "benchmark": benchmark, "protocol": protocol, "protocol_card": CARDS[protocol], "model": str(model_dir),
        "shards": str(shards_uri), "split": split, "scenes": summary.scenes,
        "seconds_per_scene": summary.seconds_per_scene,
        "scan2cap_prompt_box": prompt_box,
        "proposals": summary.proposals,
        "proposals_path": str(proposals) if source == "external" and uses_proposals else None,
        "patch_geometry": "ground_truth" if gt_geometry else "predicted",
        "scene_frames": scene_frames,
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
