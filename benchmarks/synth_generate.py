"""Time synthetic-scene generation: ray casting alone, and the full write (.sens, mesh, annotations).

    python benchmarks/synth_generate.py [--scenes 2] [--frames 32] [--width 320] [--height 240]

Prints one JSON object: render-only frames/s (colour + depth grids cast separately when their
sizes differ) and the end-to-end seconds per scene of `generate_dataset`.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=2, help="scenes to generate (default 2)")
    parser.add_argument("--frames", type=int, default=32, help="frames per scene (default 32)")
    parser.add_argument("--width", type=int, default=320, help="colour and depth width (default 320)")
    parser.add_argument("--height", type=int, default=240, help="colour and depth height (default 240)")
    args = parser.parse_args()

    from vidllm.config import SynthConfig
    from vidllm.data.synthetic import room_layout
    from vidllm.data.synthetic.generate import _surface_tables, generate_dataset, intrinsic_matrix
    from vidllm.data.synthetic.raycast import cast_view, shade

    rng = np.random.default_rng(0)
    layout = room_layout.sample_layout(rng, 5, 7)
    poses = room_layout.camera_walk(rng, layout, args.frames)
    k = intrinsic_matrix(args.width, args.height)
    lo = np.array([f.lo for f in layout.furniture], np.float32)
    hi = np.array([f.hi for f in layout.furniture], np.float32)
    albedo, checker, pattern, dark = _surface_tables(layout)
    start = time.perf_counter()
    for pose in poses:
        hits = cast_view(pose, k, args.width, args.height, np.zeros(3, np.float32), layout.size.astype(np.float32), lo, hi)
        shade(hits, albedo, checker, pattern, dark)
    render_s = time.perf_counter() - start

    cfg = SynthConfig(scenes=args.scenes, frames=args.frames, width=args.width, height=args.height,
                      depth_width=args.width, depth_height=args.height)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        dataset = generate_dataset(tmp, cfg, progress=False, keep_depths=False)
        total_s = time.perf_counter() - start
        instructions = sum(len(v) for v in dataset.instructions.values())
    print(json.dumps({
        "benchmark": "synth_generate",
        "machine": f"{platform.machine()} {platform.python_version()}",
        "frames": args.frames, "size": [args.width, args.height], "furniture": len(layout.furniture),
        "render_seconds": round(render_s, 3), "render_frames_per_s": round(args.frames / render_s, 1),
        "scenes": args.scenes, "generate_seconds": round(total_s, 3),
        "generate_seconds_per_scene": round(total_s / args.scenes, 3), "instructions": instructions,
    }))


if __name__ == "__main__":
    main()
