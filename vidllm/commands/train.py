"""`vidllm train --stage 1|2`: Stage-1 distillation or Stage-2 joint training, single process or Ray Train."""

from __future__ import annotations

import argparse
import json

from vidllm.config import add_config_options, config_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from vidllm.commands.teachers import add_common_teacher_arguments

    parser.add_argument("--stage", type=int, choices=(1, 2), required=True,
                        help="1 = dual-teacher distillation of encoder + CTA; 2 = joint training with LoRA")
    parser.add_argument("--shards", required=True, metavar="DIR_OR_URI", help="shard dataset (folder or s3:// prefix)")
    parser.add_argument("--run-dir", required=True, metavar="DIR",
                        help="run directory: config.yaml, train_log.csv, checkpoints/, stage1_model/ or model/; "
                             "re-running with the same directory resumes from the latest intact checkpoint "
                             "(refused if the config changed: see --fresh)")
    parser.add_argument("--fresh", action="store_true",
                        help="delete this stage's checkpoints in --run-dir (and its Ray Train run, if local) and "
                             "start over, e.g. after changing the config")
    parser.add_argument("--teacher-cache", default=None, metavar="DIR_OR_URI",
                        help="teacher feature cache written by `vidllm teachers` (stage 1, required)")
    parser.add_argument("--init-model", default=None, metavar="DIR",
                        help="starting weights: stage 1 takes a model or stage-1 directory (encoder + CTA); "
                             "stage 2 takes RUN_DIR/stage1_model or a `vidllm init` directory "
                             "(default: random init / the config's pretrained paths)")
    add_config_options(parser, set_help="dotted config override, repeatable (e.g. train.stage1.steps=100)")
    parser.add_argument("--ray", action="store_true",
                        help="run as a Ray Train job (train.num_workers workers, train.strategy ddp/fsdp, checkpoints "
                             "under train.storage_path); RAY_ADDRESS selects a cluster (default: single process)")
    add_common_teacher_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    from vidllm.commands.teachers import resolve_teachers
    from vidllm.errors import VidLLMError
    from vidllm.train import train_stage1, train_stage2

    cfg = config_from_args(args)
    if args.stage == 1:
        if not args.teacher_cache:
            raise VidLLMError("--teacher-cache is required for stage 1 (build it with `vidllm teachers`)")
        cfg = resolve_teachers(args, cfg)
        result = train_stage1(cfg, args.shards, args.teacher_cache, args.run_dir, init_model=args.init_model,
                              use_ray=args.ray, progress=not args.no_progress, fresh=args.fresh)
    else:
        result = train_stage2(cfg, args.shards, args.run_dir, init_model=args.init_model, use_ray=args.ray,
                              progress=not args.no_progress, fresh=args.fresh)
    if args.json:
        print(json.dumps({"model_dir": str(result.model_dir), "steps": result.steps,
                          "final_losses": result.final_losses}))
    else:
        losses = ", ".join(f"{k} {v:.4f}" for k, v in result.final_losses.items() if k in ("total", "geo", "lang", "sc",
                                                                                          "recon", "vl", "md"))
        print(f"stage {args.stage}: {result.steps} steps → {result.model_dir} ({losses})")
    return 0
