"""3D-VL benchmark annotations in their published schemas, as one typed record per instruction.

| task         | published file(s)                                                        |
|--------------|--------------------------------------------------------------------------|
| scanqa       | ScanQA_v1.0_{split}.json                                                 |
| sqa3d        | v1_balanced_questions_{split}_scannetv2.json + v1_balanced_sqa_annotations_{split}_scannetv2.json |
| scanrefer    | ScanRefer_filtered_{split}.json                                          |
| scan2cap     | built from ScanRefer_filtered_{split}.json (one record per object)       |
| multi3drefer | multi3drefer_{split}.json                                                |
| nr3d / sr3d  | nr3d.csv / sr3d.csv (all scans; a split keeps the scans listed in        |
|              | {split}_scans.txt or scannetv2_{split}.txt beside the csv)               |
| vsibench     | VSI-Bench_{split}.jsonl (rows of the release's question file; given as a |
|              | file, also a JSON list or parquet; only its ScanNet rows are read)       |

`load_annotations(task, path, split)` takes a file or a folder (searched recursively for the
published name). Malformed input raises DataError naming the file and the record. `TASKS` holds
each task's published file names and reader (`Task`); `vidllm.eval.benchmarks` adds every
benchmark's scorer and report columns.

Instruction ids (the `id` of a prediction line, unique per file):

| task         | id                                                                           |
|--------------|------------------------------------------------------------------------------|
| scanqa/sqa3d | `question_id`                                                                |
| scanrefer    | `scene_id|object_id|ann_id`                                                  |
| multi3drefer | `scene_id|0|ann_id`: a query has zero or several targets, so the object slot |
|              | is 0, as in M3DRef-CLIP's evaluator key `(scene_id, 0, ann_id)`              |
| scan2cap     | `scene_id|object_id|object_name`                                             |
| nr3d         | `assignmentid`                                                               |
| sr3d         | `scan_id|target_id|csv row` (the csv has no id column; row 2 = first record) |
| vsibench     | `id`                                                                         |
"""

from __future__ import annotations

import ast
import csv
import io
import json
import logging
import re
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from vidllm.artifacts.files import atomic_write_json, atomic_write_text
from vidllm.errors import DataError

MULTI3DREFER_EVAL_TYPES = ("zt_w_d", "zt_wo_d", "st_w_d", "st_wo_d", "mt")
# SQA3D's question-type breakdown: the question's first word, "others" for every other opening.
SQA3D_QUESTION_TYPES = ("what", "is", "how", "can", "which", "others")
# ReferIt3D's view-dependent vocabulary (referit3d analysis / M3DRef-CLIP evaluation labels).
VIEW_DEPENDENT_WORDS = frozenset(
    {"front", "behind", "back", "right", "left", "facing", "leftmost", "rightmost", "looking", "across"}
)
# Scan2Cap has no question: the object is given by its box; this is the fixed text prompt.
SCAN2CAP_PROMPT = "Describe the object at the given location in the room."
# VSI-Bench's question types: numeric answers, then multiple choice (an option letter).
VSIBENCH_NUMERIC_TYPES = ("object_counting", "object_abs_distance", "object_size_estimation", "room_size_estimation")
VSIBENCH_CHOICE_TYPES = ("object_rel_distance", "object_rel_direction_easy", "object_rel_direction_medium",
                         "object_rel_direction_hard", "route_planning", "obj_appearance_order")
VSIBENCH_QUESTION_TYPES = VSIBENCH_NUMERIC_TYPES + VSIBENCH_CHOICE_TYPES
VSIBENCH_DATASET = "scannet"  # the release's other datasets (arkitscenes, scannetpp) have no ScanNet scans
# VSI-Bench's post-prompts, after the question (and the options).
VSIBENCH_CHOICE_PROMPT = "Answer with the option's letter from the given choices directly."
VSIBENCH_NUMERIC_PROMPT = "Please answer the question using a single word or phrase."
# A numeric answer as written: "4", "2.5", "1e1" (no "inf", "nan" or digit separators).
VSIBENCH_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_VSIBENCH_OPTION = re.compile(r"\s*([A-Za-z])\s*[.)]")

log = logging.getLogger(__name__)

NR3D_COLUMNS = (
    "assignmentid", "stimulus_id", "utterance", "correct_guess", "speaker_id", "listener_id",
    "scan_id", "instance_type", "target_id", "tokens", "mentions_target_class",
    "uses_object_lang", "uses_spatial_lang", "uses_color_lang", "uses_shape_lang", "dataset",
)
SR3D_COLUMNS = (
    "scan_id", "target_id", "distractor_ids", "utterance", "stimulus_id", "coarse_reference_type",
    "reference_type", "instance_type", "anchors_types", "anchor_ids", "tokens", "dataset",
    "mentions_target_class",
)


@dataclass
class Instruction:
    """One benchmark instruction (question, referring expression or captioning target)."""

    task: str
    id: str
    scene_id: str
    text: str
    answers: list[str] = field(default_factory=list)
    target_object_ids: list[int] = field(default_factory=list)
    object_name: str | None = None
    situation: str | None = None
    eval_subgroup: dict[str, Any] = field(default_factory=dict)
    # Schema-specific fields kept for round trips and training (SQA3D position/rotation and
    # alternative situations, ReferIt3D distractor/anchor ids, tokens, ...).
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Instruction:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown Instruction fields: {sorted(unknown)}")
        tasks = annotation_tasks()
        if data.get("task") not in tasks:
            raise ValueError(f"unknown task {data.get('task')!r} (choose from {', '.join(tasks)})")
        return cls(**data)


# ----------------------------------------------------------------------------- the tasks

# What a task's answer (and prediction line) is: text, boxes (one `<ground>` per target), or
# geometry only (reconstruction, no instruction).
Kind = Literal["text", "box", "geometry"]
KINDS: tuple[str, ...] = ("text", "box", "geometry")


@dataclass(frozen=True)
class Task:
    """What the data layer and training know of a benchmark task.

    The prompt and the training answer follow from `kind` (`vidllm.tokenizer.build_prompt`): a
    "box" task is grounding, answered with one `<ground>` per target; a "text" one with its first
    reference answer, its prompt carrying the object's box at `<obj>` when `object_prompt`.
    """

    name: str
    kind: Kind
    # Published file names looked up in an annotation folder, in order (the first found is read);
    # "{split}" stands for the split. Empty: no annotation ground truth (reconstruction).
    annotation_files: tuple[str, ...] = ()
    load: Callable[[Path, str | None], list[Instruction]] | None = None  # (annotation file, split) -> records
    built_from: str | None = None  # its records are built from this task's file (synthetic data writes that one)
    object_prompt: bool = False  # the prompt carries the target object's box at <obj> (dense captioning)

    @property
    def grounding(self) -> bool:
        return self.kind == "box"

    @property
    def needs_boxes(self) -> bool:
        """Scoring needs ground-truth object boxes, and a training row needs its targets in the clip."""
        return self.kind == "box" or self.object_prompt

    @property
    def split_files(self) -> bool:
        """One annotation file per split (else one file covers every scan and a split is a scan list)."""
        return any("{split}" in name for name in self.annotation_files)


# name -> task: the published benchmarks below, then those `vidllm.eval.benchmarks` registers.
TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    if task.name in TASKS:
        raise ValueError(f"task '{task.name}' is already registered")
    if task.kind not in KINDS:
        raise ValueError(f"task '{task.name}': kind must be one of {', '.join(KINDS)}, got {task.kind!r}")
    if bool(task.annotation_files) != (task.load is not None):
        raise ValueError(f"task '{task.name}': annotation files and a reader go together")
    if task.built_from is not None and task.built_from not in TASKS:
        raise ValueError(f"task '{task.name}' is built from '{task.built_from}', which is not registered")
    TASKS[task.name] = task
    return task


def unregister_task(name: str) -> None:
    del TASKS[name]


def annotation_tasks() -> tuple[str, ...]:
    """Tasks whose ground truth is a published annotation file (`load_annotations` reads them)."""
    return tuple(t.name for t in TASKS.values() if t.annotation_files)


def trained_tasks() -> tuple[str, ...]:
    """Tasks with an instruction per record, the ones stage 2 trains on."""
    return tuple(t.name for t in TASKS.values() if t.kind != "geometry")


def grounding_tasks() -> tuple[str, ...]:
    return tuple(t.name for t in TASKS.values() if t.grounding)


def sqa3d_question_type(question: str) -> str:
    """SQA3D's breakdown: the question's first word, what/is/how/can/which, else 'others'."""
    words = question.strip().lower().split()
    first = re.sub(r"[^a-z]", "", words[0]) if words else ""
    return first if first in SQA3D_QUESTION_TYPES else "others"


def tokenize(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+|[^\sa-z0-9]", text.lower())


def is_view_dependent(tokens: Iterable[str]) -> bool:
    return any(token.lower() in VIEW_DEPENDENT_WORDS for token in tokens)


# ----------------------------------------------------------------------------- file lookup


def _published_names(task: str, split: str | None) -> list[str]:
    spec = TASKS[task]
    if spec.split_files and split is None:
        raise DataError(task, f"a split is needed to find the {task} file in a folder")
    return [name.format(split=split) for name in spec.annotation_files]


def find_annotation_file(task: str, path: str | Path, split: str | None = None) -> Path:
    """The published file for `task` (and `split`) at `path`, a file or a folder."""
    tasks = annotation_tasks()
    if task not in tasks:
        raise DataError(path, f"unknown task '{task}' (choose from {', '.join(tasks)})")
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise DataError(path, "annotation file or folder not found")
    names = _published_names(task, split)
    for name in names:
        direct = path / name
        if direct.is_file():
            return direct
        found = sorted(path.rglob(name))
        if found:
            return found[0]
    raise DataError(path, f"no {task} annotation file here (looked for {', '.join(names)})")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(path, "annotation file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(path, f"not valid JSON: {exc}") from None


def _json_records(path: Path, key: str | None = None) -> list[Any]:
    data = _read_json(path)
    if key is not None:
        if not isinstance(data, dict) or key not in data:
            raise DataError(path, f"expected a JSON object with a '{key}' list")
        data = data[key]
    if not isinstance(data, list):
        raise DataError(path, f"expected a JSON list of records, got {type(data).__name__}")
    return data


class _Record:
    """Typed field access on one record; every problem names the file and the record."""

    def __init__(self, path: Path, where: str, data: Any):
        if not isinstance(data, dict):
            raise DataError(path, f"{where}: expected an object, got {type(data).__name__}")
        self.path, self.where, self.data = path, where, data

    def fail(self, problem: str) -> DataError:
        return DataError(self.path, f"{self.where}: {problem}")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ..., *, nonempty: bool = False) -> Any:
        if key not in self.data or self.data[key] is None:
            if default is ...:
                raise self.fail(f"missing field '{key}'")
            return default
        value = self.data[key]
        if not isinstance(value, kind) or isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            raise self.fail(f"field '{key}' should be {_kind_name(kind)}, got {type(value).__name__} {value!r}")
        if nonempty and isinstance(value, str) and not value.strip():
            raise self.fail(f"field '{key}' is empty")
        return value

    def int_like(self, key: str) -> int:
        """ScanRefer stores ids as strings ("12"); accept int or digit string."""
        value = self.get(key, (str, int))
        try:
            return int(value)
        except ValueError:
            raise self.fail(f"field '{key}' should be an integer id, got {value!r}") from None

    def str_list(self, key: str, default: Any = ...) -> list[str]:
        values = self.get(key, list, default)
        if not all(isinstance(v, str) for v in values):
            raise self.fail(f"field '{key}' should be a list of strings, got {values!r}")
        return list(values)

    def int_list(self, key: str, default: Any = ...) -> list[int]:
        values = self.get(key, list, default)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise self.fail(f"field '{key}' should be a list of integer ids, got {values!r}")
        return list(values)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join({"str": "a string", "int": "an integer", "list": "a list", "dict": "an object",
                        "float": "a number", "bool": "a boolean"}.get(k.__name__, k.__name__) for k in kinds)


# ----------------------------------------------------------------------------- loaders


def load_scanqa(path: Path) -> list[Instruction]:
    out = []
    for index, raw in enumerate(_json_records(path)):
        rec = _Record(path, f"record {index}", raw)
        qid = rec.get("question_id", str, nonempty=True)
        rec.where = f"record {index} (question_id {qid})"
        names = rec.str_list("object_names", [])
        out.append(Instruction(
            task="scanqa", id=qid, scene_id=rec.get("scene_id", str, nonempty=True),
            text=rec.get("question", str, nonempty=True),
            answers=rec.str_list("answers", []),  # the test files carry no answers
            target_object_ids=rec.int_list("object_ids", []),
            object_name=names[0] if len(set(names)) == 1 else None,
            extra={"object_names": names},
        ))
    return out


def _sqa3d_annotation_path(questions: Path) -> Path:
    name = questions.name.replace("_questions_", "_sqa_annotations_")
    if name == questions.name:
        raise DataError(questions, "SQA3D questions file name should contain '_questions_' "
                                   "(v1_balanced_questions_<split>_scannetv2.json)")
    return questions.with_name(name)


def load_sqa3d(path: Path) -> list[Instruction]:
    if "_sqa_annotations_" in path.name:  # given the other half of the pair
        path = path.with_name(path.name.replace("_sqa_annotations_", "_questions_"))
    ann_path = _sqa3d_annotation_path(path)
    annotations: dict[str, _Record] = {}
    for index, raw in enumerate(_json_records(ann_path, "annotations")):
        rec = _Record(ann_path, f"annotation {index}", raw)
        qid = str(rec.get("question_id", (int, str)))
        if qid in annotations:
            raise rec.fail(f"duplicate question_id {qid}")
        annotations[qid] = rec
    out = []
    for index, raw in enumerate(_json_records(path, "questions")):
        rec = _Record(path, f"question {index}", raw)
        qid = str(rec.get("question_id", (int, str)))
        rec.where = f"question {index} (question_id {qid})"
        ann = annotations.get(qid)
        if ann is None:
            raise DataError(ann_path, f"no annotation for question_id {qid} of {path.name}")
        ann.where = f"annotation for question_id {qid}"
        scene_id = rec.get("scene_id", str, nonempty=True)
        if ann.get("scene_id", str, scene_id) != scene_id:
            raise ann.fail(f"scene_id {ann.data['scene_id']!r} differs from the question's {scene_id!r}")
        answers = []
        for a_index, answer in enumerate(ann.get("answers", list, [])):
            a_rec = _Record(ann_path, f"{ann.where}, answer {a_index}", answer)
            answers.append(a_rec.get("answer", str))
        question = rec.get("question", str, nonempty=True)
        out.append(Instruction(
            task="sqa3d", id=qid, scene_id=scene_id, text=question, answers=answers,
            situation=rec.get("situation", str, nonempty=True),
            eval_subgroup={"question_type": sqa3d_question_type(question)},
            extra={
                "alternative_situation": rec.str_list("alternative_situation", []),
                "answer_type": ann.get("answer_type", str, None),
                "question_type": ann.get("question_type", (str, int), None),
                "position": ann.get("position", dict, None),
                "rotation": ann.get("rotation", dict, None),
            },
        ))
    return out


def _scanrefer_records(path: Path) -> list[dict[str, Any]]:
    rows = []
    for index, raw in enumerate(_json_records(path)):
        rec = _Record(path, f"record {index}", raw)
        scene_id = rec.get("scene_id", str, nonempty=True)
        object_id = rec.int_like("object_id")
        ann_id = str(rec.get("ann_id", (str, int)))
        rec.where = f"record {index} ({scene_id}|{object_id}|{ann_id})"
        eval_type = rec.get("eval_type", str, None)
        if eval_type not in (None, "unique", "multiple"):
            raise rec.fail(f"eval_type should be 'unique' or 'multiple', got {eval_type!r}")
        rows.append({
            "scene_id": scene_id, "object_id": object_id, "ann_id": ann_id,
            "object_name": rec.get("object_name", str, nonempty=True),
            "description": rec.get("description", str, nonempty=True),
            "token": rec.str_list("token", []), "eval_type": eval_type,
        })
    # Unique/multiple when the file does not say: how many annotated objects of that class the
    # scene has (ScanRefer annotates nearly every object, so this matches the scene count).
    objects: dict[tuple[str, str], set[int]] = {}
    for row in rows:
        objects.setdefault((row["scene_id"], row["object_name"]), set()).add(row["object_id"])
    for row in rows:
        if row["eval_type"] is None:
            row["eval_type"] = "unique" if len(objects[(row["scene_id"], row["object_name"])]) == 1 else "multiple"
    return rows


def load_scanrefer(path: Path) -> list[Instruction]:
    return [
        Instruction(
            task="scanrefer", id=f"{r['scene_id']}|{r['object_id']}|{r['ann_id']}", scene_id=r["scene_id"],
            text=r["description"], target_object_ids=[r["object_id"]], object_name=r["object_name"],
            eval_subgroup={"unique": r["eval_type"] == "unique"}, extra={"token": r["token"]},
        )
        for r in _scanrefer_records(path)
    ]


def load_scan2cap(path: Path) -> list[Instruction]:
    groups: OrderedDict[tuple[str, int, str], list[dict[str, Any]]] = OrderedDict()
    for row in _scanrefer_records(path):
        groups.setdefault((row["scene_id"], row["object_id"], row["object_name"]), []).append(row)
    out = []
    for (scene_id, object_id, name), rows in groups.items():
        rows.sort(key=lambda r: (len(r["ann_id"]), r["ann_id"]))  # numeric order for digit ids
        out.append(Instruction(
            task="scan2cap", id=f"{scene_id}|{object_id}|{name}", scene_id=scene_id, text=SCAN2CAP_PROMPT,
            answers=[r["description"] for r in rows], target_object_ids=[object_id], object_name=name,
            eval_subgroup={"unique": rows[0]["eval_type"] == "unique"},
            extra={"ann_ids": [r["ann_id"] for r in rows]},
        ))
    return out


def load_multi3drefer(path: Path) -> list[Instruction]:
    out = []
    for index, raw in enumerate(_json_records(path)):
        rec = _Record(path, f"record {index}", raw)
        scene_id = rec.get("scene_id", str, nonempty=True)
        ann_id = str(rec.get("ann_id", (str, int)))
        rec.where = f"record {index} ({scene_id}, ann_id {ann_id})"
        ids = rec.int_list("object_ids")
        eval_type = rec.get("eval_type", str)
        if eval_type not in MULTI3DREFER_EVAL_TYPES:
            raise rec.fail(f"eval_type should be one of {', '.join(MULTI3DREFER_EVAL_TYPES)}, got {eval_type!r}")
        expected = {"zt": len(ids) == 0, "st": len(ids) == 1, "mt": len(ids) >= 2}[eval_type[:2]]
        if not expected:
            raise rec.fail(f"eval_type {eval_type} does not match {len(ids)} object_ids {ids}")
        out.append(Instruction(
            task="multi3drefer", id=multi3drefer_id(scene_id, ann_id), scene_id=scene_id,
            text=rec.get("description", str, nonempty=True), target_object_ids=ids,
            object_name=rec.get("object_name", str, nonempty=True),
            eval_subgroup={"eval_type": eval_type}, extra={"ann_id": ann_id},
        ))
    return out


def multi3drefer_id(scene_id: str, ann_id: str | int) -> str:
    """`scene_id|0|ann_id`; the targets are not part of the id, so predictions never need them."""
    return f"{scene_id}|0|{ann_id}"


def _parse_list_cell(text: str, what: str) -> list[Any]:
    """ReferIt3D csv cells hold Python list literals ("['the', 'chair']", "[3, 7]")."""
    text = (text or "").strip()
    if not text:
        return []
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise ValueError(f"{what} is not a list literal: {text!r}") from None
    if isinstance(value, (int, str)):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{what} is not a list: {text!r}")
    return list(value)


def parse_stimulus_id(stimulus_id: str) -> tuple[str, str, int, int, list[int]]:
    """`scene-label-nObjects-targetId-distractorIds...` → (scene, label, n_objects, target, distractors)."""
    parts = stimulus_id.split("-")
    tail: list[int] = []
    while len(parts) > 2 and parts[-1].strip().isdigit():
        tail.insert(0, int(parts.pop()))
    if len(parts) < 2 or len(tail) < 2:
        raise ValueError(f"stimulus_id {stimulus_id!r} is not scene-label-nObjects-targetId-distractorIds")
    scene, label = parts[0], "-".join(parts[1:])
    return scene, label, tail[0], tail[1], tail[2:]


def _split_scans(path: Path, split: str | None) -> set[str] | None:
    if split is None:
        return None
    for name in (f"{split}_scans.txt", f"scannetv2_{split}.txt"):
        candidate = path.parent / name
        if candidate.is_file():
            return {line.strip() for line in candidate.read_text().splitlines() if line.strip()}
    raise DataError(path, f"split '{split}' asked for, but neither {split}_scans.txt nor "
                          f"scannetv2_{split}.txt is beside it")


def load_referit3d(task: str, path: Path, split: str | None) -> list[Instruction]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(path, "annotation file not found") from None
    reader = csv.DictReader(io.StringIO(text))
    required = {"stimulus_id", "utterance", "scan_id", "instance_type", "target_id"}
    if task == "sr3d":
        required |= {"distractor_ids", "anchor_ids", "reference_type"}
    missing = required - set(reader.fieldnames or [])
    if missing:
        raise DataError(path, f"csv header lacks column(s) {', '.join(sorted(missing))}")
    keep = _split_scans(path, split)
    out = []
    for row_no, row in enumerate(reader, start=2):
        where = f"line {reader.line_num}"  # physical line (utterances may hold newlines)
        try:
            scan_id = row["scan_id"].strip()
            if not scan_id:
                raise ValueError("scan_id is empty")
            if keep is not None and scan_id not in keep:
                continue
            target_id = int(row["target_id"])
            utterance = row["utterance"]
            if not utterance or not utterance.strip():
                raise ValueError("utterance is empty")
            scene, label, n_objects, stim_target, distractors = parse_stimulus_id(row["stimulus_id"])
            if scene != scan_id or stim_target != target_id:
                raise ValueError(f"stimulus_id {row['stimulus_id']!r} disagrees with scan_id/target_id "
                                 f"({scan_id}, {target_id})")
            tokens = [str(t) for t in _parse_list_cell(row.get("tokens", ""), "tokens")] or tokenize(utterance)
            extra: dict[str, Any] = {"stimulus_id": row["stimulus_id"], "tokens": tokens,
                                     "distractor_ids": distractors, "n_objects": n_objects}
            if row.get("mentions_target_class") not in (None, ""):
                extra["mentions_target_class"] = row["mentions_target_class"].strip().lower() == "true"
            if task == "sr3d":
                extra["distractor_ids"] = [int(v) for v in _parse_list_cell(row["distractor_ids"], "distractor_ids")]
                extra["anchor_ids"] = [int(v) for v in _parse_list_cell(row["anchor_ids"], "anchor_ids")]
                extra["anchors_types"] = [str(v) for v in _parse_list_cell(row.get("anchors_types", ""), "anchors_types")]
                extra["reference_type"] = row["reference_type"]
                extra["coarse_reference_type"] = row.get("coarse_reference_type")
            else:
                for key in ("assignmentid", "correct_guess", "speaker_id", "listener_id"):
                    if row.get(key) not in (None, ""):
                        extra[key] = row[key]
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(path, f"{where}: {exc}") from None
        record_id = row.get("assignmentid") or f"{scan_id}|{target_id}|{row_no}"
        out.append(Instruction(
            task=task, id=record_id, scene_id=scan_id, text=utterance, target_object_ids=[target_id],
            object_name=row["instance_type"],
            # ReferIt3D: easy = at most one same-class distractor (nObjects <= 2).
            eval_subgroup={"hard": n_objects > 2, "view_dependent": is_view_dependent(tokens)},
            extra=extra,
        ))
    return out


def vsibench_prompt(question: str, options: Sequence[str] | None) -> str:
    """The instruction text as VSI-Bench asks it: question, options, post-prompt, one per line."""
    if options is None:
        return f"{question}\n{VSIBENCH_NUMERIC_PROMPT}"
    return "\n".join([question, "Options:", *options, VSIBENCH_CHOICE_PROMPT])


def option_letter(option: str) -> str | None:
    """"A. table" -> "A"; None when the option does not open with a letter."""
    match = _VSIBENCH_OPTION.match(option)
    return match.group(1).upper() if match else None


def vsibench_instruction(row_id: str, scene_id: str, question_type: str, question: str,
                         options: Sequence[str] | None, truth: str, dataset: str = VSIBENCH_DATASET) -> Instruction:
    """One VSI-Bench question (the loader and the synthetic generator build them alike)."""
    return Instruction(
        task="vsibench", id=row_id, scene_id=scene_id, text=vsibench_prompt(question, options), answers=[truth],
        eval_subgroup={"question_type": question_type},
        extra={"dataset": dataset, "question": question, "options": None if options is None else list(options)},
    )


def _vsibench_rows(path: Path) -> list[Any]:
    """A JSON list, JSON lines or (by its suffix) parquet file's rows."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        if not path.is_file():
            raise DataError(path, "annotation file not found")
        try:
            return pq.read_table(path).to_pylist()
        except (OSError, ValueError) as exc:  # pyarrow's errors subclass these
            raise DataError(path, f"not a readable parquet file: {exc}") from None
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(path, "annotation file not found") from None
    except UnicodeDecodeError as exc:
        raise DataError(path, f"not UTF-8 text: {exc}") from None
    if text.lstrip().startswith("["):
        return _json_records(path)
    rows = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(path, f"line {line_no}: not valid JSON: {exc}") from None
    return rows


def load_vsibench(path: Path) -> list[Instruction]:
    """The ScanNet rows of a VSI-Bench question file; the other datasets' rows are counted in the log."""
    out, skipped = [], Counter()
    for index, raw in enumerate(_vsibench_rows(path)):
        rec = _Record(path, f"row {index}", raw)
        row_id = str(rec.get("id", (int, str), nonempty=True))
        rec.where = f"row {index} (id {row_id})"
        dataset = rec.get("dataset", str, nonempty=True)
        if dataset != VSIBENCH_DATASET:
            skipped[dataset] += 1
            continue
        question_type = rec.get("question_type", str)
        if question_type not in VSIBENCH_QUESTION_TYPES:
            raise rec.fail(f"question_type should be one of {', '.join(VSIBENCH_QUESTION_TYPES)}, "
                           f"got {question_type!r}")
        truth = str(rec.get("ground_truth", (str, int, float), nonempty=True)).strip()
        options = rec.get("options", list, None)
        if question_type in VSIBENCH_NUMERIC_TYPES:
            if options is not None:
                raise rec.fail(f"a {question_type} question has no options, got {options!r}")
            if not VSIBENCH_NUMBER.fullmatch(truth) or not float(truth) > 0:
                raise rec.fail(f"ground_truth of a {question_type} question should be a positive number, "
                               f"got {truth!r}")
        else:
            options = rec.str_list("options") if options else None
            if not options:
                raise rec.fail(f"a {question_type} question needs 'options', a list of strings")
            letters = [option_letter(o) for o in options]
            if None in letters:
                raise rec.fail(f"options should read 'A. ...', got {options!r}")
            if truth.upper() not in letters:
                raise rec.fail(f"ground_truth {truth!r} is not one of the option letters {', '.join(letters)}")
        out.append(vsibench_instruction(row_id, rec.get("scene_name", str, nonempty=True), question_type,
                                        rec.get("question", str, nonempty=True), options, truth))
    if skipped:
        log.info("vsibench: %s: skipped %d row(s) of other datasets than %s (%s)", path, sum(skipped.values()),
                 VSIBENCH_DATASET, ", ".join(f"{name} {n}" for name, n in sorted(skipped.items())))
    return out


# The published benchmarks' tasks, in the order synthetic data and `prepare` handle them.
SCANQA = register_task(Task("scanqa", "text", ("ScanQA_v1.0_{split}.json",), lambda path, split: load_scanqa(path)))
SQA3D = register_task(Task("sqa3d", "text", ("v1_balanced_questions_{split}_scannetv2.json",),
                           lambda path, split: load_sqa3d(path)))
SCANREFER = register_task(Task("scanrefer", "box", ("ScanRefer_filtered_{split}.json",),
                               lambda path, split: load_scanrefer(path)))
MULTI3DREFER = register_task(Task("multi3drefer", "box", ("multi3drefer_{split}.json",),
                                  lambda path, split: load_multi3drefer(path)))
SCAN2CAP = register_task(Task("scan2cap", "text", ("ScanRefer_filtered_{split}.json",),
                              lambda path, split: load_scan2cap(path), built_from="scanrefer", object_prompt=True))
NR3D = register_task(Task("nr3d", "box", ("nr3d.csv",), lambda path, split: load_referit3d("nr3d", path, split)))
# sr3d+.csv, the augmented release, is read when sr3d.csv is absent.
SR3D = register_task(Task("sr3d", "box", ("sr3d.csv", "sr3d+.csv"),
                          lambda path, split: load_referit3d("sr3d", path, split)))
# The release is one file (test.jsonl) over ScanNet val scenes: saved as VSI-Bench_val.jsonl it is
# read with the other benchmarks' val split.
VSIBENCH = register_task(Task("vsibench", "text", ("VSI-Bench_{split}.jsonl",),
                              lambda path, split: load_vsibench(path)))


def load_annotations(task: str, path: str | Path, split: str | None = None) -> list[Instruction]:
    """Read `task`'s published annotation file(s) at `path` (a file or a folder) into Instructions."""
    file = find_annotation_file(task, path, split)
    instructions = TASKS[task].load(file, split)
    # Predictions and scores are keyed by id, so two records with one id would silently merge.
    seen: set[str] = set()
    for instruction in instructions:
        if instruction.id in seen:
            raise DataError(file, f"two {task} records share the id {instruction.id!r}")
        seen.add(instruction.id)
    return instructions


# ----------------------------------------------------------------------------- writers


def _list_cell(values: Sequence[Any]) -> str:
    return repr(list(values))


def write_annotations(task: str, instructions: Sequence[Instruction], out_dir: str | Path,
                      split: str = "train") -> list[Path]:
    """Write Instructions in `task`'s published schema under `out_dir`; returns the files written.

    scan2cap is written as the ScanRefer file it is built from (one record per caption), so do
    not also write scanrefer for the same split into the same folder. nr3d/sr3d write one csv
    holding every given instruction (the split lives in the scan lists, see `write_split_lists`).
    """
    tasks = annotation_tasks()
    if task not in tasks:
        raise ValueError(f"unknown task {task!r} (choose from {', '.join(tasks)})")
    out_dir = Path(out_dir)
    for instr in instructions:
        if instr.task != task:
            raise ValueError(f"instruction {instr.id} is a {instr.task} record, not {task}")
    if task == "scanqa":
        records = [{
            "answers": i.answers, "object_ids": i.target_object_ids,
            "object_names": i.extra.get("object_names") or ([i.object_name] * len(i.target_object_ids) if i.object_name else []),
            "question": i.text, "question_id": i.id, "scene_id": i.scene_id,
        } for i in instructions]
        path = out_dir / f"ScanQA_v1.0_{split}.json"
        atomic_write_json(path, records, indent=1)
        return [path]
    if task == "sqa3d":
        questions, annotations = [], []
        for i in instructions:
            qid: int | str = int(i.id) if i.id.isdigit() else i.id
            questions.append({"alternative_situation": i.extra.get("alternative_situation", []),
                              "question": i.text, "question_id": qid, "scene_id": i.scene_id,
                              "situation": i.situation or ""})
            annotations.append({
                "answer_type": i.extra.get("answer_type") or "other",
                "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": n + 1} for n, a in enumerate(i.answers)],
                "position": i.extra.get("position") or {"x": 0.0, "y": 0.0, "z": 0.0},
                "question_id": qid,
                "question_type": i.extra.get("question_type") or "N/A",
                "rotation": i.extra.get("rotation") or {"_w": 1.0, "_x": 0.0, "_y": 0.0, "_z": 0.0},
                "scene_id": i.scene_id,
            })
        q_path = out_dir / f"v1_balanced_questions_{split}_scannetv2.json"
        a_path = out_dir / f"v1_balanced_sqa_annotations_{split}_scannetv2.json"
        atomic_write_json(a_path, {"info": {"description": "SQA3D-format annotations"}, "annotations": annotations}, indent=1)
        atomic_write_json(q_path, {"info": {"description": "SQA3D-format questions"}, "questions": questions}, indent=1)
        return [q_path, a_path]
    if task in ("scanrefer", "scan2cap"):
        records = []
        for i in instructions:
            object_id = i.target_object_ids[0]
            eval_type = "unique" if i.eval_subgroup.get("unique") else "multiple"
            if task == "scanrefer":
                ann_ids, descriptions = [i.id.rsplit("|", 1)[-1]], [i.text]
                tokens = [i.extra.get("token") or tokenize(i.text)]
            else:
                ann_ids = i.extra.get("ann_ids") or [str(n) for n in range(len(i.answers))]
                descriptions = i.answers
                tokens = [tokenize(text) for text in descriptions]
            for ann_id, text, token in zip(ann_ids, descriptions, tokens, strict=True):
                records.append({"scene_id": i.scene_id, "object_id": str(object_id), "object_name": i.object_name,
                                "ann_id": str(ann_id), "description": text, "token": token,
                                "eval_type": eval_type})
        path = out_dir / f"ScanRefer_filtered_{split}.json"
        atomic_write_json(path, records, indent=1)
        return [path]
    if task == "multi3drefer":
        records = [{"scene_id": i.scene_id, "object_name": i.object_name, "ann_id": i.extra.get("ann_id", i.id.rsplit("|", 1)[-1]),
                    "description": i.text, "object_ids": i.target_object_ids,
                    "eval_type": i.eval_subgroup["eval_type"]} for i in instructions]
        path = out_dir / f"multi3drefer_{split}.json"
        atomic_write_json(path, records, indent=1)
        return [path]
    if task == "vsibench":
        rows = [{"id": int(i.id) if i.id.isdigit() else i.id, "dataset": i.extra.get("dataset", VSIBENCH_DATASET),
                 "scene_name": i.scene_id, "question_type": i.eval_subgroup["question_type"],
                 "question": i.extra["question"], "options": i.extra.get("options"), "ground_truth": i.answers[0]}
                for i in instructions]
        path = out_dir / f"VSI-Bench_{split}.jsonl"
        atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in rows))
        return [path]
    # nr3d / sr3d
    buffer = io.StringIO()
    columns = NR3D_COLUMNS if task == "nr3d" else SR3D_COLUMNS
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for i in instructions:
        target = i.target_object_ids[0]
        distractors = i.extra.get("distractor_ids", [])
        tokens = i.extra.get("tokens") or tokenize(i.text)
        label = (i.object_name or "object").replace(" ", "_")
        stimulus = i.extra.get("stimulus_id") or "-".join(
            [i.scene_id, label, str(1 + len(distractors)), str(target)] + [str(d) for d in distractors])
        row: dict[str, Any] = {"scan_id": i.scene_id, "target_id": target, "utterance": i.text, "stimulus_id": stimulus,
                               "instance_type": i.object_name, "tokens": _list_cell(tokens),
                               "mentions_target_class": str(i.extra.get("mentions_target_class", True)), "dataset": task}
        if task == "nr3d":
            row.update({"assignmentid": i.id, "correct_guess": i.extra.get("correct_guess", "True"),
                        "speaker_id": i.extra.get("speaker_id", "synthetic"),
                        "listener_id": i.extra.get("listener_id", "synthetic"),
                        "uses_object_lang": "True", "uses_spatial_lang": str(bool(i.extra.get("uses_spatial_lang", False))),
                        "uses_color_lang": str(bool(i.extra.get("uses_color_lang", False))),
                        "uses_shape_lang": str(bool(i.extra.get("uses_shape_lang", False)))})
        else:
            row.update({"distractor_ids": _list_cell(distractors), "anchor_ids": _list_cell(i.extra.get("anchor_ids", [])),
                        "anchors_types": _list_cell(i.extra.get("anchors_types", [])),
                        "reference_type": i.extra.get("reference_type", "closest"),
                        "coarse_reference_type": i.extra.get("coarse_reference_type", "horizontal proximity")})
        writer.writerow(row)
    path = out_dir / f"{task}.csv"
    atomic_write_text(path, buffer.getvalue())
    return [path]


def write_split_lists(splits: dict[str, Sequence[str]], out_dir: str | Path) -> list[Path]:
    """`scannetv2_{split}.txt` scene lists (as the peers ship), used to split the ReferIt3D csvs."""
    paths = []
    for split, scenes in splits.items():
        path = Path(out_dir) / f"scannetv2_{split}.txt"
        atomic_write_text(path, "".join(f"{s}\n" for s in scenes))
        paths.append(path)
    return paths
