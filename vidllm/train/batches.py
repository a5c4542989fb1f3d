"""Shard samples → training batches for Stage 1 and Stage 2.

A shard sample is one scene clip (`vidllm.data.shards.format.to_torch`). Batches keep scenes and text
rows apart: `images [B, S, 3, H, W]` once per scene, and one text row per instruction with
`scene_index [R]` pointing at its scene, so one vision pass serves several instructions.

Stage-2 text rows: `build_prompt(...)` then the answer and `</s>`; labels are −100 on the
prompt (the model marks vision positions −100 when it splices them in). Answers:
- scanqa / sqa3d / scan2cap: the first reference answer (scan2cap carries the object box at `<obj>`).
- scanrefer / nr3d / sr3d / multi3drefer: one `<ground>` per target (its hidden state is the box
  query), every target of the row in `box_targets` / `target_proposals`; the loss supervises each
  `<ground>` with one of them (Hungarian assignment, `vidllm.losses.vl.assign_targets`).
  A zero-target Multi3DRefer row answers "none" with no `<ground>`: "no target" is the answer,
  trained by the LM loss, and read the same way at inference (no `<ground>` → no box).
Proposals are the scene's objects; when it has more than `max_proposals`, each row keeps all its
targets plus a seeded sample of the others (`select_proposals`), so a target is never cut.
Boxes are in the scene frame: gravity-aligned ScanNet axes, origin at the first camera centre
(the frame `vidllm predict` maps back with the GT first camera centre).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from vidllm.data.scannet.annotations import TASKS, trained_tasks
from vidllm.errors import DataError
from vidllm.losses import reconstruction_targets
from vidllm.tokenizer import GROUND, build_prompt

NO_TARGET_ANSWER = "none"


def stack_images(samples: list[dict[str, Any]]) -> Tensor:
    """Scene clips → `[B, S, 3, H, W]` in [0, 1]; every clip must have the same frame count and size."""
    shapes = {tuple(s["images"].shape) for s in samples}
    if len(shapes) != 1:
        raise DataError(", ".join(s["key"] for s in samples), f"clips in one batch differ in shape: {sorted(shapes)}")
    return torch.stack([s["images"] for s in samples])


def train_instructions(sample: dict[str, Any], split: str = "train") -> list[dict[str, Any]]:
    """The sample's instruction records usable for training: the `split` ones (records without a
    split, e.g. Nr3D/Sr3D, take the scene's split), of a known task, in a stable order.

    A grounding or Scan2Cap record naming an object the scene's clip lacks (e.g. an instance
    without mesh vertices) is left out: its answer could not be supervised."""
    records = sample["annotations"]
    splits = {r.get("split") for r in records} - {None}
    scene_split = next(iter(splits)) if len(splits) == 1 else None
    objects = {int(o["object_id"]) for o in sample["meta"].get("objects", [])}
    trained = trained_tasks()
    out = []
    for r in records:
        task = r.get("task")
        if task not in trained:
            continue
        spec = TASKS[task]
        if (r.get("split") or scene_split) not in (split, None):
            continue
        if spec.kind == "text" and not r.get("answers"):
            continue
        if spec.needs_boxes and not objects.issuperset(
                int(i) for i in r.get("target_object_ids") or []):
            continue
        out.append(r)
    return out


def scene_split(sample: dict[str, Any]) -> str | None:
    """The benchmark split a scene clip belongs to, from its instruction records: "train" when
    every record with a split is a train record, the other split when any is not (a scene with
    a single val question is a val scene), None when no record names a split."""
    splits = {r.get("split") for r in sample["annotations"]} - {None}
    if not splits:
        return None
    others = sorted(splits - {"train"})
    return others[0] if others else "train"


def is_training_scene(sample: dict[str, Any]) -> bool:
    """Val/test-split scenes never enter training, not even for reconstruction-only steps:
    the model would fit geometry on the scenes it is scored on. Scenes without any split
    (no annotations) are not benchmark scenes and do train."""
    return scene_split(sample) in ("train", None)


@dataclass
class TextRow:
    input_ids: list[int]
    labels: list[int]
    target_ids: list[int]  # grounding: the referred object ids (empty: zero-target or not grounding)
    target_boxes: list[list[float]]  # their scene-frame boxes (cx, cy, cz, dx, dy, dz)
    object_box: list[float] | None  # scan2cap prompt box


def encode_row(record: dict[str, Any], tokenizer, objects: dict[int, list[float]], centre: list[float],
               max_tokens: int) -> TextRow:
    """One instruction record → token ids and labels (prompt −100, answer + eos supervised)."""
    task = record["task"]
    spec = TASKS[task]

    def scene_box(object_id: int) -> list[float]:
        box = objects[object_id]
        return [box[0] - centre[0], box[1] - centre[1], box[2] - centre[2], *box[3:6]]

    # Duplicate ids would ask for two <ground>s on one object.
    targets = list(dict.fromkeys(int(i) for i in record.get("target_object_ids") or []))
    missing = [i for i in targets if i not in objects]
    if missing and spec.needs_boxes:  # dropping them would teach a wrong count, or "none"
        raise DataError(record.get("id", "?"), f"{task} target object {missing[0]} is not in the scene")
    target_ids: list[int] = []
    object_box = None
    prompt = build_prompt(record["text"], record.get("situation"), with_object=spec.object_prompt,
                          grounding=spec.grounding)
    if spec.grounding:
        answer = " ".join([GROUND] * len(targets)) if targets else NO_TARGET_ANSWER
        target_ids = targets
    else:
        answer = str(record["answers"][0])
        if spec.object_prompt:
            if not targets:
                raise DataError(record.get("id", "?"), f"{task} record names no target object")
            object_box = scene_box(targets[0])
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if spec.grounding and targets:
        # Bare <ground> tokens: spaced (" <ground>") each would start with a " " token, a first
        # answer token shared by every grounding row that QA rows would then have to unlearn.
        answer_ids = [tokenizer.convert_tokens_to_ids(GROUND)] * len(targets) + [tokenizer.eos_token_id]
    else:
        answer_ids = tokenizer(" " + answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    if len(prompt_ids) + len(answer_ids) > max_tokens:
        # Too long: the answer keeps at most half the budget and its eos; the prompt keeps its head
        # (with <image>) and its tail ("ASSISTANT:"), losing the middle of the question.
        answer_ids = answer_ids[: max_tokens // 2 - 1] + [tokenizer.eos_token_id] \
            if len(answer_ids) > max_tokens // 2 else answer_ids
        budget = max_tokens - len(answer_ids)
        tail = min(8, budget // 2)
        prompt_ids = prompt_ids[: budget - tail] + prompt_ids[len(prompt_ids) - tail:]
    return TextRow(prompt_ids + answer_ids, [-100] * len(prompt_ids) + answer_ids, target_ids,
                   [scene_box(i) for i in target_ids], object_box)


def draw_instructions(records: list[dict[str, Any]], count: int, task_weights: dict[str, float] | None,
                      rng: random.Random) -> list[dict[str, Any]]:
    """`count` records drawn without replacement. With `task_weights` ({task: weight}; tasks not
    named weigh 1, weight 0 never trains) each draw first picks a task among those with records
    left, in proportion to its weight, then one of its records; so the mix of tasks a step trains
    on is fixed by the config, not by how many records each benchmark happens to have. Without
    weights: a uniform sample of the records."""
    if not task_weights:
        return rng.sample(records, min(count, len(records)))
    pools: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if task_weights.get(r["task"], 1.0) > 0:
            pools.setdefault(r["task"], []).append(r)
    for pool in pools.values():
        rng.shuffle(pool)
    chosen: list[dict[str, Any]] = []
    while len(chosen) < count and pools:
        tasks = sorted(pools)
        task = rng.choices(tasks, weights=[task_weights.get(t, 1.0) for t in tasks])[0]
        chosen.append(pools[task].pop())
        if not pools[task]:
            del pools[task]
    return chosen


def select_proposals(object_ids: list[int], targets: list[int], max_proposals: int, rng: random.Random) -> list[int]:
    """A row's proposal object ids (sorted): every object when the scene has at most
    `max_proposals`, else all of the row's `targets` plus a sample of the others drawn with `rng`,
    `max_proposals` in all (a row with more targets than that keeps just its targets)."""
    if len(object_ids) <= max_proposals:
        return sorted(object_ids)
    keep = set(targets)
    others = sorted(set(object_ids) - keep)
    return sorted(keep | set(rng.sample(others, max(0, max_proposals - len(keep)))))


def _jittered(box: list[float], jitter: float, rng: random.Random) -> list[float]:
    """A ground-truth proposal as a detector would give it: centre moved by N(0, jitter) metres
    per axis, each size scaled by exp(N(0, jitter)). Trains the `<ground>` selection on imperfect
    boxes and its refinement towards the target (the model's own proposals are imperfect)."""
    if jitter <= 0:
        return box
    return [*(c + rng.gauss(0.0, jitter) for c in box[:3]), *(d * math.exp(rng.gauss(0.0, jitter)) for d in box[3:])]


def _objects(meta: dict[str, Any]) -> dict[int, list[float]]:
    return {int(o["object_id"]): [float(v) for v in o["box"]] for o in meta.get("objects", [])}


def stage1_batch(samples: list[dict[str, Any]], teacher_features: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """images `[B,S,3,H,W]`; teacher_geom `[B,S,Pg,Cg]` + grid; teacher_lang `[B,S,Pl,Cl]` + grid (fp32)."""
    geom = [f["geometry"] for f in teacher_features]
    lang = [f["semantic"] for f in teacher_features]
    return {
        "keys": [s["key"] for s in samples],
        "images": stack_images(samples),
        "teacher_geom": torch.stack([g["patch_tokens"] for g in geom]).float(),
        "geom_grid": geom[0]["grid"],
        "teacher_lang": torch.stack([g["patch_tokens"] for g in lang]).float(),
        "lang_grid": lang[0]["grid"],
    }


def stage2_batch(samples: list[dict[str, Any]], tokenizer, *, instructions_per_scene: int, max_text_tokens: int,
                 max_proposals: int, pad_id: int, seed: int, step: int,
                 task_weights: dict[str, float] | None = None, proposal_jitter: float = 0.0) -> dict[str, Any]:
    """Scene clips → one Stage-2 batch (see the module docstring).

    Only training scenes reach here (`cycle_samples` drops val/test-split scenes); clips without
    instructions (scenes with no annotations) still give reconstruction supervision: when no clip
    of the batch has any, `input_ids` is None (a reconstruction-only step).

    Instructions (mixed by `task_weights`, see `draw_instructions`), and the proposals of scenes with more than `max_proposals` objects, are drawn
    per scene with generators seeded by (seed, step, scene key), so a resumed run draws the same
    rows as an uninterrupted one. Returns images, recon targets (`reconstruction_targets` keys),
    and text tensors (R rows, T = most targets in a row (≥ 1), M = most proposals in a row):
    input_ids / attention_mask / labels `[R, L]`, scene_index `[R]`, box_targets `[R, T, 6]`
    (every target's scene-frame box, zero padding), target_mask `[R, T]`, target_proposals
    `[R, T]` (each target's index in its row's proposals, −1 padding), has_box `[R]` (a row with
    a target), object_boxes `[R, 6]`, proposals `[R, M, 6]` (scene frame, `proposal_jitter`
    applied), proposal_mask `[R, M]`; targets also hold every object of each scene,
    scene_boxes `[B, O, 6]` / scene_box_mask `[B, O]` (the proposal head's ground truth).
    """
    images = stack_images(samples)
    height, width = images.shape[-2:]
    alignment = torch.stack([torch.as_tensor(s["meta"].get("axis_alignment", torch.eye(4).tolist()),
                                             dtype=torch.float32) for s in samples])
    targets = reconstruction_targets(
        torch.stack([s["camera_to_world"] for s in samples]), torch.stack([s["intrinsics"] for s in samples]),
        torch.stack([s["depths"] for s in samples]), alignment, (height, width),
    )
    # Every object of each scene (scene frame): the proposal head's ground truth.
    scene_objects = [_objects(s["meta"]) for s in samples]
    most = max(1, max(len(o) for o in scene_objects))
    targets["scene_boxes"] = torch.zeros(len(samples), most, 6)
    targets["scene_box_mask"] = torch.zeros(len(samples), most, dtype=torch.bool)
    for b, objects in enumerate(scene_objects):
        centre = targets["first_camera_center"][b].tolist()
        for j, box in enumerate(objects.values()):
            targets["scene_boxes"][b, j] = torch.tensor([box[0] - centre[0], box[1] - centre[1], box[2] - centre[2],
                                                         *box[3:6]])
            targets["scene_box_mask"][b, j] = True
    rows: list[TextRow] = []
    scene_index: list[int] = []
    proposal_ids: list[list[int]] = []  # per row
    proposal_boxes: list[list[list[float]]] = []  # per row, scene frame
    for b, sample in enumerate(samples):
        records = train_instructions(sample)
        if not records:
            continue
        objects = _objects(sample["meta"])
        centre = targets["first_camera_center"][b].tolist()
        rng = random.Random(f"{seed}:{step}:{sample['key']}")
        # Its own generator: the instruction draw stays what it is whatever the proposals need.
        proposal_rng = random.Random(f"{seed}:{step}:{sample['key']}:proposals")
        for record in draw_instructions(records, instructions_per_scene, task_weights, rng):
            row = encode_row(record, tokenizer, objects, centre, max_text_tokens)
            ids = select_proposals(list(objects), row.target_ids, max_proposals, proposal_rng)
            rows.append(row)
            scene_index.append(b)
            proposal_ids.append(ids)
            proposal_boxes.append([_jittered([objects[i][0] - centre[0], objects[i][1] - centre[1],
                                              objects[i][2] - centre[2], *objects[i][3:6]], proposal_jitter,
                                             proposal_rng) for i in ids])
    base = {"keys": [s["key"] for s in samples], "images": images, "targets": targets}
    if not rows:  # e.g. scenes without annotations: a reconstruction-only step
        return {**base, "input_ids": None}
    length = max(len(r.input_ids) for r in rows)
    num_rows = len(rows)
    input_ids = torch.full((num_rows, length), pad_id, dtype=torch.long)
    labels = torch.full((num_rows, length), -100, dtype=torch.long)
    attention_mask = torch.zeros((num_rows, length), dtype=torch.long)
    max_t = max(1, max(len(r.target_ids) for r in rows))
    box_targets = torch.zeros(num_rows, max_t, 6)
    target_mask = torch.zeros(num_rows, max_t, dtype=torch.bool)
    target_proposals = torch.full((num_rows, max_t), -1, dtype=torch.long)
    object_boxes = torch.zeros(num_rows, 6)
    max_m = max(1, max(len(p) for p in proposal_ids))
    proposals = torch.zeros(num_rows, max_m, 6)
    proposal_mask = torch.zeros(num_rows, max_m, dtype=torch.bool)
    for r, row in enumerate(rows):
        n = len(row.input_ids)
        input_ids[r, :n] = torch.tensor(row.input_ids)
        labels[r, :n] = torch.tensor(row.labels)
        attention_mask[r, :n] = 1
        t = len(row.target_ids)
        if t:
            box_targets[r, :t] = torch.tensor(row.target_boxes)
            target_mask[r, :t] = True
            target_proposals[r, :t] = torch.tensor([proposal_ids[r].index(i) for i in row.target_ids])
        if row.object_box is not None:
            object_boxes[r] = torch.tensor(row.object_box)
        m = len(proposal_ids[r])
        if m:
            proposals[r, :m] = torch.tensor(proposal_boxes[r])
            proposal_mask[r, :m] = True
    return {
        **base,
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "scene_index": torch.tensor(scene_index, dtype=torch.long),
        "box_targets": box_targets,
        "target_mask": target_mask,
        "target_proposals": target_proposals,
        "has_box": target_mask.any(1),
        "object_boxes": object_boxes,
        "proposals": proposals,
        "proposal_mask": proposal_mask,
    }


def to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor of a (nested) batch to `device`."""
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list):
        return [to_device(v, device) for v in batch]
    return batch


def cycle_samples(dataset_factory, skip: int = 0) -> Iterator[dict[str, Any]]:
    """Endless stream over the training scenes of `dataset_factory()` epochs (`is_training_scene`),
    skipping the first `skip` of them (resume)."""
    seen = 0
    while True:
        produced = False
        for sample in dataset_factory():
            if not is_training_scene(sample):
                continue
            produced = True
            if seen < skip:
                seen += 1
                continue
            yield sample
        if not produced:
            raise DataError("shards", "this rank's share of the dataset has no training scene (all val/test "
                                      "split, or fewer samples than workers?)")
