"""`vidllm synth --out DIR`: generate synthetic ScanNet-format scenes with benchmark annotations."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vidllm.config import SynthConfig, add_config_options, load_config
from vidllm.errors import VidLLMError

if TYPE_CHECKING:
    from vidllm.data.synthetic.generate import SyntheticDataset

# flag -> data.synth field (argparse dest == field name)
_FLAG_FIELDS = ("scenes", "frames", "width", "height", "depth_width", "depth_height", "seed", "min_objects",
                "max_objects", "invalid_pose_fraction", "val_fraction", "clip_frames")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="output folder; gets scans/, annotations/ and scannetv2-labels.combined.tsv")
    add_config_options(parser,
                       recipe_help="recipe giving the data.synth defaults: tiny, demo or paper (default: paper)",
                       config_help="config file (e.g. params.yaml) applied over the recipe (default: none)",
                       set_help="dotted config override, repeatable (e.g. data.synth.mesh_spacing=0.05); "
                                "the flags below win over it")
    parser.add_argument("--scenes", type=int, default=None, help="number of scenes (default: recipe, paper 4)")
    parser.add_argument("--frames", type=int, default=None, help="frames per scene (default: recipe, paper 32)")
    parser.add_argument("--width", type=int, default=None, help="colour width in pixels (default: recipe, paper 320)")
    parser.add_argument("--height", type=int, default=None,
                        help="colour height in pixels (default: recipe, paper 240)")
    parser.add_argument("--depth-width", type=int, default=None,
                        help="depth width in pixels (default: the colour width)")
    parser.add_argument("--depth-height", type=int, default=None,
                        help="depth height in pixels (default: the colour height)")
    parser.add_argument("--seed", type=int, default=None, help="random seed; same seed, same data (default: 0)")
    parser.add_argument("--min-objects", type=int, default=None, help="least furniture per room (default: 3)")
    parser.add_argument("--max-objects", type=int, default=None, help="most furniture per room (default: 7)")
    parser.add_argument("--invalid-pose-fraction", type=float, default=None,
                        help="share of frames stored with -inf poses, like ScanNet's lost-tracking frames "
                             "(default: 0)")
    parser.add_argument("--val-fraction", type=float, default=None,
                        help="share of scenes in the val split (default: 0.25)")
    parser.add_argument("--clip-frames", type=int, default=None,
                        help="objects not visible within this many frames spread over the valid frames are "
                             "left out, so every answer can be seen in the clip `prepare` samples "
                             "(default: the recipe's data.prep.frames)")
    parser.add_argument("--overwrite", action="store_true",
                        help="allow writing into a non-empty --out folder; files with the same names are "
                             "replaced, other files are left alone (default: refuse)")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def build_synth_config(recipe: str, config_path: str | None, overrides: list[str],
                       flags: dict[str, int | float | None]) -> SynthConfig:
    """Recipe ← YAML ← `--set` overrides ← explicit flags (None = not given)."""
    flag_overrides = [f"data.synth.{key}={value}" for key, value in flags.items() if value is not None]
    return load_config(recipe, config_path, [*overrides, *flag_overrides]).data.synth


def summarise(dataset: SyntheticDataset, cfg: SynthConfig, seconds: float) -> dict[str, Any]:
    objects = Counter(o.label for scene in dataset.scenes for o in scene.objects)
    per_task: dict[str, dict[str, int]] = {}
    scene_split = {s.scene_id: s.split for s in dataset.scenes}
    for task, items in dataset.instructions.items():
        per_task[task] = dict(Counter(scene_split[i.scene_id] for i in items))
    return {
        "out": str(dataset.root),
        "scenes": len(dataset.scenes),
        "splits": {k: len(v) for k, v in dataset.splits.items()},
        "frames": cfg.frames * len(dataset.scenes),
        "invalid_pose_frames": sum(len(s.invalid_frame_ids) for s in dataset.scenes),
        "clip_frames": cfg.clip_frames,
        "color_size": [cfg.width, cfg.height],
        "depth_size": [cfg.depth_width, cfg.depth_height],
        "objects": sum(objects.values()),
        "objects_per_label": dict(sorted(objects.items())),
        "instructions": per_task,
        "seconds": round(seconds, 2),
    }


def run(args: argparse.Namespace) -> int:
    from vidllm.data.synthetic.generate import generate_dataset

    cfg = build_synth_config(args.recipe, args.config, args.overrides,
                             {key: getattr(args, key) for key in _FLAG_FIELDS})
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise VidLLMError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise VidLLMError(f"{out}: folder is not empty (pass --overwrite to write into it)")
    start = time.perf_counter()
    dataset = generate_dataset(out, cfg, progress=not args.no_progress, keep_depths=False)
    summary = summarise(dataset, cfg, time.perf_counter() - start)
    if args.json:
        print(json.dumps(summary))
        return 0
    w = sys.stdout.write
    w(f"wrote {summary['scenes']} scenes to {out} in {summary['seconds']} s "
      f"({', '.join(f'{k}: {v}' for k, v in summary['splits'].items())})\n")
    w(f"frames: {summary['frames']} ({summary['invalid_pose_frames']} with -inf poses), "
      f"colour {cfg.width}x{cfg.height}, depth {cfg.depth_width}x{cfg.depth_height}\n")
    w(f"every object is visible within {cfg.clip_frames or 'all'} frames spread over the valid frames\n")
    w(f"objects: {summary['objects']} ({', '.join(f'{k} {v}' for k, v in summary['objects_per_label'].items())})\n")
    w("instructions:\n")
    for task, counts in summary["instructions"].items():
        w(f"  {task:<13} {sum(counts.values()):>6}  ({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))})\n")
    return 0
