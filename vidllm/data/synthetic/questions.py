"""Benchmark-style instructions computed from a synthetic scene's ground truth.

Every answer follows from the geometry the video shows: counts are true counts of the (visible)
furniture, colours are the rendered albedo names, spatial words come from box centres with a
margin so no answer hinges on a few centimetres. Referring expressions are only emitted when
they pick out their target(s) uniquely.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from vidllm.data.scannet.annotations import (
    Instruction,
    multi3drefer_id,
    sqa3d_question_type,
    tokenize,
    vsibench_instruction,
)
from vidllm.data.synthetic.room_layout import CATEGORIES, COLORS

if TYPE_CHECKING:
    from vidllm.data.synthetic.scene import SyntheticScene

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
RATIO_MARGIN = 1.25  # "closest"/"biggest" need a 25% lead over the runner-up
DISTANCE_MARGIN = 0.4  # ... and at least 40 cm
SIDE_MARGIN = 0.5  # a direction ("left", "front-right") needs the object 50 cm off each dividing line
LETTERS = "ABCD"


@dataclass
class _Obj:
    id: int
    label: str
    color: str
    center: np.ndarray  # [3]
    size: np.ndarray  # [3]

    @property
    def xy(self) -> np.ndarray:
        return self.center[:2]

    @property
    def volume(self) -> float:
        return float(np.prod(self.size))

    @property
    def plural(self) -> str:
        return CATEGORIES[self.label][2]


def _dist(a: _Obj, b: _Obj) -> float:
    return float(np.linalg.norm(a.xy - b.xy))


def _clearly_min(value: float, others: list[float]) -> bool:
    return bool(others) and value * RATIO_MARGIN <= min(others) and min(others) - value >= DISTANCE_MARGIN


def _clearly_max(value: float, others: list[float]) -> bool:
    return bool(others) and value >= RATIO_MARGIN * max(others) and value - max(others) >= DISTANCE_MARGIN


def _count_words(n: int) -> list[str]:
    return [NUMBER_WORDS[n], str(n)] if n < len(NUMBER_WORDS) else [str(n)]


class SceneFacts:
    """Unique references and true statements about one scene's furniture."""

    def __init__(self, scene: SyntheticScene):
        self.scene = scene
        self.objects = [_Obj(o.object_id, o.label, o.color_name, np.asarray(o.box[:3]), np.asarray(o.box[3:]))
                        for o in scene.objects]
        self.center = np.asarray(scene.room_size) / 2

    def same_class(self, obj: _Obj) -> list[_Obj]:
        return [o for o in self.objects if o.label == obj.label and o.id != obj.id]

    def simple_phrase(self, obj: _Obj) -> str | None:
        """'the table' / 'the red chair' when that alone is unique, else None."""
        same = self.same_class(obj)
        if not same:
            return f"the {obj.label}"
        if not any(o.color == obj.color for o in same):
            return f"the {obj.color} {obj.label}"
        return None

    def phrases(self, obj: _Obj) -> list[tuple[str, str, dict[str, Any]]]:
        """Identifying phrases (text, kind, details); kind ∈ class/color/size/spatial/view."""
        same = self.same_class(obj)
        out: list[tuple[str, str, dict[str, Any]]] = []
        if not same:
            out.append((f"the {obj.label}", "class", {}))
        if not any(o.color == obj.color for o in same):
            out.append((f"the {obj.color} {obj.label}", "color", {}))
        if not same:
            return out
        volumes = [o.volume for o in same]
        if obj.volume >= RATIO_MARGIN * max(volumes):
            out.append((f"the biggest {obj.label}", "size", {}))
        if obj.volume * RATIO_MARGIN <= min(volumes):
            out.append((f"the smallest {obj.label}", "size", {}))
        for anchor in self.objects:
            anchor_phrase = self.simple_phrase(anchor)
            if anchor.label == obj.label or anchor_phrase is None:
                continue
            mine, theirs = _dist(obj, anchor), [_dist(o, anchor) for o in same]
            info = {"anchor_id": anchor.id, "anchor_label": anchor.label}
            if _clearly_min(mine, theirs):
                out.append((f"the {obj.label} closest to {anchor_phrase}", "spatial", {**info, "relation": "closest"}))
            elif _clearly_max(mine, theirs):
                out.append((f"the {obj.label} farthest from {anchor_phrase}", "spatial", {**info, "relation": "farthest"}))
            # View-dependent: stand in the middle of the room facing the anchor.
            forward = anchor.xy - self.center[:2]
            if np.linalg.norm(forward) < 0.8:
                continue
            forward = forward / np.linalg.norm(forward)
            left = np.array([-forward[1], forward[0]])
            lateral = {o.id: float((o.xy - self.center[:2]) @ left) for o in [obj, *same]}
            others = [lateral[o.id] for o in same]
            if lateral[obj.id] - max(others) >= 0.6 and lateral[obj.id] > 0.3:
                out.append((f"facing {anchor_phrase} from the middle of the room, the {obj.label} on the left",
                            "view", info))
            elif min(others) - lateral[obj.id] >= 0.6 and lateral[obj.id] < -0.3:
                out.append((f"facing {anchor_phrase} from the middle of the room, the {obj.label} on the right",
                            "view", info))
        return out

    def nearest(self, obj: _Obj) -> _Obj | None:
        others = [o for o in self.objects if o.id != obj.id]
        return min(others, key=lambda o: _dist(obj, o)) if others else None

    def place(self, obj: _Obj) -> str:
        size = np.asarray(self.scene.room_size)
        half = obj.size[:2] / 2
        wall_gap = min(*(obj.xy - half), *(size[:2] - obj.xy - half))
        if wall_gap < 0.4:
            return "against a wall"
        if np.linalg.norm(obj.xy - self.center[:2]) < 1.2:
            return "in the middle of the room"
        return "in the room"

    @staticmethod
    def height_word(obj: _Obj) -> str:
        if obj.size[2] >= 1.3:
            return "tall "
        if obj.size[2] <= 0.6:
            return "low "
        return ""


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _scanrefer(facts: SceneFacts, rng: np.random.Generator) -> list[Instruction]:
    out = []
    for obj in facts.objects:
        phrases = facts.phrases(obj)
        if not phrases:
            continue  # no unique description exists (Multi3DRefer covers it as a multi-target)
        near = facts.nearest(obj)
        near_text = f" it is next to a {near.color} {near.label}." if near is not None else ""
        first = phrases[int(rng.integers(len(phrases)))]
        second = phrases[int(rng.integers(len(phrases)))][0]
        # "this is facing the bed ..." reads badly: view-dependent phrases stand on their own.
        opening = f"{first[0]}." if first[1] == "view" else f"this is {first[0]}."
        descriptions = [
            f"{opening} it is a {facts.height_word(obj)}{obj.color} {obj.label}.{near_text}",
            f"{second} is {facts.place(obj)}. the {obj.label} is {obj.color}.",
        ]
        unique = not facts.same_class(obj)
        for ann_id, text in enumerate(descriptions):
            out.append(Instruction(
                task="scanrefer", id=f"{facts.scene.scene_id}|{obj.id}|{ann_id}", scene_id=facts.scene.scene_id,
                text=text, target_object_ids=[obj.id], object_name=obj.label,
                eval_subgroup={"unique": unique}, extra={"token": tokenize(text)},
            ))
    return out


def _multi3drefer(facts: SceneFacts, rng: np.random.Generator) -> list[Instruction]:
    scene_id = facts.scene.scene_id
    records: list[tuple[str, list[int], str, str]] = []  # text, ids, object_name, eval_type
    for obj in facts.objects:
        phrases = facts.phrases(obj)
        if phrases:
            text = phrases[int(rng.integers(len(phrases)))][0]
            records.append((f"{text}.", [obj.id], obj.label, "st_w_d" if facts.same_class(obj) else "st_wo_d"))
    labels = sorted({o.label for o in facts.objects})
    for label in labels:
        members = [o for o in facts.objects if o.label == label]
        plural = CATEGORIES[label][2]
        if len(members) >= 2:
            records.append((f"all the {plural} in the room.", [o.id for o in members], label, "mt"))
        for color in sorted({o.color for o in members}):
            group = [o for o in members if o.color == color]
            if len(group) >= 2 and len(group) < len(members):
                records.append((f"the {color} {plural}.", [o.id for o in group], label, "mt"))
        absent = [c for c in COLORS if c not in {o.color for o in members}]
        if absent:  # that class exists, just not in that colour
            color = absent[int(rng.integers(len(absent)))]
            records.append((f"the {color} {label}.", [], label, "zt_w_d"))
    missing = [c for c in CATEGORIES if c not in labels]
    if missing:
        label = missing[int(rng.integers(len(missing)))]
        records.append((f"the {label} in this room.", [], label, "zt_wo_d"))
    return [
        Instruction(task="multi3drefer", id=multi3drefer_id(scene_id, ann_id), scene_id=scene_id,
                    text=text, target_object_ids=ids, object_name=name, eval_subgroup={"eval_type": eval_type},
                    extra={"ann_id": str(ann_id)})
        for ann_id, (text, ids, name, eval_type) in enumerate(records)
    ]


def _referit3d(facts: SceneFacts) -> tuple[list[Instruction], list[Instruction]]:
    scene_id = facts.scene.scene_id
    nr3d, sr3d = [], []
    for obj in facts.objects:
        same = facts.same_class(obj)
        if not same:
            continue  # ReferIt3D only keeps utterances with same-class distractors
        distractors = [o.id for o in same]
        stimulus = "-".join([scene_id, obj.label.replace(" ", "_"), str(1 + len(same)), str(obj.id)]
                            + [str(d) for d in distractors])
        # Every identifying phrase of an object that has same-class distractors is a valid Nr3D utterance.
        for text, kind, info in facts.phrases(obj):
            nr3d.append(Instruction(
                task="nr3d", id=f"{scene_id}-{obj.id}-{len(nr3d)}", scene_id=scene_id, text=text,
                target_object_ids=[obj.id], object_name=obj.label,
                eval_subgroup={"hard": len(same) + 1 > 2, "view_dependent": kind == "view"},
                extra={"stimulus_id": stimulus, "tokens": tokenize(text), "distractor_ids": distractors,
                       "n_objects": 1 + len(same), "mentions_target_class": True,
                       "uses_spatial_lang": kind in ("spatial", "view"), "uses_color_lang": kind == "color",
                       "uses_shape_lang": kind == "size"},
            ))
            if kind == "spatial" and not facts.same_class(facts.objects[_index(facts, info["anchor_id"])]):
                # Sr3D anchors are named by class alone, so the anchor's class must be unique.
                relation = info["relation"]
                preposition = "to" if relation == "closest" else "from"
                text = f"the {obj.label} that is {relation} {preposition} the {info['anchor_label']}"
                sr3d.append(Instruction(
                    task="sr3d", id=f"{scene_id}|{obj.id}|sr{len(sr3d)}", scene_id=scene_id, text=text,
                    target_object_ids=[obj.id], object_name=obj.label,
                    eval_subgroup={"hard": len(same) + 1 > 2, "view_dependent": False},
                    extra={"stimulus_id": stimulus, "tokens": tokenize(text), "distractor_ids": distractors,
                           "n_objects": 1 + len(same), "anchor_ids": [info["anchor_id"]],
                           "anchors_types": [info["anchor_label"]], "reference_type": relation,
                           "coarse_reference_type": "horizontal proximity", "mentions_target_class": True},
                ))
    return nr3d, sr3d


def _index(facts: SceneFacts, object_id: int) -> int:
    return next(i for i, o in enumerate(facts.objects) if o.id == object_id)


def _scanqa(facts: SceneFacts, split: str) -> list[Instruction]:
    scene_id = facts.scene.scene_id
    items: list[tuple[str, list[str], list[_Obj]]] = []
    for label in sorted({o.label for o in facts.objects}):
        members = [o for o in facts.objects if o.label == label]
        items.append((f"How many {CATEGORIES[label][2]} are in the room?", _count_words(len(members)), members))
    # Existence: up to two classes the room has ("yes") and two it lacks ("no"), chosen by the
    # scene number so the same room always asks the same ones.
    present = sorted({o.label for o in facts.objects})
    absent = sorted(set(CATEGORIES) - set(present))
    offset = int(facts.scene.scene_id[5:9]) if facts.scene.scene_id[5:9].isdigit() else 0
    for pool, answer in ((present, "yes"), (absent, "no")):
        for k in range(min(2, len(pool))):
            label = pool[(offset + k) % len(pool)]
            article = "an" if label[0] in "aeiou" else "a"
            members = [o for o in facts.objects if o.label == label]
            items.append((f"Is there {article} {label} in the room?", [answer], members))
    for obj in facts.objects:
        phrase = facts.simple_phrase(obj)
        spatial = [p for p, kind, _ in facts.phrases(obj) if kind in ("spatial", "size")]
        if not facts.same_class(obj):
            items.append((f"What color is {phrase}?", [obj.color], [obj]))
        elif spatial:
            items.append((f"What color is {spatial[0]}?", [obj.color], [obj]))
        if phrase is not None:
            near = facts.nearest(obj)
            others = [_dist(obj, o) for o in facts.objects if o.id not in (obj.id, near.id)] if near else []
            if near is not None and _clearly_min(_dist(obj, near), others):
                items.append((f"What is next to {phrase}?", [near.label, f"{near.color} {near.label}"], [obj, near]))
    uniques = [o for o in facts.objects if not facts.same_class(o)]
    for a_index, a in enumerate(uniques):
        for b in uniques[a_index + 1:]:
            big, small = (a, b) if a.volume >= b.volume else (b, a)
            if big.volume >= 1.5 * small.volume:
                items.append((f"Which is bigger, the {a.label} or the {b.label}?", [big.label], [a, b]))
    heights = sorted(facts.objects, key=lambda o: -o.size[2])
    if len(heights) >= 2 and heights[0].size[2] >= 1.25 * heights[1].size[2]:
        items.append(("What is the tallest object in the room?", [heights[0].label], [heights[0]]))
    number = scene_id[5:9]
    return [
        Instruction(task="scanqa", id=f"{split}-scene{number}-{n}", scene_id=scene_id, text=question,
                    answers=answers, target_object_ids=[o.id for o in objs],
                    object_name=objs[0].label if len({o.label for o in objs}) == 1 else None,  # None: no objects
                    extra={"object_names": [o.label for o in objs]})
        for n, (question, answers, objs) in enumerate(items)
    ]


def _sqa3d(facts: SceneFacts, rng: np.random.Generator) -> list[Instruction]:
    scene = facts.scene
    size = np.asarray(scene.room_size)
    out: list[Instruction] = []
    base_id = int(scene.scene_id[5:9]) * 1000
    if len(facts.objects) < 2:
        return out
    for _situation in range(3):
        for _attempt in range(50):
            position = rng.uniform(0.5, size[:2] - 0.5)
            clear = all(np.any(np.abs(position - o.xy) > o.size[:2] / 2 + 0.4) for o in facts.objects)
            if clear:
                break
        else:
            continue
        dists = {o.id: float(np.linalg.norm(o.xy - position)) for o in facts.objects}
        candidates = [o for o in facts.objects if dists[o.id] >= 1.0 and facts.simple_phrase(o)]
        if not candidates:
            continue
        facing = candidates[int(rng.integers(len(candidates)))]
        forward = (facing.xy - position) / dists[facing.id]
        left = np.array([-forward[1], forward[0]])
        yaw = math.atan2(forward[1], forward[0])
        near = min(facts.objects, key=lambda o: dists[o.id])
        near_phrase = facts.simple_phrase(near)
        if near.id != facing.id and near_phrase and dists[near.id] <= 1.6:
            situation = f"I am standing next to {near_phrase} and facing {facts.simple_phrase(facing)}."
            alternative = [f"Facing {facts.simple_phrase(facing)}, I stand beside {near_phrase}."]
        else:
            situation = f"I am standing in the room facing {facts.simple_phrase(facing)}."
            alternative = [f"{_capital(str(facts.simple_phrase(facing)))} is right in front of me."]
        rel = {o.id: ((o.xy - position) @ forward, (o.xy - position) @ left) for o in facts.objects}
        qa: list[tuple[str, str, str]] = [(f"What color is the {facing.label} in front of me?"
                                           if not facts.same_class(facing) else "What color is the object I am facing?",
                                           facing.color, "other")]
        for obj in facts.objects:
            phrase = facts.simple_phrase(obj)
            ahead, side = rel[obj.id]
            if phrase and obj.id != facing.id and abs(side) >= 0.5:
                qa.append((f"Is {phrase} on my left or on my right?", "left" if side > 0 else "right", "other"))
            if phrase and obj.id != facing.id and abs(ahead) >= 0.5:
                qa.append((f"Can I see {phrase} without turning around?", "yes" if ahead > 0 else "no", "yes/no"))
        for label in sorted({o.label for o in facts.objects}):
            members = [o for o in facts.objects if o.label == label]
            if all(abs(rel[o.id][0]) >= 0.3 for o in members):
                count = sum(rel[o.id][0] > 0 for o in members)
                qa.append((f"How many {CATEGORIES[label][2]} are in front of me?", NUMBER_WORDS[count], "number"))
        phrased = [o for o in facts.objects if facts.simple_phrase(o) and o.id != facing.id]
        if len(phrased) >= 2:
            a, b = phrased[0], phrased[1]
            if abs(dists[a.id] - dists[b.id]) >= 0.5:
                closer = a if dists[a.id] < dists[b.id] else b
                qa.append((f"Which is closer to me, {facts.simple_phrase(a)} or {facts.simple_phrase(b)}?",
                           closer.label, "other"))
        order = rng.permutation(len(qa))[:5]
        for n in sorted(order):
            question, answer, answer_type = qa[n]
            out.append(Instruction(
                task="sqa3d", id=str(base_id + len(out)), scene_id=scene.scene_id, text=question, answers=[answer],
                situation=situation, eval_subgroup={"question_type": sqa3d_question_type(question)},
                extra={"alternative_situation": alternative, "answer_type": answer_type,
                       "question_type": sqa3d_question_type(question),
                       "position": {"x": float(position[0]), "y": float(position[1]), "z": 0.0},
                       "rotation": {"_x": 0.0, "_y": 0.0, "_z": math.sin(yaw / 2), "_w": math.cos(yaw / 2)}},
            ))
    return out


def _centre_dist(a: _Obj, b: _Obj) -> float:
    return float(np.linalg.norm(a.center - b.center))


def _pick(rng: np.random.Generator, items: list, count: int) -> list:
    """Up to `count` of `items`, drawn without replacement, in drawing order."""
    return [items[i] for i in rng.permutation(len(items))[:count]] if items else []


def _lettered(texts: list[str]) -> list[str]:
    return [f"{letter}. {text}" for letter, text in zip(LETTERS, texts, strict=False)]


def _vsibench(facts: SceneFacts, rng: np.random.Generator) -> list[Instruction]:
    """VSI-Bench-style questions (its question types and wording; distances between box centres)."""
    scene = facts.scene
    rows: list[tuple[str, str, list[str] | None, str]] = []  # question_type, question, options, ground truth
    labels = sorted({o.label for o in facts.objects})
    # Objects a name picks out: "chair" (its class is unique) or "red chair" (its colour is, within the class).
    names = {o.id: phrase.removeprefix("the ") for o in facts.objects if (phrase := facts.simple_phrase(o))}
    named = [o for o in facts.objects if o.id in names]
    for label in _pick(rng, labels, 2):
        rows.append(("object_counting", f"How many {label}(s) are in this room?", None,
                     str(sum(o.label == label for o in facts.objects))))
    pairs = [(a, b) for n, a in enumerate(named) for b in named[n + 1:] if _centre_dist(a, b) >= 0.5]
    for a, b in _pick(rng, pairs, 2):
        rows.append(("object_abs_distance", f"Measuring from the centre of each object, what is the direct distance "
                     f"between the {names[a.id]} and the {names[b.id]} (in meters)?", None,
                     f"{_centre_dist(a, b):.1f}"))
    for obj in _pick(rng, named, 2):
        rows.append(("object_size_estimation", f"What is the length of the longest dimension (length, width, or "
                     f"height) of the {names[obj.id]}, measured in centimeters?", None,
                     str(round(float(obj.size.max()) * 100))))
    room = np.asarray(scene.room_size)
    rows.append(("room_size_estimation", "What is the size of this room (in square meters)? If multiple rooms are "
                 "shown, estimate the size of the combined space.", None, f"{room[0] * room[1]:.1f}"))
    for target in _pick(rng, named, len(named)):  # the first target with a clearly closest candidate
        others = _pick(rng, [o for o in named if o.id != target.id], len(LETTERS))
        dists = [_centre_dist(target, o) for o in others]
        best = int(np.argmin(dists)) if dists else 0
        if len(others) >= 2 and _clearly_min(dists[best], dists[:best] + dists[best + 1:]):
            choices = [names[o.id] for o in others]
            rows.append(("object_rel_distance", f"Measuring from the centre of each object, which of these objects "
                         f"({', '.join(choices)}) is the closest to the {names[target.id]}?", _lettered(choices),
                         LETTERS[best]))
            break
    easy, hard = [], []
    for stand, face, obj in itertools.permutations(named, 3):
        forward = face.xy - stand.xy
        if np.linalg.norm(forward) < 1.0:
            continue
        forward = forward / np.linalg.norm(forward)
        ahead, side = float((obj.xy - stand.xy) @ forward), float((obj.xy - stand.xy) @ [-forward[1], forward[0]])
        start = (f"If I am standing by the {names[stand.id]} and facing the {names[face.id]}, "
                 f"is the {names[obj.id]} to my")
        if abs(side) >= SIDE_MARGIN:
            easy.append((f"{start} left or the right?", ["left", "right"], "left" if side > 0 else "right"))
        if abs(side) >= SIDE_MARGIN and abs(ahead) >= SIDE_MARGIN:
            quadrant = f"{'front' if ahead > 0 else 'back'}-{'left' if side > 0 else 'right'}"
            hard.append((f"{start} front-left, front-right, back-left, or back-right? The directions refer to the "
                         "quadrants of a Cartesian plane (if I am standing at the origin and facing along the positive "
                         "y-axis).", ["front-left", "front-right", "back-left", "back-right"], quadrant))
    for question_type, found, count in (("object_rel_direction_easy", easy, 2), ("object_rel_direction_hard", hard, 1)):
        for question, choices, answer in _pick(rng, found, count):
            rows.append((question_type, question, _lettered(choices), LETTERS[choices.index(answer)]))
    # A category appears with the first clip frame showing one of its objects; the categories asked
    # first appear in different frames (one per frame), so there is one order.
    first = {label: min(scene.first_visible[o.id] for o in facts.objects if o.label == label)
             for label in labels if all(o.id in scene.first_visible for o in facts.objects if o.label == label)}
    per_frame = [_pick(rng, [label for label in first if first[label] == frame], 1)[0]
                 for frame in sorted(set(first.values()))]
    if len(per_frame) >= 3:
        asked = _pick(rng, per_frame, len(LETTERS))
        order = sorted(asked, key=first.get)
        orders = [order]
        while len(orders) < min(len(LETTERS), math.factorial(len(order))):
            other = _pick(rng, order, len(order))
            if other not in orders:
                orders.append(other)
        orders = _pick(rng, orders, len(orders))
        rows.append(("obj_appearance_order", "What will be the first-time appearance order of the following "
                     f"categories in the video: {', '.join(asked)}?", _lettered([", ".join(o) for o in orders]),
                     LETTERS[orders.index(order)]))
    base_id = int(scene.scene_id[5:9]) * 1000
    return [vsibench_instruction(str(base_id + n), scene.scene_id, question_type, question, options, truth)
            for n, (question_type, question, options, truth) in enumerate(rows)]


def generate_instructions(scene: SyntheticScene, rng: np.random.Generator) -> dict[str, list[Instruction]]:
    """Instructions for every task from one scene's ground truth (scan2cap comes from scanrefer)."""
    facts = SceneFacts(scene)
    nr3d, sr3d = _referit3d(facts)
    return {
        "scanqa": _scanqa(facts, scene.split),
        "sqa3d": _sqa3d(facts, rng),
        "scanrefer": _scanrefer(facts, rng),
        "multi3drefer": _multi3drefer(facts, rng),
        "nr3d": nr3d,
        "sr3d": sr3d,
        # Last: its draws follow every other task's, which stay what they were before it existed.
        "vsibench": _vsibench(facts, rng),
    }

