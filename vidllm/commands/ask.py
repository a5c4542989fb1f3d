"""`vidllm ask VIDEO QUESTION`: answer a question about the scene in your own video."""

from __future__ import annotations

import argparse
import json

from vidllm.commands import video_model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    video_model.add_arguments(parser)
    parser.add_argument("question", help='the question, e.g. "How many chairs are in the room?"')
    parser.add_argument("--max-new-tokens", type=video_model.positive_int, default=32,
                        help="answer length cap in tokens (default: 32)")


def run(args: argparse.Namespace) -> int:
    model, clip = video_model.load(args, args.max_new_tokens)
    answer = model.ask(clip, args.question)
    if args.json:
        print(json.dumps({"video": str(args.video), "question": args.question, "answer": answer.text,
                          "frames": clip.frame_indices.tolist(), "seconds": round(answer.seconds, 3)}))
    else:
        print(answer.text)
    return 0
