"""`vidllm reconstruct VIDEO -o scene.ply`: a metric, coloured point cloud and camera poses from your own video."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vidllm.commands import video_model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    video_model.add_arguments(parser)
    parser.add_argument("-o", "--out", required=True, type=Path, help="point cloud to write (binary PLY)")
    parser.add_argument("--cameras", type=Path, default=None,
                        help="also write the cameras as JSON: camera-to-scene poses (OpenCV axes), intrinsics, "
                             "image size, source frame indices, scale (default: OUT with .cameras.json)")
    parser.add_argument("--stride", type=video_model.positive_int, default=2,
                        help="keep every STRIDE-th pixel of each depth map as a point (default: 2)")


def run(args: argparse.Namespace) -> int:
    from vidllm.artifacts.files import atomic_write_json
    from vidllm.inference import SCENE_FRAME

    model, clip = video_model.load(args)
    recon = model.reconstruct(clip, point_stride=args.stride)
    recon.write_ply(args.out)
    cameras = args.cameras or args.out.with_suffix(".cameras.json")
    atomic_write_json(cameras, {
        "video": str(args.video), "frame": SCENE_FRAME, "image_size": list(recon.image_size),
        "source_frame_indices": clip.frame_indices.tolist(), "scale": recon.scale,
        "camera_to_scene": recon.camera_to_scene.tolist(), "intrinsics": recon.intrinsics.tolist(),
    }, indent=1)
    summary = {"ply": str(args.out), "cameras": str(cameras), "points": int(len(recon.points)),
               "frames": len(clip.frame_indices), "scale": round(recon.scale, 4),
               "extent_m": [round(float(v), 3) for v in recon.extent], "seconds": round(recon.seconds, 3)}
    print(json.dumps(summary) if args.json else
          f"wrote {summary['points']} points to {args.out} and {len(clip.frame_indices)} cameras to {cameras} "
          f"({SCENE_FRAME}); extent {summary['extent_m']} m")
    return 0
