"""Arguments and loading shared by the own-video commands (`ask`, `ground`, `reconstruct`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("video", type=Path, help="video file (.mp4, .mov, .mkv, .webm, … anything FFmpeg decodes)")
    parser.add_argument("--model", required=True, type=Path,
                        help="model directory (`vidllm train` output such as runs/a/model, or `vidllm init`)")
    parser.add_argument("--frames", type=positive_int, default=None,
                        help="frames sampled uniformly over the video (default: the model's config, "
                             "model.frames: 32 for the paper recipe)")
    parser.add_argument("--short-side", type=positive_int, default=None,
                        help="shorter image side fed to the model (default: the shorter side of the model's "
                             "model.image_size: 518 for the paper recipe)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, … (default: cuda when available)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def load(args: argparse.Namespace, max_new_tokens: int = 32):
    """(VideoModel, VideoClip) for the parsed arguments; says what it does on stderr."""
    from vidllm.data.video import probe_video
    from vidllm.inference import VideoModel

    probe_video(args.video)  # a bad video fails before the model loads
    print(f"loading {args.model} …", file=sys.stderr, flush=True)
    model = VideoModel.load(args.model, frames=args.frames, short_side=args.short_side, device=args.device,
                            max_new_tokens=max_new_tokens)
    clip = model.load_video(args.video)
    width, height = clip.images.shape[-1], clip.images.shape[-2]
    print(f"{args.video}: {len(clip.frame_indices)} frames (source frames {clip.frame_indices[0]}…"
          f"{clip.frame_indices[-1]}) at {width}x{height}", file=sys.stderr, flush=True)
    return model, clip
