"""The `vidllm` command.

Each sub-command lives in `vidllm/commands/<name>.py` with `add_arguments(parser)` and
`run(args) -> int`; it is imported only when used, so `vidllm --help` stays fast and the
inference commands never import Ray, Prefect or DVC.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

from vidllm.config import ConfigError
from vidllm.errors import VidLLMError

# name -> (module under vidllm.commands, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("synth", "generate synthetic ScanNet-format scenes with benchmark annotations"),
    "inspect": ("inspect_scene", "summarise a ScanNet scene folder or .sens file"),
    "prepare": ("prepare", "sample frames into WebDataset shards with a manifest (Ray Data)"),
    "shards-info": ("shards_info", "summarise a shard directory or s3:// prefix"),
    "init": ("init_model", "write a model directory for a recipe, assembled from pretrained parts "
                           "(--stage1, --vggt, --llm; random init for the rest)"),
    "vggt-dino": ("vggt_dino", "write a VGGT checkpoint's DINO patch embed as a Dinov2 directory (geometry teacher)"),
    "teachers": ("teachers", "compute Stage-1 teacher features into the content-addressed cache"),
    "pretrain-teachers": ("pretrain_teachers", "train a miniature VGGT and CLIP on synthetic scenes, saved in "
                                               "their native formats (no downloads)"),
    "train": ("train", "Stage-1 distillation or Stage-2 joint training (single process or Ray Train)"),
    "plan": ("plan", "parameter counts, memory and FLOPs of a recipe, built on the meta device"),
    "predict": ("predict", "run a model on a benchmark's shards and write predictions JSONL"),
    "score": ("score", "score a predictions JSONL against benchmark ground truth"),
    "evaluate": ("evaluate", "predict + score every benchmark on a split and write RUN_DIR/metrics.json"),
    "report": ("report", "write a paper-style markdown/HTML report with plots for a run"),
    "ask": ("ask", "answer a question about the scene in your own video"),
    "reconstruct": ("reconstruct", "metric point cloud (PLY) and camera poses from your own video"),
    "ground": ("ground", "3D boxes of the object a phrase refers to, from your own video"),
    "serve": ("serve", "HTTP server (Ray Serve) for ask / ground / reconstruct on uploaded videos, each video "
                       "encoded once"),
    "verify": ("verify", "check model directories, checkpoints and run directories against their recorded "
                         "sha256 digests"),
    "ablate": ("ablate", "train variants of a recipe (full, blind, ...) on the same data and compare them on "
                         "held-out scenes"),
    "view": ("view", "interactive 3D viewer (a local web page): point cloud, cameras, boxes, questions to the model"),
}


def _available() -> dict[str, tuple[str, str]]:
    return {
        name: spec
        for name, spec in COMMANDS.items()
        if importlib.util.find_spec(f"vidllm.commands.{spec[0]}") is not None
    }


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vidllm",
        description="Vid-LLM: metric 3D reconstruction and 3D reasoning from plain video.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in _available().items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:  # only the chosen command's module is imported
            importlib.import_module(f"vidllm.commands.{module}").add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    available = _available()
    parser = build_parser(command if command in available else None)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    module = importlib.import_module(f"vidllm.commands.{available[args.command][0]}")
    try:
        return int(module.run(args) or 0)
    except (VidLLMError, ConfigError) as exc:
        print(f"vidllm {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # an S3 failure raised outside vidllm.artifacts.storage (e.g. inside Ray Data)
        from vidllm.artifacts.storage import describe_s3_error

        message = describe_s3_error(exc)
        if message is None:
            raise
        print(f"vidllm {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
