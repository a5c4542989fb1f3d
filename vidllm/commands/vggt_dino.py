"""`vidllm vggt-dino`: a VGGT checkpoint's DINO patch embed as a Dinov2 directory.

That directory is the Stage-1 geometry teacher (`teachers.geometry`, or `vidllm teachers
--geometry-teacher DIR`): the features VGGT's aggregator was trained on, which Stage 1 distils
into the shared encoder's geometry stream.

    vidllm vggt-dino pretrained/vggt-1b.safetensors --out pretrained/vggt-1b-dino
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vidllm.commands.video_model import positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, help="VGGT checkpoint (.safetensors, or a weights-only torch file)")
    parser.add_argument("--out", required=True, type=Path, help="directory to write (replaced if it exists)")
    parser.add_argument("--num-heads", type=positive_int, default=None,
                        help="attention heads of the DINO blocks (default: width / 64, as DINOv2: 16 for ViT-L)")


def run(args: argparse.Namespace) -> int:
    from vidllm.models.convert import export_vggt_dino

    out = export_vggt_dino(args.checkpoint, args.out, args.num_heads)
    print(f"wrote {out} (Dinov2WithRegistersModel from {args.checkpoint})")
    return 0
