"""Per-item scores (`vidllm score --per-sample`), for every registered benchmark: its published
ground truth scored against itself turned into predictions is perfect, one perturbed item moves the
aggregates by hand-computed amounts, and the aggregates are computed from the per-item lines."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from vidllm.cli import main
from vidllm.data.scannet.annotations import load_annotations
from vidllm.errors import VidLLMError
from vidllm.eval.benchmarks import registry
from vidllm.eval.benchmarks.ground_truth import load_boxes_from_scans

SPLIT = "val"
WRONG = "zzzz"  # matches no answer, option letter or number
IOU_04_SHIFT = 3 / 7  # a box moved by 3/7 of its x size overlaps itself with IoU (1 − 3/7) / (1 + 3/7) = 0.4

# What a perfect prediction scores, per item (the keys a line has) and overall; every registered benchmark
# needs an entry. VSI-Bench's lines carry "accuracy" (multiple choice) or "MRA" (numeric).
REFERIT3D_ITEM = {"Acc": 1.0, "IoU": 1.0, "Acc@0.25": 1.0, "Acc@0.5": 1.0}
PERFECT_ITEM: dict[str, dict[str, float]] = {
    "scanqa": {"EM@1": 1.0, "EM@1-refined": 1.0, "EM@1-raw": 1.0},
    "sqa3d": {"EM@1": 1.0, "EM@1-refined": 1.0},
    "scanrefer": {"IoU": 1.0, "Acc@0.25": 1.0, "Acc@0.5": 1.0},
    "multi3drefer": {"F1@0.25": 1.0, "F1@0.5": 1.0},
    # Several references per object, so CIDEr has no fixed value here (one reference: the test below).
    "scan2cap": {"IoU": 1.0, "gate": True, "BLEU-4@0.5": 1.0, "ROUGE-L@0.5": 1.0, "ROUGE-L": 1.0},
    "nr3d": REFERIT3D_ITEM,
    "sr3d": REFERIT3D_ITEM,
    "vsibench": {"accuracy": 1.0, "MRA": 1.0},
    "recon": {"depth/delta1": 1.0, "depth/abs_rel": 0.0, "depth/rmse": 0.0, "depth/log10": 0.0,
              "pose/RRA@15": 1.0, "pose/RTA@15": 1.0, "pose/AUC@30": 1.0, "recon/Acc": 0.0, "recon/Comp": 0.0,
              "recon/Precision": 1.0, "recon/Recall": 1.0, "recon/F-score": 1.0},
}
PERFECT_METRICS: dict[str, dict[str, float]] = {
    **{name: {k: v for k, v in item.items() if k not in ("IoU", "gate", "ROUGE-L")} for name, item in PERFECT_ITEM.items()},
    "scanrefer": {"Acc@0.25": 1.0, "Acc@0.5": 1.0, "mean_IoU": 1.0},
    "vsibench": {"overall": 1.0, "accuracy": 1.0, "MRA": 1.0},
}

# The perturbed item (QA: a wrong answer; boxes: one moved to IoU 0.4; recon: the second scene's depth
# doubled and its points moved 10 m): its line, and the aggregates over n items, n − 1 of them perfect.
REFERIT3D_MOVED = {"Acc": 1.0, "IoU": 0.4, "Acc@0.25": 1.0, "Acc@0.5": 0.0}  # still overlaps its target most
PERTURBED_ITEM: dict[str, dict[str, float]] = {
    "scanqa": {"EM@1": 0.0, "EM@1-refined": 0.0, "EM@1-raw": 0.0},
    "sqa3d": {"EM@1": 0.0, "EM@1-refined": 0.0},
    "scanrefer": {"IoU": 0.4, "Acc@0.25": 1.0, "Acc@0.5": 0.0},
    "multi3drefer": {"F1@0.25": 1.0, "F1@0.5": 0.0},
    "scan2cap": {"IoU": 0.4, "gate": False, "CIDEr@0.5": 0.0, "BLEU-4@0.5": 0.0, "ROUGE-L@0.5": 0.0, "ROUGE-L": 1.0},
    "nr3d": REFERIT3D_MOVED,
    "sr3d": REFERIT3D_MOVED,
    "vsibench": {"MRA": 0.0},  # its first question is numeric (object counting)
    "recon": {"depth/delta1": 0.0, "depth/abs_rel": 1.0, "depth/rmse": 2.0, "depth/log10": math.log10(2),
              "pose/AUC@30": 1.0, "recon/Precision": 0.0, "recon/Recall": 0.0, "recon/F-score": 0.0},
}
PERTURBED_METRICS: dict[str, Callable[[int], dict[str, float]]] = {
    "scanqa": lambda n: dict.fromkeys(("EM@1", "EM@1-refined", "EM@1-raw"), (n - 1) / n),
    "sqa3d": lambda n: dict.fromkeys(("EM@1", "EM@1-refined"), (n - 1) / n),
    "scanrefer": lambda n: {"Acc@0.25": 1.0, "Acc@0.5": (n - 1) / n, "mean_IoU": (n - 0.6) / n},
    "multi3drefer": lambda n: {"F1@0.25": 1.0, "F1@0.5": (n - 1) / n},
    "scan2cap": lambda n: {"BLEU-4@0.5": (n - 1) / n, "ROUGE-L@0.5": (n - 1) / n},
    "nr3d": lambda n: {"Acc": 1.0, "Acc@0.25": 1.0, "Acc@0.5": (n - 1) / n},
    "sr3d": lambda n: {"Acc": 1.0, "Acc@0.25": 1.0, "Acc@0.5": (n - 1) / n},
    "vsibench": lambda n: {"MRA": (n - 1) / n, "accuracy": 1.0},  # n: the numeric questions
    "recon": lambda n: {"depth/delta1": 0.5, "depth/abs_rel": 0.5, "depth/rmse": 1.0, "depth/log10": math.log10(2) / 2,
                        "pose/AUC@30": 1.0, "recon/F-score": 0.5},
}
CORPUS_LEVEL = ("BLEU-4", "METEOR")  # coco-caption's corpus statistics, not means of the per-caption values


def _jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _score(capsys, *argv: str) -> dict:
    assert main(["score", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _ground_truth_as_predictions(name: str, dataset, perturb: bool) -> tuple[list[dict], str]:
    """Prediction records that are the ground truth; with `perturb`, one item made wrong. Returns them
    and the perturbed item's id."""
    spec = registry.get(name)
    instructions = load_annotations(name, dataset.annotations_dir, SPLIT)
    boxes = (load_boxes_from_scans(dataset.scan_dir, [i.scene_id for i in instructions])
             if spec.task.needs_boxes else {})
    moved_box = spec.task.needs_boxes  # grounding and Scan2Cap's gate: move a box; QA: a wrong answer
    target = next(i for i in instructions if len(i.target_object_ids) == 1 or not moved_box).id
    records = []
    for inst in instructions:
        record = {"id": inst.id}
        if spec.task.kind == "text":
            record["text"] = WRONG if perturb and inst.id == target and not moved_box else inst.answers[0]
        if spec.task.needs_boxes:
            gt = [np.array(boxes[inst.scene_id][o], dtype=float) for o in inst.target_object_ids]
            if perturb and inst.id == target:
                gt[0][0] += IOU_04_SHIFT * gt[0][3]
            record["boxes"] = [b.tolist() for b in gt]
        records.append(record)
    return records, target


def _recon_predictions(folder: Path, perturb: bool) -> tuple[list[dict], str]:
    from vidllm.artifacts.run_dir import write_geometry

    rng = np.random.default_rng(0)
    records = []
    for scene_id in ("scene0000_00", "scene0001_00"):
        poses = np.tile(np.eye(4), (3, 1, 1))
        poses[:, :3, 3] = rng.normal(size=(3, 3))
        depth = np.full((3, 8, 10), 2.0, np.float32)
        points = rng.uniform(0, 2, size=(5000, 3)).astype(np.float32)
        depth_pred, points_pred = depth, points
        if perturb and scene_id == "scene0001_00":
            depth_pred, points_pred = 2 * depth, points + np.float32(10.0)  # clear of the GT cube [0, 2]³
        geometry = f"geometry/{scene_id}.npz"
        write_geometry(folder / geometry, depth_pred=depth_pred, depth_gt=depth, camera_to_world_pred=poses,
                       camera_to_world_gt=poses, points_pred=points_pred, points_gt=points)
        records.append({"id": scene_id, "geometry": geometry})
    return records, "scene0001_00"


def _score_with_per_sample(name: str, dataset, folder: Path, capsys, perturb: bool) -> tuple[dict, list[dict], str]:
    spec = registry.get(name)
    folder.mkdir()
    if spec.task.annotation_files:
        records, target = _ground_truth_as_predictions(name, dataset, perturb)
        argv = ["--gt", str(dataset.annotations_dir), "--split", SPLIT, "--no-meteor"]
        if spec.task.needs_boxes:
            argv += ["--scans", str(dataset.scan_dir)]
    else:
        records, target = _recon_predictions(folder, perturb)
        argv = []
    pred = _jsonl(folder / f"{name}.jsonl", records)
    out = folder / "per_sample.jsonl"
    result = _score(capsys, "--benchmark", name, "--pred", str(pred), *argv, "--per-sample", str(out))
    lines = _read_lines(out)
    assert [line["id"] for line in lines] == [r["id"] for r in records]  # one line per prediction, in GT order
    assert "per_sample" not in result  # the rows stay out of metrics.json
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == []  # no temp file left
    return result, lines, target


def _assert_aggregates_come_from_the_lines(result: dict, lines: list[dict]) -> None:
    """Every metric a line also carries is the mean over the lines that carry it (NaN-skipping, as recon)."""
    compared = 0
    for key, value in result["metrics"].items():
        values = [line[key] for line in lines if key in line]
        if values and key not in CORPUS_LEVEL:
            mean = float(np.nanmean([np.nan if v is None else v for v in values]))
            assert value == pytest.approx(mean, abs=1e-12), key
            compared += 1
    assert compared > 0


def _assert_item(line: dict, expected: dict[str, float]) -> None:
    present = {k: v for k, v in expected.items() if k in line}
    assert present, f"{line['id']}: none of {sorted(expected)} in {sorted(line)}"
    assert {k: line[k] for k in present} == pytest.approx(present, abs=1e-6), line["id"]


def test_every_registered_benchmark_has_expectations():
    for table in (PERFECT_ITEM, PERFECT_METRICS, PERTURBED_ITEM, PERTURBED_METRICS):
        assert set(registry.names()) <= set(table)


@pytest.mark.parametrize("name", registry.names())
def test_ground_truth_against_itself_scores_perfect_per_item_and_overall(name, synthetic_dataset, tmp_path, capsys):
    if name not in PERFECT_ITEM:
        pytest.fail(f"no per-sample expectations for benchmark '{name}': add them to this module's tables")
    result, lines, _ = _score_with_per_sample(name, synthetic_dataset, tmp_path / "perfect", capsys, perturb=False)
    assert result["count"] == len(lines) > 1
    for line in lines:
        _assert_item(line, PERFECT_ITEM[name])
        if name == "recon":  # a recon prediction's id is its scene
            assert line["scene"] == line["id"]
        else:
            assert line["scene"].startswith("scene")
    assert result["metrics"] == pytest.approx({**result["metrics"], **PERFECT_METRICS[name]}, abs=1e-6)
    _assert_aggregates_come_from_the_lines(result, lines)
    if name == "scan2cap":  # every box passes the gate: the gated CIDEr is the ungated one
        assert result["box_recall"] == 1.0
        assert result["metrics"]["CIDEr@0.5"] == pytest.approx(result["subgroups"]["ungated_corpus"]["CIDEr"])


@pytest.mark.parametrize("name", registry.names())
def test_one_perturbed_item_moves_the_scores_by_hand_computed_amounts(name, synthetic_dataset, tmp_path, capsys):
    if name not in PERTURBED_ITEM:
        pytest.fail(f"no per-sample expectations for benchmark '{name}': add them to this module's tables")
    _, perfect, _ = _score_with_per_sample(name, synthetic_dataset, tmp_path / "perfect", capsys, perturb=False)
    result, lines, target = _score_with_per_sample(name, synthetic_dataset, tmp_path / "perturbed", capsys,
                                                   perturb=True)
    moved = next(line for line in lines if line["id"] == target)
    _assert_item(moved, PERTURBED_ITEM[name])
    # Only the perturbed item's line changes (CIDEr's document frequencies come from the references alone).
    assert [line for line in lines if line["id"] != target] == [p for p in perfect if p["id"] != target]
    n = sum(set(line) == set(moved) for line in lines)  # VSI-Bench: the questions scored like the moved one
    assert result["metrics"] == pytest.approx({**result["metrics"], **PERTURBED_METRICS[name](n)}, abs=1e-6)
    _assert_aggregates_come_from_the_lines(result, lines)
    if name == "scan2cap":
        assert result["box_recall"] == pytest.approx((n - 1) / n)


BOXES = {"scene0000_00": {"0": [0, 0, 0.5, 1, 1, 1], "1": [3, 0, 0.5, 1, 1, 1], "2": [0, 3, 0.5, 2, 1, 1]},
         "scene0001_00": {"0": [1, 1, 1, 2, 2, 2]}}
CAPTIONS = {("scene0000_00", "0", "chair"): "a brown wooden chair near the door.",
            ("scene0000_00", "1", "chair"): "the black office chair faces a desk.",
            ("scene0000_00", "2", "table"): "long grey table along one wall.",
            ("scene0001_00", "0", "box"): "small cardboard box sits on shelves."}


def test_scan2cap_caption_against_itself_scores_cider_10_and_a_failed_gate_a_quarter_less(tmp_path, capsys):
    """With one reference per object, a caption equal to it has cosine similarity 1 at every n-gram
    order, so CIDEr-D (×10, no length penalty at equal lengths) is 10; one box at IoU 0.4 of 4 fails
    the 0.5 gate: CIDEr@0.5 = 10 · 3/4."""
    gt = tmp_path / "ScanRefer_filtered_val.json"
    gt.write_text(json.dumps([{"scene_id": s, "object_id": o, "object_name": n, "ann_id": "0", "description": c,
                               "token": []} for (s, o, n), c in CAPTIONS.items()]))
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps(BOXES))
    records = [{"id": f"{s}|{o}|{n}", "text": c, "boxes": [BOXES[s][o]]} for (s, o, n), c in CAPTIONS.items()]
    args = ["--benchmark", "scan2cap", "--gt", str(gt), "--boxes", str(boxes), "--no-meteor"]
    out = tmp_path / "items.jsonl"
    result = _score(capsys, *args, "--pred", str(_jsonl(tmp_path / "cap.jsonl", records)), "--per-sample", str(out))
    assert [line["CIDEr"] for line in _read_lines(out)] == pytest.approx([10.0] * 4)
    assert result["metrics"]["CIDEr@0.5"] == pytest.approx(10.0)
    assert result["subgroups"]["ungated_corpus"]["CIDEr"] == pytest.approx(10.0)

    moved = [*records[:3], {**records[3], "boxes": [[1 + IOU_04_SHIFT * 2, 1, 1, 2, 2, 2]]}]
    result = _score(capsys, *args, "--pred", str(_jsonl(tmp_path / "cap.jsonl", moved)), "--per-sample", str(out))
    last = _read_lines(out)[3]
    assert last["IoU"] == pytest.approx(0.4) and last["gate"] is False
    assert last["CIDEr"] == pytest.approx(10.0) and last["CIDEr@0.5"] == 0.0
    assert result["metrics"]["CIDEr@0.5"] == pytest.approx(7.5) and result["box_recall"] == 0.75


def test_per_sample_lines_for_one_wrong_answer_of_four(tmp_path, capsys):
    gt = tmp_path / "ScanQA_v1.0_val.json"
    answers = ["brown", "two", "yes", "in the corner"]
    gt.write_text(json.dumps([
        {"scene_id": "scene0000_00", "question_id": f"q{k}", "question": q, "answers": [a], "object_ids": [0],
         "object_names": ["chair"]}
        for k, (q, a) in enumerate(zip(["What color is the chair?", "How many chairs are there?",
                                         "Is there a table?", "Where is the lamp?"], answers, strict=True))]))
    pred = _jsonl(tmp_path / "qa.jsonl", [{"id": f"q{k}", "text": a} for k, a in enumerate([*answers[:3], "red"])])
    out = tmp_path / "out" / "items.jsonl"
    result = _score(capsys, "--benchmark", "scanqa", "--pred", str(pred), "--gt", str(gt), "--no-meteor",
                    "--per-sample", str(out))
    assert result["metrics"]["EM@1"] == 0.75
    lines = _read_lines(out)
    assert [(line["id"], line["scene"], line["family"], line["EM@1"]) for line in lines] == [
        ("q0", "scene0000_00", "colour", 1.0), ("q1", "scene0000_00", "count", 1.0),
        ("q2", "scene0000_00", "existence", 1.0), ("q3", "scene0000_00", "other", 0.0)]
    assert {"CIDEr", "BLEU-4", "ROUGE-L"} <= set(lines[0]) and "METEOR" not in lines[0]


def test_a_scorer_without_per_item_rows_is_refused_only_when_asked(tmp_path, monkeypatch):
    from vidllm.eval.scoring import score_predictions

    spec = registry.get("sqa3d")

    def aggregate_only(inputs):
        return {k: v for k, v in spec.score(inputs).items() if k != "per_sample"}

    monkeypatch.setitem(registry.BENCHMARKS, "sqa3d", replace(spec, score=aggregate_only))
    (tmp_path / "v1_balanced_questions_val_scannetv2.json").write_text(json.dumps({"questions": [
        {"scene_id": "scene0000_00", "situation": "I sit.", "alternative_situation": [], "question": "Is it red?",
         "question_id": 1}]}))
    (tmp_path / "v1_balanced_sqa_annotations_val_scannetv2.json").write_text(json.dumps({"annotations": [
        {"scene_id": "scene0000_00", "question_id": 1, "answer_type": "yes/no", "question_type": "N/A",
         "answers": [{"answer": "yes", "answer_confidence": "yes", "answer_id": 1}],
         "position": {"x": 0, "y": 0, "z": 0}, "rotation": {"_x": 0, "_y": 0, "_z": 0, "_w": 1}}]}))
    pred = _jsonl(tmp_path / "p.jsonl", [{"id": "1", "text": "yes"}])
    assert score_predictions("sqa3d", pred, tmp_path, split="val")["metrics"]["EM@1"] == 1.0
    with pytest.raises(VidLLMError, match="sqa3d's scorer reports no per-item scores"):
        score_predictions("sqa3d", pred, tmp_path, split="val", per_sample=tmp_path / "items.jsonl")
    assert not (tmp_path / "items.jsonl").exists()


def test_help_documents_per_sample(capsys):
    with pytest.raises(SystemExit):
        main(["score", "--help"])
    assert "--per-sample FILE" in capsys.readouterr().out
