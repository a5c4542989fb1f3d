"""`make demo`: the pipeline end to end on the embedded default (synthetic ScanNet-format data).

    python -m vidllm.demo --out demo_out [--recipe demo] [--scenes N]

Steps (each one is the library function the matching CLI command calls):
  1. synth     generate ScanNet-format scenes + benchmark annotations
  2. inspect   read one scene back through the ScanNet readers
  3. prepare   sample clips into WebDataset shards with a manifest (Ray Data, local Ray)
Each step prints what it did; outputs stay under --out so a second run reuses them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from vidllm.config import load_config


def _step(title: str) -> float:
    print(f"\n== {title}", flush=True)
    return time.monotonic()


def _done(start: float) -> None:
    print(f"   ({time.monotonic() - start:.1f} s)", flush=True)


def run_demo(out: Path, recipe: str = "demo", scenes: int | None = None, overrides: list[str] | None = None) -> dict:
    from vidllm.data.scannet import load_scene
    from vidllm.data.synthetic import generate_dataset

    cfg = load_config(recipe, overrides=overrides)
    if scenes is not None:
        cfg.data.synth.scenes = scenes
    out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"recipe": cfg.recipe}

    t = _step(f"1/3 synth: {cfg.data.synth.scenes} scenes × {cfg.data.synth.frames} frames "
              f"at {cfg.data.synth.width}×{cfg.data.synth.height}")
    data_dir = out / "data"
    dataset = generate_dataset(data_dir, cfg.data.synth, progress=True, keep_depths=False)
    counts = {task: len(items) for task, items in sorted(dataset.instructions.items())}
    print(f"   {len(dataset.scenes)} scenes in {dataset.scan_dir}; instructions per task: {counts}")
    summary["synth"] = {"scenes": len(dataset.scenes), "instructions": counts}
    _done(t)

    t = _step("2/3 inspect: the first scene through the ScanNet readers")
    with load_scene(dataset.scenes[0].path, label_map=dataset.label_map) as scene:
        print(f"   {scene.scene_id}: {scene.num_frames} frames ({len(scene.valid_frame_ids)} valid), "
              f"colour {scene.color_size}, depth {scene.depth_size}, {len(scene.objects)} objects")
        for obj in scene.objects:
            box = ", ".join(f"{v:.2f}" for v in obj.box)
            print(f"     object {obj.object_id:2d} {obj.label:<12} box [{box}]")
        summary["inspect"] = {"scene_id": scene.scene_id, "objects": len(scene.objects)}
    _done(t)

    t = _step(f"3/3 prepare: {cfg.data.prep.frames}-frame clips, short side {cfg.data.prep.short_side} "
              "→ WebDataset shards (Ray Data, local Ray)")
    from preprocessing.prepare import prepare_shards

    shards = out / "shards"
    prep = prepare_shards(str(dataset.scan_dir), dataset.annotations_dir, str(shards), cfg.data.prep,
                          label_map=str(dataset.label_map))
    print(f"   {prep.line()}")
    if prep.failed:
        for scene_id, cause in prep.failed.items():
            print(f"   FAILED {scene_id}: {cause}", file=sys.stderr)
        raise SystemExit(1)
    summary["prepare"] = {"ok": len(prep.ok), "skipped": len(prep.skipped), "frames": prep.frames_written}
    _done(t)

    (out / "demo_summary.json").write_text(json.dumps(summary, indent=2))
    print(f"\nsummary written to {out / 'demo_summary.json'}")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vidllm.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder (default demo_out)")
    parser.add_argument("--recipe", default="demo", help="config recipe (default demo)")
    parser.add_argument("--scenes", type=int, default=None, help="number of synthetic scenes (default: recipe)")
    parser.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. -o data.prep.frames=8 (repeatable)")
    args = parser.parse_args(argv)
    run_demo(args.out, args.recipe, args.scenes, args.override)
    return 0


if __name__ == "__main__":
    sys.exit(main())
