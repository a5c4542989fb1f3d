"""`vidllm serve --model DIR`: answer questions about uploaded videos over HTTP (Ray Serve on a local Ray)."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from vidllm.commands.video_model import positive_int

ENDPOINTS = """\
endpoints (JSON in and out; errors are {"error": ..., "status": ...}):
  POST /videos       upload a video; returns its video_id (the sha256 of its bytes)
  POST /ask          question about a video    → {"answer", "video_id", "cache", ...}
  POST /ground       phrase naming an object    → {"boxes": [[cx, cy, cz, dx, dy, dz], ...], "text", ...}
  POST /reconstruct  metric point cloud and cameras → {"points", "colors", "camera_to_scene",
                     "intrinsics", ...}; format=ply returns a binary PLY; stride=, max_points=
  GET  /stats        vision cache hits, misses and entries; limits; model settings

A video is sent as the raw request body (other fields in the query string), as a multipart
file field, or named by a JSON {"video_id": ...} from an earlier response. Each distinct video
is decoded and run through the vision pass once; later questions about it only run the LLM.
A client may send timeout_s to shorten (never lengthen) its deadline.

errors: 400 bad video or empty question/phrase, 404 unknown (or evicted) video_id,
413 upload or video over the limits, 504 past the timeout.

example:
  vidllm serve --model runs/a/model --port 8000
  curl -s --data-binary @kitchen.mp4 -H 'Content-Type: video/mp4' \\
       'http://127.0.0.1:8000/ask?question=How%20many%20chairs%20are%20there%3F'
  curl -s http://127.0.0.1:8000/ask -H 'Content-Type: application/json' \\
       -d '{"video_id": "<id from above>", "question": "What color is the sofa?"}'
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = ENDPOINTS
    parser.add_argument("--model", required=True, type=Path,
                        help="model directory (`vidllm train` output such as runs/a/model, or `vidllm init`)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=positive_int, default=8000, help="port to listen on (default: 8000)")
    parser.add_argument("--frames", type=positive_int, default=None,
                        help="frames sampled uniformly over each video (default: the model's config)")
    parser.add_argument("--short-side", type=positive_int, default=None,
                        help="shorter image side fed to the model (default: the model's config)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, … (default: cuda when available)")
    parser.add_argument("--max-new-tokens", type=positive_int, default=32,
                        help="answer length cap in tokens (default: 32)")
    parser.add_argument("--cache-size", type=positive_int, default=16,
                        help="videos whose vision pass is kept, least recently used dropped first (default: 16)")
    parser.add_argument("--max-upload-mb", type=float, default=200.0,
                        help="largest request body accepted, MiB (default: 200)")
    parser.add_argument("--max-video-frames", type=positive_int, default=36_000,
                        help="longest video accepted, in source frames (default: 36000)")
    parser.add_argument("--max-video-seconds", type=float, default=1200.0,
                        help="longest video accepted, seconds (default: 1200)")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="per-request limit in seconds; past it the client gets 504 (default: 60)")
    parser.add_argument("--num-cpus", type=positive_int, default=None,
                        help="CPUs of the local Ray instance (default: all)")


def run(args: argparse.Namespace) -> int:
    from vidllm.serve import ServeSettings, start

    settings = ServeSettings(
        model_dir=str(args.model), frames=args.frames, short_side=args.short_side, device=args.device,
        max_new_tokens=args.max_new_tokens, cache_size=args.cache_size,
        max_upload_bytes=max(1, int(args.max_upload_mb * 1024 * 1024)), max_video_frames=args.max_video_frames,
        max_video_seconds=args.max_video_seconds, timeout_s=args.timeout)
    print(f"loading {args.model} on a local Ray …", file=sys.stderr, flush=True)
    server = start(settings, host=args.host, port=args.port, num_cpus=args.num_cpus)
    print(f"serving {args.model} at {server.url} (endpoints: /videos /ask /ground /reconstruct /stats; "
          f"Ctrl-C stops)", flush=True)

    def interrupt(signum, frame):  # `kill PID` stops as cleanly as Ctrl-C
        raise KeyboardInterrupt

    # SIGINT too: a process started in the background by a shell inherits SIGINT ignored, and
    # Python then never raises KeyboardInterrupt, so "Ctrl-C stops" would not hold.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, interrupt)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopping …", file=sys.stderr, flush=True)
    finally:
        server.stop()
    return 0
