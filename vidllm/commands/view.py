"""`vidllm view RUN_DIR | MODEL_DIR VIDEO | PLY`: a local web page with the point cloud, cameras, boxes
and a question box (ask / ground) when a model is available."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from vidllm.commands.video_model import positive_int
from vidllm.errors import DataError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", type=Path, metavar="PATH",
                        help="RUN_DIR (a `vidllm evaluate` run directory), MODEL_DIR VIDEO (reconstruct your own "
                             "video and ask about it), or a PLY point cloud")
    parser.add_argument("--scene", default=None, help="RUN_DIR: the scene to show (default: the first)")
    parser.add_argument("--model", type=Path, default=None,
                        help="RUN_DIR: the model answering questions (default: RUN_DIR/model, if it exists)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=positive_int, default=8080,
                        help="port (default: 8080; the next free one if taken)")
    parser.add_argument("--frames", type=positive_int, default=None,
                        help="MODEL_DIR VIDEO: frames sampled from the video (default: the model's config)")
    parser.add_argument("--short-side", type=positive_int, default=None,
                        help="MODEL_DIR VIDEO: shorter image side fed to the model (default: the model's config)")
    parser.add_argument("--stride", type=positive_int, default=2,
                        help="MODEL_DIR VIDEO: keep every STRIDE-th depth pixel as a point (default: 2)")
    parser.add_argument("--max-new-tokens", type=positive_int, default=32,
                        help="longest answer, in tokens (default: 32)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, … (default: cuda when available)")


def _load(args: argparse.Namespace):
    """(ViewerScene, ModelSession | None) for the inputs."""
    from vidllm.artifacts.model_dir import CONFIG_NAME
    from vidllm.viewer import ModelSession, load_run_scene, run_session, scene_from_ply, scene_from_reconstruction

    def load_model(model_dir: Path):
        from vidllm.inference import VideoModel

        if not (model_dir / CONFIG_NAME).is_file():
            raise DataError(model_dir, f"not a model directory (no {CONFIG_NAME})")
        print(f"loading {model_dir} …", file=sys.stderr, flush=True)
        return VideoModel.load(model_dir, frames=args.frames, short_side=args.short_side, device=args.device,
                               max_new_tokens=args.max_new_tokens)

    if len(args.inputs) > 2:
        raise DataError(args.inputs[2], "expected RUN_DIR, MODEL_DIR VIDEO or a PLY file (at most two paths)")
    if len(args.inputs) == 2:
        from vidllm.data.video import probe_video

        model_dir, video = args.inputs
        probe_video(video)  # a bad video fails before the model loads
        model = load_model(model_dir)
        clip = model.load_video(video)
        print(f"reconstructing {video} ({len(clip.frame_indices)} frames) …", file=sys.stderr, flush=True)
        scene = scene_from_reconstruction(model.reconstruct(clip, point_stride=args.stride), video.name, clip)
        return scene, ModelSession(model, clip)
    [path] = args.inputs
    if path.is_file():
        return scene_from_ply(path), None
    if not path.is_dir():
        raise DataError(path, "not found (expected RUN_DIR, MODEL_DIR VIDEO or a PLY file)")
    if (path / CONFIG_NAME).is_file():
        raise DataError(path, "is a model directory: give a video too (vidllm view MODEL_DIR VIDEO)")
    run_scene = load_run_scene(path, args.scene)
    model_dir = args.model or run_scene.model_dir
    if model_dir is None:
        print(f"{path}: no model directory found; the question box is disabled (--model DIR)", file=sys.stderr)
        return run_scene.scene, None
    if run_scene.frames is None:
        print(f"{path}: the scene's geometry file holds no input frames; the question box is disabled",
              file=sys.stderr)
        return run_scene.scene, None
    return run_scene.scene, run_session(load_model(model_dir), run_scene, path)


def run(args: argparse.Namespace) -> int:
    from vidllm.viewer import build_viewer

    scene, session = _load(args)

    def interrupt(signum, frame):  # SIGTERM (a service manager, `kill`) stops as Ctrl-C does
        raise KeyboardInterrupt

    viewer = build_viewer(scene, session, host=args.host, port=args.port)
    # SIGINT too: a process started in the background by a shell inherits SIGINT ignored, and
    # Python then never raises KeyboardInterrupt, so Ctrl-C (or `kill -INT`) would not stop it.
    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        print(f"viewer: {viewer.url}  ({len(scene.points)} points; "
              f"questions {'on' if session else 'off'}; Ctrl-C to stop)", flush=True)
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        print("stopping the viewer", file=sys.stderr)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        viewer.stop()
    return 0
