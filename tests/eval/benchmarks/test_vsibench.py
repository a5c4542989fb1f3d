"""VSI-Bench: its question schema read into Instructions and written back, its metrics (option-letter
accuracy and mean relative accuracy) on hand-computed cases, `vidllm score` end to end, its report
table, and the synthetic scenes' VSI-Bench questions."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from vidllm.cli import main
from vidllm.data.scannet import annotations
from vidllm.data.scannet.annotations import (
    VSIBENCH_CHOICE_PROMPT,
    VSIBENCH_NUMERIC_PROMPT,
    load_annotations,
    load_vsibench,
    write_annotations,
)
from vidllm.errors import DataError
from vidllm.eval.benchmarks import registry, vsibench
from vidllm.eval.benchmarks.vsibench import answer_letter, choice_accuracy, mean_relative_accuracy, score_vsibench
from vidllm.eval.predictions import Prediction
from vidllm.eval.report import _tables, build_report

# Rows in the release's schema: two of other datasets (skipped), numeric and multiple-choice ScanNet ones.
ROWS = [
    {"id": 0, "dataset": "scannet", "scene_name": "scene0000_00", "question_type": "object_counting",
     "question": "How many chair(s) are in this room?", "options": None, "ground_truth": "4"},
    {"id": 1, "dataset": "arkitscenes", "scene_name": "41069025", "question_type": "object_counting",
     "question": "How many table(s) are in this room?", "options": None, "ground_truth": "2"},
    {"id": 2, "dataset": "scannet", "scene_name": "scene0000_00", "question_type": "object_rel_distance",
     "question": "Which of these objects (table, sofa, bed) is the closest to the chair?",
     "options": ["A. table", "B. sofa", "C. bed"], "ground_truth": "B"},
    {"id": 3, "dataset": "scannet", "scene_name": "scene0001_00", "question_type": "object_abs_distance",
     "question": "What is the direct distance between the sofa and the lamp (in meters)?", "options": None,
     "ground_truth": "2.5"},
    {"id": 4, "dataset": "scannet", "scene_name": "scene0001_00", "question_type": "object_rel_direction_easy",
     "question": "If I am standing by the sofa and facing the lamp, is the bed to my left or the right?",
     "options": ["A. left", "B. right"], "ground_truth": "A"},
    {"id": 5, "dataset": "scannetpp", "scene_name": "0a5c013435", "question_type": "route_planning",
     "question": "You are a robot beginning at the door ...", "options": ["A. Turn Left", "B. Turn Right"],
     "ground_truth": "A"},
    {"id": 6, "dataset": "scannet", "scene_name": "scene0001_00", "question_type": "object_rel_direction_hard",
     "question": "If I am standing by the sofa and facing the lamp, is the bed to my front-left, front-right, "
                 "back-left, or back-right?",
     "options": ["A. front-left", "B. front-right", "C. back-left", "D. back-right"], "ground_truth": "D"},
]
SCANNET_IDS = ["0", "2", "3", "4", "6"]

# Predictions and what each scores (hand-computed; gt > 0, MRA counts θ with |pred − gt| / gt < 1 − θ):
PREDICTIONS = {
    "0": "3",  # |3 − 4| / 4 = 0.25 < 1 − θ for θ = .50 .55 .60 .65 .70 → 5/10
    "2": "b. sofa",  # the letter B → 1
    "3": "2.75",  # 0.25 / 2.5 = 0.1 < 1 − θ for θ = .50 … .85 → 8/10 (0.1 < 0.1 is false at θ = .90)
    "4": "B",  # A expected → 0
    "6": "D.",  # → 1
}


def _write(path: Path, rows: list[dict], form: str) -> Path:
    if form == "json":
        path.write_text(json.dumps(rows, indent=1))
    elif form == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.parametrize(("pred", "gt", "expected"), [
    ("10", "10", 1.0),
    ("9", "10", 0.8),  # 0.1 < 1 − θ for θ ≤ .85: 8 of 10
    ("11", "10", 0.8),
    ("8", "10", 0.6),  # 0.2 < 1 − θ for θ ≤ .75
    ("7", "10", 0.4),  # 0.3: θ ≤ .65
    ("5", "10", 0.0),  # 0.5 < 0.5 is false already at θ = .50
    ("15", "10", 0.0),
    ("3", "4", 0.5),  # 0.25: θ ≤ .70
    ("2.75", "2.5", 0.8),  # exactly 0.1, as 9 vs 10
    ("2.6", "2.5", 1.0),  # 0.04 < 0.05
    ("3.5 meters", "4", 0.8),  # the first word; 0.125: θ ≤ .85
    ("10.", "10", 1.0),
    ("3.5m", "4", 0.0),  # not a number
    ("about 4", "4", 0.0),
    ("", "4", 0.0),
])
def test_mean_relative_accuracy_on_hand_computed_cases(pred, gt, expected):
    assert float(mean_relative_accuracy(pred, gt)) == expected


@pytest.mark.parametrize("pred", ["B", "b", "b.", "B. chair", " (B) ", "b, the sofa"])
def test_an_answer_gives_its_option_letter(pred):
    assert answer_letter(pred) == "B"
    assert choice_accuracy(pred, "B") == 1 and choice_accuracy(pred, "A") == 0


@pytest.mark.parametrize("pred", ["Bed", "", "A", "the answer is B"])
def test_anything_else_is_not_the_letter(pred):
    assert choice_accuracy(pred, "B") == 0


@pytest.mark.parametrize("form", ["json", "jsonl", "parquet"])
def test_the_loader_reads_the_scannet_rows_of_the_published_schema(tmp_path, caplog, form):
    path = _write(tmp_path / f"VSI-Bench_val.{form}", ROWS, form)
    with caplog.at_level(logging.INFO, logger=annotations.__name__):
        instructions = load_vsibench(path)
    assert [i.id for i in instructions] == SCANNET_IDS
    assert "skipped 2 row(s) of other datasets than scannet (arkitscenes 1, scannetpp 1)" in caplog.text
    count, closest = instructions[0], instructions[1]
    assert (count.task, count.scene_id, count.answers) == ("vsibench", "scene0000_00", ["4"])
    assert count.text == f"How many chair(s) are in this room?\n{VSIBENCH_NUMERIC_PROMPT}"
    assert closest.text == ("Which of these objects (table, sofa, bed) is the closest to the chair?\nOptions:\n"
                            f"A. table\nB. sofa\nC. bed\n{VSIBENCH_CHOICE_PROMPT}")
    assert closest.answers == ["B"] and closest.eval_subgroup == {"question_type": "object_rel_distance"}
    assert closest.extra == {"dataset": "scannet", "question": ROWS[2]["question"], "options": ROWS[2]["options"]}


def test_a_folder_holds_the_split_file_which_writes_back_as_read(tmp_path):
    _write(tmp_path / "VSI-Bench_val.jsonl", ROWS, "jsonl")
    original = load_annotations("vsibench", tmp_path, "val")
    assert [i.id for i in original] == SCANNET_IDS
    with pytest.raises(DataError, match="looked for VSI-Bench_test.jsonl"):
        load_annotations("vsibench", tmp_path, "test")
    write_annotations("vsibench", original, tmp_path / "copy", split="val")
    rows = [json.loads(line) for line in (tmp_path / "copy" / "VSI-Bench_val.jsonl").read_text().splitlines()]
    assert rows == [r for r in ROWS if r["dataset"] == "scannet"]  # the published schema, field for field
    assert load_annotations("vsibench", tmp_path / "copy", "val") == original


@pytest.mark.parametrize(("change", "problem"), [
    ({"question_type": "object_height"}, r"row 0 \(id 2\): question_type should be one of object_counting"),
    ({"options": None}, r"row 0 \(id 2\): a object_rel_distance question needs 'options'"),
    ({"ground_truth": "D"}, r"ground_truth 'D' is not one of the option letters A, B, C"),
    ({"options": ["table", "sofa"]}, r"options should read 'A. ...'"),
    ({"question_type": "object_counting", "options": None, "ground_truth": "many"},
     r"ground_truth of a object_counting question should be a positive number, got 'many'"),
    ({"question_type": "object_counting", "options": None, "ground_truth": "0"}, r"positive number, got '0'"),
    ({"question_type": "object_counting", "ground_truth": "3"}, r"a object_counting question has no options"),
    ({"scene_name": ""}, r"row 0 \(id 2\): field 'scene_name' is empty"),
    ({"id": None}, r"row 0: missing field 'id'"),
])
def test_malformed_rows_name_the_file_and_the_row(tmp_path, change, problem):
    path = _write(tmp_path / "VSI-Bench_val.json", [{**ROWS[2], **change}], "json")
    with pytest.raises(DataError, match=problem):
        load_vsibench(path)


def _score(tmp_path: Path, capsys, predictions: dict[str, str]) -> dict:
    _write(tmp_path / "VSI-Bench_val.jsonl", ROWS, "jsonl")
    pred = tmp_path / "vsibench.jsonl"
    pred.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in predictions.items()))
    run = tmp_path / "run"
    assert main(["score", "--benchmark", "vsibench", "--pred", str(pred), "--gt", str(tmp_path), "--split", "val",
                 "--json", "--out", str(run / "metrics_vsibench.json")]) == 0
    result = json.loads(capsys.readouterr().out)
    (run / "metrics.json").write_text(json.dumps({"vsibench": result}))
    return result


def test_vidllm_score_end_to_end_with_hand_computed_scores(tmp_path, capsys):
    result = _score(tmp_path, capsys, PREDICTIONS)
    assert result["count"] == 5
    assert result["subgroups"] == {
        "object_counting": {"MRA": 0.5, "count": 1},
        "object_abs_distance": {"MRA": 0.8, "count": 1},
        "object_rel_distance": {"accuracy": 1.0, "count": 1},
        "object_rel_direction_easy": {"accuracy": 0.0, "count": 1},
        "object_rel_direction_hard": {"accuracy": 1.0, "count": 1},
        "object_rel_direction": {"accuracy": 0.5, "count": 2},  # mean of its levels (0 and 1)
    }
    # overall: the four categories present, counting 0.5, distance 0.8, rel. distance 1, rel. direction 0.5
    assert result["metrics"] == {"overall": 0.7, "accuracy": 2 / 3, "MRA": 0.65}

    md = build_report(tmp_path / "run").markdown.read_text()
    table = md.split("## VSI-Bench — visual-spatial intelligence (ScanNet questions)")[1].split("## ")[0]
    assert ("| Method | Avg. | Obj. Count | Abs. Dist. | Obj. Size | Room Size | Rel. Dist. | Rel. Dir. | Route Plan "
            "| Appr. Order |") in table
    assert "| Vid-LLM (this run) | 70.0 | 50.0 | 80.0 | — | — | 100.0 | 50.0 | — | — |" in table
    assert "Vid-LLM (paper)" not in table  # the Vid-LLM paper reports no VSI-Bench numbers


def test_the_ground_truth_scored_against_itself_gives_100(tmp_path, capsys):
    truth = {str(r["id"]): r["ground_truth"] for r in ROWS if r["dataset"] == "scannet"}
    result = _score(tmp_path, capsys, truth)
    assert result["metrics"] == {"overall": 1.0, "accuracy": 1.0, "MRA": 1.0}
    md = build_report(tmp_path / "run").markdown.read_text()
    assert "| Vid-LLM (this run) | 100.0 | 100.0 | 100.0 | — | — | 100.0 | 100.0 | — | — |" in md


def test_registered_as_a_text_benchmark_with_its_table_only_when_scored():
    assert registry.get("vsibench") is vsibench.SPEC and "vsibench" in registry.text_benchmarks()
    assert annotations.TASKS["vsibench"] is vsibench.VSIBENCH and "vsibench" in annotations.trained_tasks()
    assert [c.header for c in vsibench.SPEC.ablation_columns] == ["VSI avg"]
    assert not any(b == ("h2", vsibench.VSI_TABLE.title) for b in _tables({}, None))


# ----------------------------------------------------------------------------- synthetic scenes


def _named(scene, name: str):
    """The object "chair" or "red chair" names (unique by class, or by colour within its class)."""
    found = [o for o in scene.objects if name in (o.label, f"{o.color_name} {o.label}")]
    assert len(found) == 1, f"{name!r} names {len(found)} objects"
    return found[0]


def _between(text: str, before: str, after: str) -> str:
    return text.split(before, 1)[1].split(after, 1)[0]


@pytest.fixture(scope="module")
def demo_dataset(tmp_path_factory):
    """The demo recipe's synthetic scenes (six, 1-2 s): every generated question type occurs in them."""
    from vidllm.config import load_config
    from vidllm.data.synthetic.generate import generate_dataset

    return generate_dataset(tmp_path_factory.mktemp("vsi"), load_config("demo").data.synth, progress=False,
                            keep_depths=False)


def test_synthetic_scenes_ask_every_generated_type_with_answers_from_the_geometry(demo_dataset):
    ds = demo_dataset
    questions = ds.instructions["vsibench"]
    assert {q.eval_subgroup["question_type"] for q in questions} == {
        "object_counting", "object_abs_distance", "object_size_estimation", "room_size_estimation",
        "object_rel_distance", "object_rel_direction_easy", "object_rel_direction_hard", "obj_appearance_order"}
    for q in questions:
        scene, question, options, truth = ds.scene(q.scene_id), q.extra["question"], q.extra["options"], q.answers[0]
        kind = q.eval_subgroup["question_type"]
        answer = options[ord(truth) - ord("A")].split(". ", 1)[1] if options else None
        if kind == "object_counting":
            label = _between(question, "How many ", "(s)")
            assert int(truth) == sum(o.label == label for o in scene.objects) >= 1
        elif kind == "object_abs_distance":
            a = _named(scene, _between(question, "between the ", " and the "))
            b = _named(scene, _between(question, " and the ", " (in meters)"))
            assert float(truth) == pytest.approx(np.linalg.norm(a.box[:3] - b.box[:3]), abs=0.05)
        elif kind == "object_size_estimation":
            obj = _named(scene, _between(question, "height) of the ", ", measured"))
            assert int(truth) == round(float(obj.box[3:].max()) * 100)
        elif kind == "room_size_estimation":
            assert float(truth) == pytest.approx(scene.room_size[0] * scene.room_size[1], abs=0.05)
        elif kind == "object_rel_distance":
            target = _named(scene, _between(question, "is the closest to the ", "?"))
            dist = {o.split(". ", 1)[1]: np.linalg.norm(_named(scene, o.split(". ", 1)[1]).box[:3] - target.box[:3])
                    for o in options}
            assert answer == min(dist, key=dist.get)
        elif kind.startswith("object_rel_direction"):
            stand = _named(scene, _between(question, "standing by the ", " and facing"))
            face = _named(scene, _between(question, "facing the ", ", is the "))
            obj = _named(scene, _between(question, ", is the ", " to my"))
            forward = (face.box[:2] - stand.box[:2]) / np.linalg.norm(face.box[:2] - stand.box[:2])
            side = (obj.box[:2] - stand.box[:2]) @ np.array([-forward[1], forward[0]])
            ahead = (obj.box[:2] - stand.box[:2]) @ forward
            assert answer.endswith("left" if side > 0 else "right")
            if kind.endswith("hard"):
                assert answer.startswith("front" if ahead > 0 else "back")
        elif kind == "obj_appearance_order":
            first = {label: min(scene.first_visible[o.object_id] for o in scene.objects if o.label == label)
                     for label in answer.split(", ")}
            assert list(first) == sorted(first, key=first.get) and len(set(first.values())) == len(first)
        else:
            pytest.fail(f"unexpected question type {kind}")


def test_synthetic_questions_score_100_with_their_ground_truth_and_0_when_wrong(demo_dataset):
    questions = [q for q in demo_dataset.instructions["vsibench"] if q.scene_id in demo_dataset.splits["val"]]
    right = {q.id: Prediction(q.id, 0, text=q.answers[0]) for q in questions}
    result = score_vsibench(questions, right, "synthetic")
    assert result["metrics"] == {"overall": 1.0, "accuracy": 1.0, "MRA": 1.0}
    # A letter that is not the answer; a number twice the answer (|2g − g| / g = 1, never < 1 − θ).
    wrong = {q.id: Prediction(q.id, 0, text="Z" if q.extra["options"] else str(2 * float(q.answers[0])))
             for q in questions}
    assert score_vsibench(questions, wrong, "synthetic")["metrics"] == {"overall": 0.0, "accuracy": 0.0, "MRA": 0.0}
