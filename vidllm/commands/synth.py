"""`vidllm synth --out DIR`: generate synthetic ScanNet-format scenes with benchmark annotations."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from vidllm.config import SynthConfig, load_config
from vidllm.errors import VidLLMError

_DEFAULTS = SynthConfig()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="output folder; gets scans/, annotations/ and scannetv2-labels.combined.tsv")
    parser.add_argument("--recipe", default=None, metavar="NAME",
                        help="take the data.synth defaults from this recipe (tiny/demo/paper) instead of "
                             "SynthConfig's defaults; the flags below still override")
    parser.add_argument("--scenes", type=int, default=None, help=f"number of scenes (default {_DEFAULTS.scenes})")
    parser.add_argument("--frames", type=int, default=None, help=f"frames per scene (default {_DEFAULTS.frames})")
    parser.add_argument("--width", type=int, default=None, help=f"colour width in pixels (default {_DEFAULTS.width})")
    parser.add_argument("--height", type=int, default=None,
                        help=f"colour height in pixels (default {_DEFAULTS.height})")
    parser.add_argument("--depth-width", type=int, default=None,
                        help="depth width in pixels (default: the colour width)")
    parser.add_argument("--depth-height", type=int, default=None,
                        help="depth height in pixels (default: the colour height)")
    parser.add_argument("--seed", type=int, default=None, help=f"random seed; same seed, same data (default {_DEFAULTS.seed})")
    parser.add_argument("--min-objects", type=int, default=None,
                        help=f"least furniture per room (default {_DEFAULTS.min_objects})")
    parser.add_argument("--max-objects", type=int, default=None,
                        help=f"most furniture per room (default {_DEFAULTS.max_objects})")
    parser.add_argument("--invalid-pose-fraction", type=float, default=None,
                        help="share of frames stored with -inf poses, like ScanNet's lost-tracking frames "
                             f"(default {_DEFAULTS.invalid_pose_fraction})")
    parser.add_argument("--val-fraction", type=float, default=None,
                        help=f"share of scenes in the val split (default {_DEFAULTS.val_fraction})")
    parser.add_argument("--overwrite", action="store_true",
                        help="allow writing into a non-empty --out folder; files with the same names are "
                             "replaced, other files are left alone (default: refuse)")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def build_synth_config(args: argparse.Namespace) -> SynthConfig:
    base = load_config(args.recipe).data.synth if args.recipe else SynthConfig()
    values = base.model_dump()
    for key in ("scenes", "frames", "width", "height", "seed", "min_objects", "max_objects",
                "invalid_pose_fraction", "val_fraction"):
        if getattr(args, key) is not None:
            values[key] = getattr(args, key)
    # Depth follows the colour size unless asked otherwise (or set by the recipe).
    values["depth_width"] = args.depth_width or (values["width"] if args.width else values["depth_width"])
    values["depth_height"] = args.depth_height or (values["height"] if args.height else values["depth_height"])
    if values["max_objects"] < values["min_objects"]:
        raise VidLLMError(f"--max-objects ({values['max_objects']}) is below --min-objects ({values['min_objects']})")
    try:
        return SynthConfig(**values)
    except ValidationError as exc:
        problems = "; ".join(f"--{'-'.join(map(str, e['loc'])).replace('_', '-')}: {e['msg']} (got {e.get('input')!r})"
                             for e in exc.errors())
        raise VidLLMError(f"invalid synth settings: {problems}") from None


def summarise(dataset: Any, cfg: SynthConfig, seconds: float) -> dict[str, Any]:
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
        "color_size": [cfg.width, cfg.height],
        "depth_size": [cfg.depth_width, cfg.depth_height],
        "objects": sum(objects.values()),
        "objects_per_label": dict(sorted(objects.items())),
        "instructions": per_task,
        "seconds": round(seconds, 2),
    }


def run(args: argparse.Namespace) -> int:
    from vidllm.data.synthetic import generate_dataset

    cfg = build_synth_config(args)
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
    w(f"objects: {summary['objects']} ({', '.join(f'{k} {v}' for k, v in summary['objects_per_label'].items())})\n")
    w("instructions:\n")
    for task, counts in summary["instructions"].items():
        w(f"  {task:<13} {sum(counts.values()):>6}  ({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))})\n")
    return 0
