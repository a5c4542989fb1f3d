"""`vidllm ask VIDEO QUESTION [QUESTION ...]`: answer questions about the scene in your own video
(one vision pass serves every question)."""

from __future__ import annotations

import argparse
import json

from vidllm.commands import video_model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    video_model.add_arguments(parser)
    parser.add_argument("question", nargs="+",
                        help='one or more questions, e.g. "How many chairs are in the room?" (the video is '
                             'encoded once for all of them)')
    parser.add_argument("--max-new-tokens", type=video_model.positive_int, default=32,
                        help="answer length cap in tokens (default: 32)")


def run(args: argparse.Namespace) -> int:
    model, clip = video_model.load(args, args.max_new_tokens)
    answers = model.ask_many(clip, args.question)
    for question, answer in zip(args.question, answers):
        if args.json:
            print(json.dumps({"video": str(args.video), "question": question, "answer": answer.text,
                              "frames": clip.frame_indices.tolist(), "seconds": round(answer.seconds, 3)}))
        else:
            print(answer.text if len(args.question) == 1 else f"{question}\t{answer.text}")
    return 0
