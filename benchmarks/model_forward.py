"""Forward time and peak memory of the reconstruction branch versus the number of frames.

Each (part, frame count) runs in a fresh subprocess so peak RSS (`ru_maxrss`) belongs to that
measurement alone. Peak memory is reported as the rise of max RSS during the timed forward
passes over the RSS after building the model and inputs (`peak_forward_mib`), plus the
per-frame ratio and the marginal MiB per extra frame (flat = memory linear in frames).
`--attention math` forces the naive kernel (materialises the S·T × S·T scores) for contrast.

    python benchmarks/model_forward.py --recipe demo --frames 4 8 16 32
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _worker(args: argparse.Namespace) -> dict:
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from vidllm.config import load_config
    from vidllm.models.reconstruction import ReconstructionBranch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = load_config(args.recipe).model
    height, width = cfg.image_size
    channels, patch = cfg.encoder.hidden_size, cfg.encoder.patch_size
    grid = (height // patch, width // patch)
    branch = ReconstructionBranch(cfg, in_dim=channels).eval()
    tokens = torch.randn(1, args.frames, grid[0] * grid[1], channels)
    images = torch.rand(1, args.frames, 3, height, width)

    def run() -> None:
        if args.part == "aggregator":
            branch.aggregator(tokens, grid)
        else:
            branch(tokens, images, tokens)

    backends = [SDPBackend.MATH] if args.attention == "math" else [
        SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    times = []
    with torch.no_grad(), sdpa_kernel(backends):
        baseline = _maxrss_mib()
        run()  # warm-up (also counts towards the peak: same work)
        for _ in range(args.repeats):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
    peak = _maxrss_mib()
    return {
        "part": args.part, "attention": args.attention, "recipe": args.recipe, "frames": args.frames,
        "image_hw": [height, width], "tokens_per_frame": grid[0] * grid[1] + 1 + cfg.aggregator.num_register_tokens,
        "forward_s_min": round(min(times), 4), "forward_s_median": round(sorted(times)[len(times) // 2], 4),
        "rss_before_forward_mib": round(baseline, 1), "peak_forward_mib": round(peak - baseline, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="demo", help="config recipe (default: demo)")
    parser.add_argument("--frames", type=int, nargs="+", default=[4, 8, 16, 32],
                        help="frame counts (default: 4 8 16 32)")
    parser.add_argument("--parts", nargs="+", default=["recon", "aggregator"], choices=["recon", "aggregator"],
                        help="whole branch and/or aggregator only (default: both)")
    parser.add_argument("--attention", nargs="+", default=["sdpa"], choices=["sdpa", "math"],
                        help="sdpa = fused kernels (default); math = naive attention, for contrast")
    parser.add_argument("--repeats", type=int, default=3, help="timed forwards per measurement (default: 3)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--part", default="recon", help=argparse.SUPPRESS)
    parser.add_argument("--frames-one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.frames, args.attention = args.frames_one, args.attention[0]
        print(json.dumps(_worker(args)))
        return 0

    results = []
    for attention in args.attention:
        for part in args.parts:
            for frames in args.frames:
                cmd = [sys.executable, __file__, "--worker", "--recipe", args.recipe, "--part", part,
                       "--attention", attention, "--frames-one", str(frames), "--repeats", str(args.repeats),
                       "--threads", str(args.threads)]
                proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
                if proc.returncode != 0:
                    print(proc.stderr, file=sys.stderr)
                    return 1
                row = json.loads(proc.stdout.strip().splitlines()[-1])
                row["peak_forward_mib_per_frame"] = round(row["peak_forward_mib"] / frames, 2)
                results.append(row)
                print(f"{attention} {part} S={frames}: {row['forward_s_min']} s, +{row['peak_forward_mib']} MiB",
                      file=sys.stderr)
    # Marginal memory per extra frame between consecutive frame counts: flat = linear growth.
    for prev, row in zip(results, results[1:]):
        if (prev["part"], prev["attention"]) == (row["part"], row["attention"]) and row["frames"] > prev["frames"]:
            row["marginal_mib_per_frame"] = round(
                (row["peak_forward_mib"] - prev["peak_forward_mib"]) / (row["frames"] - prev["frames"]), 2)
    print(json.dumps({"benchmark": "model_forward", "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
