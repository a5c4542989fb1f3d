"""Cost of the training losses at a given clip size (CPU by default).

Prints JSON: forward + backward time (median of repeats) of the Stage-2 reconstruction terms
(camera, depth, point map — with the confidence, quantile and multi-scale gradient parts),
L_MD (eq. 9) and the Stage-1 distillation loss (eq. 5–7, structural term on a token sample),
on random tensors shaped like the model's outputs. Defaults are the paper's clip: 32 frames
at 518×518, 37×37 patches, 1024-d teacher features, 256 sampled tokens for L_sc.

    python benchmarks/losses.py --frames 32 --size 518 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time


def _timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=32, help="frames per clip (default: 32)")
    parser.add_argument("--size", type=int, default=518, help="square image side in pixels (default: 518)")
    parser.add_argument("--patch", type=int, default=14, help="patch size (default: 14)")
    parser.add_argument("--channels", type=int, default=1024, help="teacher feature width (default: 1024)")
    parser.add_argument("--sc-tokens", type=int, default=256, help="tokens sampled for L_sc (default: 256)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats per measurement, median (default: 3)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    args = parser.parse_args()

    import torch

    from vidllm.losses import camera_loss, depth_loss, distill_loss, metric_depth_loss, point_loss

    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    s, hw = args.frames, args.size
    gt_depth = 0.5 + torch.rand(1, s, hw, hw, generator=gen)
    mask = torch.rand(1, s, hw, hw, generator=gen) > 0.1
    depth = (gt_depth * (1 + 0.1 * torch.randn(1, s, hw, hw, generator=gen))).requires_grad_()
    conf = (1 + torch.rand(1, s, hw, hw, generator=gen)).requires_grad_()
    gt_points = torch.randn(1, s, hw, hw, 3, generator=gen)
    points = (gt_points + 0.05 * torch.randn(1, s, hw, hw, 3, generator=gen)).requires_grad_()
    gt_pose = torch.randn(1, s, 9, generator=gen)
    poses = [(gt_pose + 0.1 * torch.randn(1, s, 9, generator=gen)).requires_grad_() for _ in range(4)]
    grid = (hw // args.patch) ** 2
    teacher_geo = torch.randn(1, s, grid, args.channels, generator=gen)
    teacher_lang = torch.randn(1, s, grid, args.channels, generator=gen)
    student_geo = torch.randn(1, s, grid, args.channels, generator=gen).requires_grad_()
    student_lang = torch.randn(1, s, grid, args.channels, generator=gen).requires_grad_()

    def backward(value: torch.Tensor) -> None:
        value.backward()

    timings = {
        "camera_s": _timed(lambda: backward(camera_loss(poses, gt_pose)["total"]), args.repeats),
        "depth_s": _timed(lambda: backward(depth_loss(depth, conf, gt_depth, mask)["total"]), args.repeats),
        "point_s": _timed(lambda: backward(point_loss(points, conf, gt_points, mask)["total"]), args.repeats),
        "metric_depth_s": _timed(lambda: backward(metric_depth_loss(depth, gt_depth, mask)), args.repeats),
        "distill_s": _timed(
            lambda: backward(distill_loss(student_geo, student_lang, teacher_geo, teacher_lang,
                                          sc_tokens=args.sc_tokens, generator=gen)["total"]),
            args.repeats,
        ),
    }
    print(json.dumps({
        "benchmark": "losses_forward_backward",
        "frames": s, "image_size": hw, "pixels": s * hw * hw, "tokens_per_scene": s * grid,
        "channels": args.channels, "sc_tokens": args.sc_tokens, "threads": args.threads,
        "torch": torch.__version__, "machine": platform.machine(),
        **{k: round(v, 4) for k, v in timings.items()},
    }, indent=2))


if __name__ == "__main__":
    main()
