"""`vidllm ground VIDEO PHRASE`: 3D boxes of the object(s) a phrase refers to, from your own video."""

from __future__ import annotations

import argparse
import json

from vidllm.commands import video_model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    video_model.add_arguments(parser)
    parser.add_argument("phrase", help='a referring expression, e.g. "the brown table next to the window"')
    parser.add_argument("--max-boxes", type=video_model.positive_int, default=8,
                        help="at most this many boxes (default: 8)")


def run(args: argparse.Namespace) -> int:
    from vidllm.inference import SCENE_FRAME

    model, clip = video_model.load(args, max_new_tokens=args.max_boxes)
    found = model.ground(clip, args.phrase)
    boxes = [{"center": [round(float(v), 4) for v in box[:3]], "size": [round(float(v), 4) for v in box[3:]]}
             for box in found.boxes]
    if args.json:
        print(json.dumps({"video": str(args.video), "phrase": args.phrase, "boxes": boxes, "frame": SCENE_FRAME,
                          "answer": found.text, "seconds": round(found.seconds, 3)}))
    elif not boxes:
        print(f"no object found for {args.phrase!r} (the model answered {found.text!r})")
    else:
        print(f"{len(boxes)} box(es) in the {SCENE_FRAME}:")
        for box in boxes:
            print(f"  center {box['center']}  size {box['size']}")
    return 0
