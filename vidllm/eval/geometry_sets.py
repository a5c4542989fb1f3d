"""Run a model on a published pose or depth set (Co3Dv2, RealEstate10K, NYUv2: the benchmarks with a
`DatasetSpec`) and write predictions JSONL — what `vidllm predict --benchmark co3d|re10k|nyuv2
--data ROOT` does.

Each clip (a sequence's frames, or one NYUv2 image) is resized as `vidllm prepare` resizes
ScanNet (shorter side to the model's input size, centre crop to the patch multiple;
`vidllm.data.frames`) and reconstructed once. Per clip a geometry file `<clip>.npz` (run-directory
format) holds what the benchmark scores: predicted and GT camera-to-world poses (pose sets; the
prediction in the model's own frame, the GT in the dataset's, both OpenCV axes; relative-pose
metrics do not depend on the world frame), or predicted depth resampled back onto the GT
image grid beside the GT depth (depth sets; scoring aligns the scale).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vidllm.artifacts import run_dir as rd
from vidllm.data.frames import ResizeCrop, plan_resize_crop, resize_color
from vidllm.errors import DataError, VidLLMError
from vidllm.eval.benchmarks import registry
from vidllm.eval.predict import PredictSummary
from vidllm.eval.predictions import write_predictions
from vidllm.eval.protocols import CARDS, canonical_protocol


def to_source_grid(pred: np.ndarray, plan: ResizeCrop) -> np.ndarray:
    """A map `[h,w]` on the model's input grid (the resized, cropped image, or a proportional grid
    of it) → `[H_in,W_in]` on the original image, nearest neighbour; NaN where the crop cut the
    image away."""
    in_w, in_h = plan.in_size
    out_w, out_h = plan.out_size
    h, w = pred.shape
    sx, sy = plan.scale_xy
    # Continuous coordinates (pixel edges at integers) of the source pixel centres in the cropped image.
    x = (np.arange(in_w) + 0.5) * sx - plan.crop_xy[0]
    y = (np.arange(in_h) + 0.5) * sy - plan.crop_xy[1]
    cols = np.floor(x * w / out_w).astype(np.int64)
    rows = np.floor(y * h / out_h).astype(np.int64)
    inside = ((rows >= 0) & (rows < h))[:, None] & ((cols >= 0) & (cols < w))[None, :]
    out = pred[np.clip(rows, 0, h - 1)[:, None], np.clip(cols, 0, w - 1)[None, :]].astype(np.float32)
    return np.where(inside, out, np.float32(np.nan))


def _clip_file(clip_id: str) -> str:
    return clip_id.replace("/", "__") + ".npz"


def predict_geometry_set(
    model_dir: str | Path,
    benchmark: str,
    data_root: str | Path,
    out_path: str | Path,
    *,
    split: str | None = None,
    frames: int | None = None,
    seed: int = 0,
    protocol: str | None = None,
    geometry_dir: str | Path | None = None,
    limit_scenes: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> PredictSummary:
    """Reconstruct every clip of `benchmark`'s dataset under `data_root`; write JSONL + `.meta.json` atomically.

    `split` default: the dataset's (Co3Dv2 and RealEstate10K: "test"; NYUv2: every image).
    `frames` per pose clip default: the dataset's (10), drawn with `seed`. `geometry_dir`
    default: `<out dir>/geometry/<benchmark>/`. `protocol` is recorded (default P1): the scores
    use relative poses and per-image median-scaled depth, so they do not depend on it; P0 (3D
    patches from ground-truth geometry) needs GT depth and poses these sets do not all have,
    and is refused. `progress(clips_done, total)` is called after every clip.
    """
    from vidllm.artifacts.model_dir import load_pretrained
    from vidllm.tokenizer import build_prompt

    spec = registry.get(benchmark)
    dataset = spec.dataset
    if dataset is None:
        raise VidLLMError(f"{benchmark} runs on the ScanNet shards (--shards), not on a dataset folder")
    protocol = canonical_protocol(protocol) if protocol is not None else "P1"
    if protocol == "P0":
        raise VidLLMError(f"protocol P0 places the 3D patches with ground-truth geometry, which {benchmark} "
                          "predictions do not use: choose P1 or P2")
    data_root = Path(data_root)
    split = split if split is not None else dataset.default_split
    frames = frames if frames is not None else dataset.default_frames
    clips = list(dataset.load(data_root, split, frames, seed))  # bad data fails here, before the model loads
    if limit_scenes is not None:
        clips = clips[:limit_scenes]
    out_path = Path(out_path)
    geo_dir = Path(geometry_dir) if geometry_dir is not None else out_path.parent / rd.GEOMETRY_DIR / benchmark
    model, tokenizer = load_pretrained(model_dir, merge_lora=True)
    if tokenizer is None:
        raise DataError(model_dir, "model directory has no tokenizer/ (needed to read prompts)")
    model.eval()
    if model.config.patch_geometry == "ground_truth":
        raise VidLLMError(f"this model places its 3D patches with ground-truth geometry (protocol P0), which "
                          f"{benchmark} cannot give it")
    short_side = min(model.config.image_size)
    multiple = model.config.encoder.patch_size
    prompt = build_prompt("Describe the room.")
    summary = PredictSummary(benchmark, protocol)
    records: list[dict[str, Any]] = []
    seconds: list[float] = []
    for done, clip in enumerate(clips, start=1):
        images = clip.load_images()
        sizes = {image.shape[:2] for image in images}
        if len(sizes) != 1:
            raise DataError(clip.image_paths[0].parent, f"clip {clip.id}: frames of different sizes {sorted(sizes)}")
        h, w = images[0].shape[:2]
        try:
            plan = plan_resize_crop((w, h), short_side, multiple)
        except ValueError as exc:
            raise DataError(clip.image_paths[0], str(exc)) from None
        batch = np.stack([resize_color(image, plan) for image in images])  # [S,H,W,3] uint8
        video = torch.from_numpy(batch).permute(0, 3, 1, 2).float().div(255.0)[None]  # [1,S,3,H,W]
        start = time.perf_counter()
        result = model.generate(video, [prompt], tokenizer, max_new_tokens=1)[0]
        seconds.append(time.perf_counter() - start)
        arrays: dict[str, np.ndarray] = {"frame_ids": clip.frame_ids}
        if dataset.measures == "pose":
            if clip.camera_to_world is None:
                raise DataError(data_root, f"clip {clip.id} has no ground-truth poses")
            arrays["camera_to_world_pred"] = result.camera_to_world.double().cpu().numpy()
            arrays["camera_to_world_gt"] = clip.camera_to_world
        else:
            if clip.load_depth is None:
                raise DataError(data_root, f"clip {clip.id} has no ground-truth depth")
            depth_gt = clip.load_depth()
            if depth_gt.shape[1:] != (h, w):
                raise DataError(clip.image_paths[0], f"image is {w}x{h} but its depth {depth_gt.shape[2]}x"
                                                     f"{depth_gt.shape[1]}")
            depth = result.depth.float().cpu().numpy()
            arrays["depth_pred"] = np.stack([to_source_grid(d, plan) for d in depth])
            arrays["depth_gt"] = depth_gt.astype(np.float32)
        geo_path = geo_dir / _clip_file(clip.id)
        rd.write_geometry(geo_path, **arrays)
        summary.geometry_files.append(str(geo_path))
        # Relative to the JSONL, so the run directory can be moved and rescored.
        records.append({"id": clip.id, "geometry": os.path.relpath(geo_path.resolve(), out_path.parent.resolve())})
        summary.scenes += 1
        if progress is not None:
            progress(done, len(clips))
    summary.predictions = len(records)
    summary.seconds_per_scene = float(np.mean(seconds)) if seconds else 0.0
    write_predictions(out_path, records, meta={
        "benchmark": benchmark, "protocol": protocol, "protocol_card": CARDS[protocol], "model": str(model_dir),
        "data": str(data_root), "dataset": dataset.title, "split": split, "frames": frames, "seed": seed,
        "input_short_side": short_side, "scenes": summary.scenes, "seconds_per_scene": summary.seconds_per_scene,
        "patch_geometry": "predicted",
    })
    return summary
