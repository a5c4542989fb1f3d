"""`vidllm serve` over real HTTP: repeated questions on one video (vision cache hits) vs questions on new videos.

    python benchmarks/serve.py [--recipe demo] [--requests 20] [--frames 60] [--width 320] [--height 240]

Builds a random-init model directory of the recipe (`vidllm init`), writes `requests + 1` distinct
videos, starts the deployment on a private local Ray at 127.0.0.1 (a free port), and sends
sequential POST /ask requests: first `requests` questions by video_id about one uploaded video
(each a cache hit: only the LLM runs), then one upload + question for each new video (each a
miss: decode, vision pass, LLM). Prints one JSON object: requests/s and p50/p95 latency of each
phase, and the server's cache counts.
"""

from __future__ import annotations

import argparse
import json
import platform
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

QUESTIONS = ["How many chairs are in the room?", "What color is the table?", "Where is the sofa?",
             "Is there a window near the door?"]


def _video(path: Path, seed: int, frames: int, width: int, height: int) -> Path:
    """A short pan over a smooth random pattern, different for every seed."""
    from vidllm.data.video import write_video

    rng = np.random.default_rng(seed)
    big = np.kron(rng.integers(0, 256, (height // 8 + 2, (width + frames * 2) // 8 + 2, 3)), np.ones((8, 8, 1)))
    images = np.stack([big[:height, 2 * i : 2 * i + width] for i in range(frames)]).astype(np.uint8)
    return write_video(path, images, fps=30)


def _summary(latencies: list[float], wall: float) -> dict:
    ms = np.array(latencies) * 1000
    return {"requests": len(latencies), "requests_per_s": round(len(latencies) / wall, 2),
            "p50_ms": round(float(np.percentile(ms, 50)), 1), "p95_ms": round(float(np.percentile(ms, 95)), 1),
            "mean_ms": round(float(ms.mean()), 1)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="demo", help="model recipe to init (default demo; tiny is faster)")
    parser.add_argument("--requests", type=int, default=20, help="requests per phase (default 20)")
    parser.add_argument("--frames", type=int, default=60, help="frames of each video (default 60)")
    parser.add_argument("--width", type=int, default=320, help="video width (default 320)")
    parser.add_argument("--height", type=int, default=240, help="video height (default 240)")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="answer length cap (default 16)")
    args = parser.parse_args()

    import httpx

    from vidllm.cli import main as vidllm
    from vidllm.serve import ServeSettings, start

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        root = Path(tmp)
        if vidllm(["init", "--recipe", args.recipe, "--out", str(root / "model")]) != 0:
            sys.exit("vidllm init failed")
        videos = [_video(root / f"v{i}.mp4", i, args.frames, args.width, args.height)
                  for i in range(args.requests + 2)]
        video_bytes = int(np.mean([v.stat().st_size for v in videos]))
        settings = ServeSettings(str(root / "model"), max_new_tokens=args.max_new_tokens,
                                 cache_size=args.requests + 4, timeout_s=600)
        server = start(settings, port=_free_port())
        try:
            with httpx.Client(base_url=server.url, timeout=600) as client:
                def ask(**kw) -> tuple[float, dict]:
                    start_s = time.perf_counter()
                    response = client.post("/ask", **kw)
                    response.raise_for_status()
                    return time.perf_counter() - start_s, response.json()

                # Warm-up (first-call allocations, the replica's lazy imports), on a video not measured.
                ask(params={"question": QUESTIONS[0]}, content=videos[-1].read_bytes(),
                    headers={"Content-Type": "video/mp4"})
                _, first = ask(params={"question": QUESTIONS[0]}, content=videos[0].read_bytes(),
                               headers={"Content-Type": "video/mp4"})
                repeated, start_s = [], time.perf_counter()
                for i in range(args.requests):
                    seconds, body = ask(json={"video_id": first["video_id"], "question": QUESTIONS[i % 4]})
                    assert body["cache"] == "hit"
                    repeated.append(seconds)
                repeated_wall = time.perf_counter() - start_s
                fresh, start_s = [], time.perf_counter()
                for i in range(args.requests):
                    seconds, body = ask(params={"question": QUESTIONS[i % 4]},
                                        content=videos[1 + i].read_bytes(), headers={"Content-Type": "video/mp4"})
                    assert body["cache"] == "miss"
                    fresh.append(seconds)
                fresh_wall = time.perf_counter() - start_s
                stats = client.get("/stats").json()
        finally:
            server.stop()
    same, new = _summary(repeated, repeated_wall), _summary(fresh, fresh_wall)
    print(json.dumps({
        "benchmark": "serve",
        "machine": f"{platform.machine()} {platform.python_version()}",
        "recipe": args.recipe, "model_frames": stats["model"]["frames"], "short_side": stats["model"]["short_side"],
        "video": {"frames": args.frames, "size": [args.width, args.height], "mean_bytes": video_bytes},
        "max_new_tokens": args.max_new_tokens,
        "same_video": same, "new_videos": new,
        "speedup_p50": round(new["p50_ms"] / same["p50_ms"], 2),
        "cache": stats["cache"],
    }))


if __name__ == "__main__":
    main()
