"""What do a trained model's vision tokens know about the objects? Linear probes on the 3D-patch
tokens the LLM reads.

For every object of every scene, the tokens whose voxel centroid lies inside the object's box
(grown by --margin metres) are averaged; a linear classifier trained on the train-split objects
predicts the object's class and colour (the colour asked in the scene's "What color is ...?"
questions) on the val-split objects. The same probe on a random-init copy of the model is the
control. If the probe reads colour and class but the LLM answers colour questions at chance, the
LLM has not learned to read the tokens; if the probe cannot, the tokens do not carry it.

    python benchmarks/vision_probe.py --model RUN/model --shards SHARDS [--geometry ground_truth]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vidllm.artifacts.model_dir import load_pretrained  # noqa: E402
from vidllm.data.shards.format import ShardDataset  # noqa: E402
from vidllm.geometry import ground_truth_geometry  # noqa: E402
from vidllm.losses import reconstruction_targets  # noqa: E402
from vidllm.train.batches import scene_split  # noqa: E402


def _colours(sample: dict) -> dict[int, str]:
    out = {}
    for record in sample["annotations"]:
        if record.get("task") == "scanqa" and record.get("text", "").startswith("What color is") and \
                record.get("answers") and len(record.get("target_object_ids") or []) == 1:
            out[int(record["target_object_ids"][0])] = record["answers"][0]
    return out


@torch.no_grad()
def encode_scene(model, sample: dict, geometry: str):
    """One shard sample → (the model's `VisionOutput`, its reconstruction targets); `geometry`
    "ground_truth" places the 3D patches with the sample's depth and cameras."""
    images = sample["images"][None]
    alignment = torch.as_tensor(sample["meta"].get("axis_alignment", torch.eye(4).tolist()),
                                dtype=torch.float32)[None]
    targets = reconstruction_targets(sample["camera_to_world"][None], sample["intrinsics"][None],
                                     sample["depths"][None], alignment, tuple(images.shape[-2:]))
    vision = model.encode_video(images, with_points=False,
                                geometry=ground_truth_geometry(targets) if geometry == "ground_truth" else None)
    return vision, targets


@torch.no_grad()
def object_features(model, shards: str, geometry: str, margin: float, limit: int | None) -> list[dict]:
    rows = []
    for n, sample in enumerate(ShardDataset(shards)):
        if limit is not None and n >= limit:
            break
        vision, targets = encode_scene(model, sample, geometry)
        tokens, centroids, mask = vision.tokens[0], vision.xyz[0], vision.voxel_mask[0]
        centre = targets["first_camera_center"][0]
        colours = _colours(sample)
        for obj in sample["meta"].get("objects", []):
            box = torch.tensor(obj["box"], dtype=torch.float32)
            lo = box[:3] - centre - box[3:] / 2 - margin
            hi = box[:3] - centre + box[3:] / 2 + margin
            inside = mask & ((centroids >= lo) & (centroids <= hi)).all(-1)
            if not inside.any():
                continue
            rows.append({"split": scene_split(sample), "label": obj["label"],
                         "colour": colours.get(int(obj["object_id"])), "feature": tokens[inside].mean(0)})
    return rows


def probe(rows: list[dict], field: str, steps: int, seed: int) -> dict:
    train = [r for r in rows if r["split"] == "train" and r[field] is not None]
    test = [r for r in rows if r["split"] != "train" and r[field] is not None]
    names = sorted({r[field] for r in train + test})
    index = {n: i for i, n in enumerate(names)}
    x_train = torch.stack([r["feature"] for r in train])
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    x_train = (x_train - mean) / std
    x_test = (torch.stack([r["feature"] for r in test]) - mean) / std
    y_train = torch.tensor([index[r[field]] for r in train])
    y_test = torch.tensor([index[r[field]] for r in test])
    torch.manual_seed(seed)
    head = torch.nn.Linear(x_train.shape[1], len(names))
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2, weight_decay=1e-3)
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(head(x_train), y_train).backward()
        optimizer.step()
    with torch.no_grad():
        accuracy = float((head(x_test).argmax(-1) == y_test).float().mean())
    majority = Counter(r[field] for r in train).most_common(1)[0][0]
    return {"accuracy": accuracy, "majority_baseline": float(sum(r[field] == majority for r in test) / len(test)),
            "train_objects": len(train), "test_objects": len(test), "classes": len(names)}


def _random_init(model) -> None:
    torch.manual_seed(0)
    for module in model.modules():
        if hasattr(module, "reset_parameters") and module is not model:
            module.reset_parameters()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model directory (RUN_DIR/model)")
    parser.add_argument("--shards", required=True, help="shard dataset with train and val scenes")
    parser.add_argument("--geometry", choices=("predicted", "ground_truth"), default="predicted",
                        help="what places the 3D patches (ground_truth isolates the tokens' content)")
    parser.add_argument("--margin", type=float, default=0.1, help="metres added to each box side")
    parser.add_argument("--steps", type=int, default=300, help="probe optimiser steps")
    parser.add_argument("--scenes", type=int, default=None, help="at most this many scenes (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    out = {"benchmark": "vision_probe", "model": args.model, "geometry": args.geometry}
    for name in ("trained", "random_init"):
        model, _ = load_pretrained(args.model, verify=False)
        if name == "random_init":
            _random_init(model)
        model.eval()
        rows = object_features(model, args.shards, args.geometry, args.margin, args.scenes)
        found = sorted({"train" if r["split"] == "train" else "held-out" for r in rows})
        if found != ["held-out", "train"]:
            print(f"{args.shards}: the probe needs objects of train and of held-out scenes, found "
                  f"{' and '.join(found) or 'none'} (raise --scenes?)", file=sys.stderr)
            return 2
        out[name] = {"objects": len(rows), "class": probe(rows, "label", args.steps, 0),
                     "colour": probe(rows, "colour", args.steps, 0)}
        print(f"{name}: {json.dumps(out[name])}", file=sys.stderr)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
