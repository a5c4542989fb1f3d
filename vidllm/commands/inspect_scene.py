"""`vidllm inspect PATH`: summarise a ScanNet scene folder or `.sens` file."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import numpy as np

from vidllm.data.scannet.scans import ScanNetScene, load_scene


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "path",
        help="raw scan folder (sceneXXXX_XX/ with .sens), a .sens file, an official export folder "
        "(color/ depth/ pose/ intrinsic/) or a posed_images/<scene> folder",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument(
        "--label-map",
        default=None,
        metavar="TSV",
        help="scannetv2-labels.combined.tsv to add nyu40 ids to objects (default: none)",
    )
    parser.add_argument(
        "--check-frames",
        action="store_true",
        help="decode every valid frame (colour and depth) to verify the payloads and report depth "
        "statistics; slow on full scans (default: off, only headers and poses are read)",
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="hide progress bars (default: shown on a terminal)"
    )


def _matrix(m: np.ndarray) -> list[list[float]]:
    return [[float(v) for v in row] for row in np.asarray(m)]


def check_frames(scene: ScanNetScene, progress: bool) -> dict[str, Any]:
    """Decode all valid frames; depth statistics over valid (non-zero) pixels."""
    from tqdm import tqdm

    valid_pixels = total_pixels = 0
    depth_min, depth_max = np.inf, 0.0
    for frame_id in tqdm(scene.valid_frame_ids, desc="decoding frames", unit="frame", disable=not progress):
        scene.read_color(int(frame_id))
        depth = scene.read_depth(int(frame_id))
        valid = depth[depth > 0]
        valid_pixels += valid.size
        total_pixels += depth.size
        if valid.size:
            depth_min = min(depth_min, float(valid.min()))
            depth_max = max(depth_max, float(valid.max()))
    return {
        "frames_decoded": int(len(scene.valid_frame_ids)),
        "valid_depth_fraction": valid_pixels / total_pixels if total_pixels else 0.0,
        "depth_range_m": [depth_min, depth_max] if valid_pixels else None,
    }


def scene_summary(scene: ScanNetScene) -> dict[str, Any]:
    return {
        "scene_id": scene.scene_id,
        "layout": scene.layout,
        "num_frames": scene.num_frames,
        "num_valid_frames": int(len(scene.valid_frame_ids)),
        "dropped_frame_ids": list(scene.dropped_frame_ids),
        "valid_frame_ids": [int(i) for i in scene.valid_frame_ids],
        "color_size": list(scene.color_size),
        "depth_size": list(scene.depth_size),
        "depth_shift": scene.depth_shift,
        "intrinsic_color": _matrix(scene.intrinsic_color),
        "intrinsic_depth": _matrix(scene.intrinsic_depth),
        "camera_to_world": [_matrix(m) for m in scene.camera_to_world],
        "axis_alignment": _matrix(scene.axis_alignment),
        "objects": [
            {
                "object_id": o.object_id,
                "label": o.label,
                "nyu40_id": o.nyu40_id,
                "box": [float(v) for v in o.box],
                "num_vertices": o.num_vertices,
            }
            for o in scene.objects
        ],
        "warnings": list(scene.warnings),
    }


def _print_text(summary: dict[str, Any]) -> None:
    k = np.asarray(summary["intrinsic_color"])
    kd = np.asarray(summary["intrinsic_depth"])
    poses = np.asarray(summary["camera_to_world"]).reshape(-1, 4, 4)
    print(f"scene        {summary['scene_id']}  ({summary['layout']})")
    print(
        f"frames       {summary['num_frames']} total, {summary['num_valid_frames']} valid, "
        f"{len(summary['dropped_frame_ids'])} dropped (invalid pose)"
    )
    if summary["dropped_frame_ids"]:
        shown = summary["dropped_frame_ids"][:20]
        more = " ..." if len(summary["dropped_frame_ids"]) > 20 else ""
        print(f"dropped ids  {' '.join(map(str, shown))}{more}")
    w, h = summary["color_size"]
    dw, dh = summary["depth_size"]
    print(f"colour       {w}x{h}  fx={k[0, 0]:.2f} fy={k[1, 1]:.2f} cx={k[0, 2]:.2f} cy={k[1, 2]:.2f}")
    print(f"depth        {dw}x{dh}  fx={kd[0, 0]:.2f} fy={kd[1, 1]:.2f} cx={kd[0, 2]:.2f} cy={kd[1, 2]:.2f}")
    print(f"depth shift  {summary['depth_shift']:g} (raw units per metre)")
    if len(poses):
        centres = poses[:, :3, 3]
        path_length = float(np.linalg.norm(np.diff(centres, axis=0), axis=1).sum())
        lo, hi = centres.min(axis=0), centres.max(axis=0)
        print(
            f"trajectory   length {path_length:.2f} m, camera centres in "
            f"[{lo[0]:.2f},{hi[0]:.2f}] x [{lo[1]:.2f},{hi[1]:.2f}] x [{lo[2]:.2f},{hi[2]:.2f}] m"
        )
    aligned = np.allclose(summary["axis_alignment"], np.eye(4))
    print(f"axis align   {'identity' if aligned else 'present'}")
    if "frame_check" in summary:
        fc = summary["frame_check"]
        rng = fc["depth_range_m"]
        rng_text = f"{rng[0]:.3f}..{rng[1]:.3f} m" if rng else "no valid depth"
        print(
            f"frame check  {fc['frames_decoded']} frames decoded, valid depth "
            f"{100 * fc['valid_depth_fraction']:.1f}%, {rng_text}"
        )
    print(f"objects      {len(summary['objects'])}")
    for o in summary["objects"]:
        cx, cy, cz, dx, dy, dz = o["box"]
        nyu = f" nyu40={o['nyu40_id']}" if o["nyu40_id"] is not None else ""
        print(
            f"  {o['object_id']:>4}  {o['label']:<20}{nyu}  centre ({cx:.2f}, {cy:.2f}, {cz:.2f})  "
            f"size ({dx:.2f}, {dy:.2f}, {dz:.2f})"
        )
    for warning in summary["warnings"]:
        print(f"warning      {warning}")


def run(args: argparse.Namespace) -> int:
    progress = not args.no_progress and sys.stderr.isatty()
    with load_scene(args.path, label_map=args.label_map, progress=progress) as scene:
        summary = scene_summary(scene)
        if args.check_frames:
            summary["frame_check"] = check_frames(scene, progress)
    if args.json:
        json.dump(summary, sys.stdout)
        sys.stdout.write("\n")
    else:
        _print_text(summary)
    return 0
