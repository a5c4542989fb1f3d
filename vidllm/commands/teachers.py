"""`vidllm teachers`: compute the Stage-1 teacher features of a shard dataset into the content-addressed cache."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from vidllm.config import add_config_options, config_from_args


def add_common_teacher_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--geometry-teacher", default=None, metavar="DIR",
                        help="geometry teacher: a saved Dinov2Model (VGGT's DINO patch embed) directory "
                             "(default: config teachers.geometry)")
    parser.add_argument("--semantic-teacher", default=None, metavar="DIR",
                        help="semantic teacher: a saved CLIPVisionModel directory (default: config teachers.semantic)")
    parser.add_argument("--init-random", default=None, metavar="DIR",
                        help="fill unset teachers from DIR, writing them if missing: random-init ones sized by the "
                             "recipe (teachers.random_*), or with teachers.miniatures=true the miniature pretrained "
                             "teachers and VGGT (trained once into DIR/miniature, then reused); for runs without "
                             "downloaded weights")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shards", required=True, metavar="DIR_OR_URI", help="shard dataset (folder or s3:// prefix)")
    parser.add_argument("--cache", required=True, metavar="DIR_OR_URI",
                        help="teacher feature cache (folder or s3:// prefix); present keys are never recomputed")
    add_config_options(parser, set_help="dotted config override, repeatable (e.g. teachers.semantic_image_size=336)")
    add_common_teacher_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def resolve_teachers(args: argparse.Namespace, cfg):
    """cfg with the command-line teacher options applied: explicit --*-teacher directories, then
    `--init-random DIR` fills whatever is unset (`vidllm.pretrain.fill_teachers`: the miniature
    pretrained teachers with teachers.miniatures, which also set model.init.vggt; else random-init)."""
    updates = {k: v for k, v in (("geometry", args.geometry_teacher), ("semantic", args.semantic_teacher)) if v}
    if updates:
        cfg = cfg.model_copy(update={"teachers": cfg.teachers.model_copy(update=updates)})
    if args.init_random:
        from vidllm.pretrain import fill_teachers

        cfg = fill_teachers(cfg, args.init_random, progress=not getattr(args, "no_progress", False))
    return cfg


def run(args: argparse.Namespace) -> int:
    import torch

    from vidllm.data.teacher_cache import build_teacher_cache

    cfg = config_from_args(args)
    teachers = resolve_teachers(args, cfg).teachers
    with torch.no_grad():  # a context, not a global switch: run() is also called in-process
        summary = build_teacher_cache(args.shards, args.cache, teachers, progress=not args.no_progress)
    print(json.dumps(asdict(summary)) if args.json else summary.line())
    return 0
