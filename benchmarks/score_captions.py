"""Time `vidllm score` on 1,000 Scan2Cap caption pairs, METEOR's Java start included.

    python benchmarks/score_captions.py [--pairs 1000] [--tokenize scan2cap|coco_ptb]

Builds a ScanRefer-format ground truth (1–5 references per object), a boxes file and predictions
in a temp dir, runs the real CLI in a subprocess and prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COLORS = ["brown", "white", "black", "gray", "blue", "red", "wooden", "green"]
OBJECTS = ["chair", "table", "bed", "sofa", "lamp", "cabinet", "door", "desk", "shelf", "monitor"]
PLACES = ["next to the table", "against the wall", "in the corner", "near the window", "in the middle of the room",
          "under the desk", "beside the bed", "by the door"]  # fmt: skip


def sentence(rng: random.Random, name: str) -> str:
    return (f"this is a {rng.choice(COLORS)} {name}. it is {rng.choice(PLACES)}"
            + (f", {rng.choice(PLACES)}." if rng.random() < 0.5 else "."))


def build(root: Path, pairs: int) -> tuple[Path, Path, Path]:
    rng = random.Random(0)
    records, boxes, preds = [], {}, []
    for n in range(pairs):
        scene = f"scene{n // 20:04d}_00"
        object_id, name = n % 20, rng.choice(OBJECTS)
        box = [rng.uniform(-3, 3), rng.uniform(-3, 3), rng.uniform(0, 2), 1.0, 1.0, 1.0]
        boxes.setdefault(scene, {})[str(object_id)] = box
        for ann in range(rng.randint(1, 5)):
            records.append({"scene_id": scene, "object_id": str(object_id), "object_name": name,
                            "ann_id": str(ann), "description": sentence(rng, name)})
        preds.append({"id": f"{scene}|{object_id}|{name}", "text": sentence(rng, name), "boxes": [box]})
    gt, boxes_path, pred = root / "ScanRefer_filtered_val.json", root / "boxes.json", root / "pred.jsonl"
    gt.write_text(json.dumps(records))
    boxes_path.write_text(json.dumps(boxes))
    pred.write_text("".join(json.dumps(p) + "\n" for p in preds))
    return gt, boxes_path, pred


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=1000, help="number of predicted captions (objects)")
    parser.add_argument("--tokenize", choices=["scan2cap", "coco_ptb"], default="scan2cap")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        gt, boxes, pred = build(Path(tmp), args.pairs)
        cmd = [sys.executable, "-m", "vidllm", "score", "--benchmark", "scan2cap", "--pred", str(pred),
               "--gt", str(gt), "--boxes", str(boxes), "--tokenize", args.tokenize, "--json"]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
        seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"vidllm score failed:\n{proc.stderr}")
    result = json.loads(proc.stdout)
    print(json.dumps({
        "benchmark": "score_captions",
        "pairs": args.pairs,
        "tokenize": args.tokenize,
        "seconds": round(seconds, 2),
        "goal_seconds": 60,
        "metrics": {k: round(v, 4) for k, v in result["metrics"].items()},
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }))


if __name__ == "__main__":
    main()
