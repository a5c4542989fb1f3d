"""`vidllm score` on hand-made published-schema ground truth with known answers."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from vidllm.cli import main

BOXES = {  # scene -> object id -> box; objects 0/1 are chairs, 2 a table
    "scene0000_00": {"0": [0, 0, 0.5, 1, 1, 1], "1": [3, 0, 0.5, 1, 1, 1], "2": [0, 3, 0.5, 2, 1, 1]},
    "scene0001_00": {"0": [1, 1, 1, 2, 2, 2]},
}


def _write(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path


def _jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _score(capsys, *argv: str) -> dict:
    assert main(["score", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture
def boxes_file(tmp_path: Path) -> Path:
    return _write(tmp_path / "boxes.json", BOXES)


def test_scanrefer_accuracy_unique_multiple(tmp_path, capsys, boxes_file):
    gt = _write(tmp_path / "ScanRefer_filtered_val.json", [
        {"scene_id": "scene0000_00", "object_id": "0", "object_name": "chair", "ann_id": "0",
         "description": "the chair near the door", "token": ["the", "chair"]},
        {"scene_id": "scene0000_00", "object_id": "1", "object_name": "chair", "ann_id": "0",
         "description": "the other chair", "token": ["the", "chair"]},
        {"scene_id": "scene0000_00", "object_id": "2", "object_name": "table", "ann_id": "3",
         "description": "the table", "token": ["the", "table"]},
    ])
    pred = _jsonl(tmp_path / "p.jsonl", [
        {"id": "scene0000_00|0|0", "boxes": [[0, 0, 0.5, 1, 1, 1]]},  # exact
        {"id": "scene0000_00|1|0", "boxes": [[3.5, 0, 0.5, 1, 1, 1]]},  # half overlap: IoU 1/3
        {"id": "scene0000_00|2|3", "boxes": []},  # no box = miss
    ])
    out = _score(capsys, "--benchmark", "scanrefer", "--pred", str(pred), "--gt", str(gt), "--boxes", str(boxes_file))
    assert out["metrics"]["Acc@0.25"] == pytest.approx(2 / 3)
    assert out["metrics"]["Acc@0.5"] == pytest.approx(1 / 3)
    assert out["subgroups"]["unique"] == {"Acc@0.25": 0.0, "Acc@0.5": 0.0, "count": 1}
    assert out["subgroups"]["multiple"]["Acc@0.25"] == 1.0 and out["subgroups"]["multiple"]["Acc@0.5"] == 0.5
    assert out["protocol"] == "unspecified" and "boxes.json" in out["gt_boxes"]


def test_multi3drefer_f1_per_eval_type(tmp_path, capsys, boxes_file):
    gt = _write(tmp_path / "multi3drefer_val.json", [
        {"scene_id": "scene0000_00", "object_name": "chair", "ann_id": 0, "description": "all chairs",
         "object_ids": [0, 1], "eval_type": "mt"},
        {"scene_id": "scene0000_00", "object_name": "sofa", "ann_id": 1, "description": "the sofa",
         "object_ids": [], "eval_type": "zt_w_d"},
        {"scene_id": "scene0001_00", "object_name": "box", "ann_id": 2, "description": "the box",
         "object_ids": [0], "eval_type": "st_wo_d"},
    ])
    pred = _jsonl(tmp_path / "p.jsonl", [
        {"id": "scene0000_00|0|0", "boxes": [[0, 0, 0.5, 1, 1, 1]]},  # 1 of 2 → F1 2/3
        {"id": "scene0000_00|0|1", "boxes": []},  # zero-target, nothing predicted → 1
        {"id": "scene0001_00|0|2", "boxes": [[1, 1, 1, 2, 2, 2], [9, 9, 9, 1, 1, 1]]},  # TP 1, P 2, G 1 → 2/3
    ])
    out = _score(capsys, "--benchmark", "multi3drefer", "--pred", str(pred), "--gt", str(gt), "--boxes", str(boxes_file))
    assert out["metrics"]["F1@0.5"] == pytest.approx((2 / 3 + 1 + 2 / 3) / 3)
    assert out["subgroups"]["zt_w_d"]["F1@0.25"] == 1.0
    assert out["subgroups"]["mt"]["F1@0.5"] == pytest.approx(2 / 3)
    assert out["subgroups"]["st_w_d"]["F1@0.5"] is None  # empty subgroup is null, not NaN


def _write_nr3d(path: Path, rows) -> Path:
    cols = ["assignmentid", "stimulus_id", "utterance", "correct_guess", "speaker_id", "listener_id", "scan_id",
            "instance_type", "target_id", "tokens", "mentions_target_class", "uses_object_lang",
            "uses_spatial_lang", "uses_color_lang", "uses_shape_lang", "dataset"]
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for aid, stim, utt, target in rows:
            w.writerow({"assignmentid": aid, "stimulus_id": stim, "utterance": utt, "correct_guess": "True",
                        "speaker_id": "s", "listener_id": "l", "scan_id": stim.split("-")[0], "instance_type": "chair",
                        "target_id": target, "tokens": repr(utt.split()), "mentions_target_class": "True",
                        "uses_object_lang": "True", "uses_spatial_lang": "False", "uses_color_lang": "False",
                        "uses_shape_lang": "False", "dataset": "nr3d"})
    return path


def test_nr3d_accuracy_easy_hard_view(tmp_path, capsys, boxes_file):
    gt = _write_nr3d(tmp_path / "nr3d.csv", [
        ("a1", "scene0000_00-chair-2-0-1", "the chair on the left", 0),  # easy, view-dependent
        ("a2", "scene0000_00-chair-3-1-0-2", "the chair far from the table", 1),  # hard, view-independent
    ])
    pred = _jsonl(tmp_path / "p.jsonl", [
        {"id": "a1", "boxes": [[0.2, 0, 0.5, 1, 1, 1]]},  # overlaps object 0 most → correct
        {"id": "a2", "boxes": [[0.1, 0, 0.5, 1, 1, 1]]},  # selects object 0, target is 1 → wrong
    ])
    out = _score(capsys, "--benchmark", "nr3d", "--pred", str(pred), "--gt", str(gt), "--boxes", str(boxes_file))
    assert out["metrics"]["Acc"] == 0.5
    sub = out["subgroups"]
    assert sub["easy"]["Acc"] == 1.0 and sub["hard"]["Acc"] == 0.0
    assert sub["view_dependent"]["Acc"] == 1.0 and sub["view_independent"]["Acc"] == 0.0


def test_sqa3d_and_scanqa(tmp_path, capsys):
    _write(tmp_path / "v1_balanced_questions_val_scannetv2.json", {"questions": [
        {"scene_id": "scene0000_00", "situation": "I sit on the bed.", "alternative_situation": [],
         "question": "What is in front of me?", "question_id": 1},
        {"scene_id": "scene0000_00", "situation": "I stand.", "alternative_situation": [],
         "question": "Is the door open?", "question_id": 2},
    ]})
    _write(tmp_path / "v1_balanced_sqa_annotations_val_scannetv2.json", {"annotations": [
        {"scene_id": "scene0000_00", "question_id": 1, "answers": [{"answer": "table", "answer_confidence": "yes", "answer_id": 1}],
         "answer_type": "other", "question_type": "N/A", "position": {"x": 0, "y": 0, "z": 0},
         "rotation": {"_x": 0, "_y": 0, "_z": 0, "_w": 1}},
        {"scene_id": "scene0000_00", "question_id": 2, "answers": [{"answer": "yes", "answer_confidence": "yes", "answer_id": 1}],
         "answer_type": "yes/no", "question_type": "N/A", "position": {"x": 0, "y": 0, "z": 0},
         "rotation": {"_x": 0, "_y": 0, "_z": 0, "_w": 1}},
    ]})
    pred = _jsonl(tmp_path / "sqa.jsonl", [{"id": "1", "text": "The table."}, {"id": "2", "text": "no"}])
    out = _score(capsys, "--benchmark", "sqa3d", "--pred", str(pred), "--gt", str(tmp_path), "--split", "val")
    assert out["metrics"]["EM@1"] == 0.5
    assert out["subgroups"]["what"]["EM@1"] == 1.0 and out["subgroups"]["is"]["EM@1"] == 0.0

    gt = _write(tmp_path / "ScanQA_v1.0_val.json", [
        {"scene_id": "scene0000_00", "question_id": "val-scene0000-0", "question": "What color is the chair?",
         "answers": ["brown", "dark brown"], "object_ids": [0], "object_names": ["chair"]},
        {"scene_id": "scene0000_00", "question_id": "val-scene0000-1", "question": "Where is the table?",
         "answers": ["in the middle of the room"], "object_ids": [2], "object_names": ["table"]},
    ])
    pred = _jsonl(tmp_path / "qa.jsonl", [{"id": "val-scene0000-0", "text": "Brown."},
                                         {"id": "val-scene0000-1", "text": "middle of room"}])
    out = _score(capsys, "--benchmark", "scanqa", "--pred", str(pred), "--gt", str(gt), "--no-meteor")
    assert out["metrics"]["EM@1"] == 0.5
    assert out["metrics"]["EM@1-refined"] == 1.0  # "middleofroom" is a substring of "inmiddleofroom"
    assert out["metrics"]["EM@1-raw"] == 0.0 and out["metrics"]["CIDEr"] > 0
    assert out["tokenize"] == "coco_ptb" and "METEOR" not in out["metrics"]


def test_scan2cap_gate_own_box_and_proposals(tmp_path, capsys, boxes_file):
    gt = _write(tmp_path / "ScanRefer_filtered_val.json", [
        {"scene_id": "scene0000_00", "object_id": "0", "object_name": "chair", "ann_id": "0",
         "description": "this is a brown chair. it is next to the table.", "token": []},
        {"scene_id": "scene0000_00", "object_id": "0", "object_name": "chair", "ann_id": "1",
         "description": "a brown chair by the table.", "token": []},
        {"scene_id": "scene0000_00", "object_id": "2", "object_name": "table", "ann_id": "0",
         "description": "a long table in the room.", "token": []},
    ])
    caption = {"id": "scene0000_00|0|chair", "text": "this is a brown chair. it is next to the table."}
    table = {"id": "scene0000_00|2|table", "text": "a long table in the room.", "boxes": [[0, 3, 0.5, 2, 1, 1]]}
    pred = _jsonl(tmp_path / "cap.jsonl", [{**caption, "boxes": [[5, 5, 5, 1, 1, 1]]}, table])  # chair box wrong
    args = ["--benchmark", "scan2cap", "--pred", str(pred), "--gt", str(gt), "--boxes", str(boxes_file), "--no-meteor"]
    out = _score(capsys, *args)
    assert _score(capsys, *args) == out  # offline scoring is recomputable
    assert out["box_recall"] == 0.5 and out["gate"] == "the prediction's own box"
    per_sample_cider_sum = out["metrics"]["CIDEr@0.5"] * 2
    assert out["metrics"]["CIDEr@0.5"] < out["subgroups"]["ungated_corpus"]["CIDEr"]
    assert per_sample_cider_sum > 0  # the table passed the gate
    # With proposals covering both objects, both captions count.
    (tmp_path / "props").mkdir()
    _write(tmp_path / "props" / "scene0000_00.json", [[0, 0, 0.5, 1, 1, 1], [0, 3, 0.5, 2, 1, 1]])
    out_p = _score(capsys, *args, "--proposals", str(tmp_path / "props"))
    assert out_p["box_recall"] == 1.0 and "proposals" in out_p["gate"]
    assert out_p["metrics"]["CIDEr@0.5"] == pytest.approx(out_p["subgroups"]["ungated_corpus"]["CIDEr"])


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"id": "scene0000_00|0|0", "boxes": [[0, 0, NaN, 1, 1, 1]]}', "line 2: box 0 holds a non-finite value"),
        ('{"id": "scene0000_00|0|0", "boxes": [[0, 0, 1, 1, 1]]}', "line 2: box 0 must have 6 numbers"),
        ('{"id": "scene0000_00|1|0", "boxes": []}', "line 2: duplicate id 'scene0000_00|1|0' (first on line 1)"),
        ('{"id": "scene0000_00|9|9", "boxes": []}', "line 2: id 'scene0000_00|9|9' is not in the ground truth"),
        ('{"boxes": []}', "line 2: 'id' must be a non-empty string"),
        ('{"id": "scene0000_00|0|0"}', "line 2: scanrefer predictions need a 'boxes' field"),
        ("{not json", "line 2: not valid JSON"),
    ],
)
def test_bad_prediction_files_name_the_line(tmp_path, capsys, boxes_file, line, message):
    gt = _write(tmp_path / "ScanRefer_filtered_val.json", [
        {"scene_id": "scene0000_00", "object_id": "0", "object_name": "chair", "ann_id": "0", "description": "a"},
        {"scene_id": "scene0000_00", "object_id": "1", "object_name": "chair", "ann_id": "0", "description": "b"},
    ])
    pred = tmp_path / "bad.jsonl"
    first = '{"id": "scene0000_00|1|0", "boxes": [[3, 0, 0.5, 1, 1, 1]]}'
    pred.write_text(first + "\n" + line + "\n")
    code = main(["score", "--benchmark", "scanrefer", "--pred", str(pred), "--gt", str(gt), "--boxes", str(boxes_file)])
    err = capsys.readouterr().err
    assert code == 2
    assert str(pred) in err and message in err


def test_missing_prediction_is_named(tmp_path, capsys, boxes_file):
    gt = _write(tmp_path / "ScanRefer_filtered_val.json", [
        {"scene_id": "scene0000_00", "object_id": "0", "object_name": "chair", "ann_id": "0", "description": "a"},
        {"scene_id": "scene0000_00", "object_id": "1", "object_name": "chair", "ann_id": "0", "description": "b"},
    ])
    pred = _jsonl(tmp_path / "p.jsonl", [{"id": "scene0000_00|1|0", "boxes": []}])
    assert main(["score", "--benchmark", "scanrefer", "--pred", str(pred), "--gt", str(gt), "--boxes", str(boxes_file)]) == 2
    assert "no prediction for ground-truth id 'scene0000_00|0|0'" in capsys.readouterr().err


def test_recon_scores_geometry_files(tmp_path, capsys):
    from vidllm.artifacts.run_dir import write_geometry

    rng = np.random.default_rng(0)
    poses = np.tile(np.eye(4), (3, 1, 1))
    poses[:, :3, 3] = rng.normal(size=(3, 3))
    depth = rng.uniform(1, 4, size=(3, 8, 10)).astype(np.float32)
    points = rng.uniform(0, 2, size=(5000, 3)).astype(np.float32)
    write_geometry(tmp_path / "geometry" / "scene0000_00.npz", depth_pred=depth, depth_gt=depth,
                   camera_to_world_pred=poses, camera_to_world_gt=poses, points_pred=points, points_gt=points)
    pred = _jsonl(tmp_path / "recon.jsonl", [{"id": "scene0000_00", "geometry": "geometry/scene0000_00.npz"}])
    out = _score(capsys, "--benchmark", "recon", "--pred", str(pred), "--protocol", "umeyama_sim3")
    m = out["metrics"]
    assert m["depth/delta1"] == 1.0 and m["depth/abs_rel"] == 0.0
    assert m["pose/AUC@30"] == pytest.approx(1.0) and m["recon/F-score"] == 1.0
    assert out["protocol"] == "P2"  # the former name, as P2
    _jsonl(pred, [{"id": "scene0000_00", "geometry": "geometry/missing.npz"}])
    assert main(["score", "--benchmark", "recon", "--pred", str(pred)]) == 2
    assert "line 1: geometry file 'geometry/missing.npz' not found" in capsys.readouterr().err


def test_score_predictions_library_call_matches_cli(tmp_path, capsys, boxes_file):
    """The CLI is a thin shell: the library function with plain arguments gives the same result."""
    from vidllm.artifacts.run_dir import jsonable
    from vidllm.errors import VidLLMError
    from vidllm.eval.scoring import score_predictions

    gt = _write(tmp_path / "ScanRefer_filtered_val.json", [
        {"scene_id": "scene0000_00", "object_id": "2", "object_name": "table", "ann_id": "0", "description": "a"},
    ])
    pred = _jsonl(tmp_path / "p.jsonl", [{"id": "scene0000_00|2|0", "boxes": [[0.5, 3, 0.5, 2, 1, 1]]}])
    result = score_predictions("scanrefer", pred, gt, boxes=boxes_file, protocol="umeyama_sim3")
    assert result["metrics"]["Acc@0.25"] == 1.0 and result["metrics"]["mean_IoU"] == pytest.approx(1.5 / 2.5)
    assert jsonable(result) == _score(capsys, "--benchmark", "scanrefer", "--pred", str(pred), "--gt", str(gt),
                                      "--boxes", str(boxes_file), "--protocol", "umeyama_sim3")
    with pytest.raises(VidLLMError, match="unknown evaluation protocol 'gt_everything'"):
        score_predictions("scanrefer", pred, gt, boxes=boxes_file, protocol="gt_everything")
    with pytest.raises(VidLLMError, match="needs ground-truth boxes"):
        score_predictions("scanrefer", pred, gt)


def test_prediction_files_are_written_atomically_with_normal_permissions(tmp_path):
    import os

    from vidllm.eval.predictions import meta_path, read_meta, write_predictions

    out = tmp_path / "preds" / "scanqa.jsonl"
    write_predictions(out, [{"id": "q1", "text": "two"}], meta={"benchmark": "scanqa"})
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    assert read_meta(out) == {"benchmark": "scanqa"} and meta_path(out).name == "scanqa.meta.json"
    assert sorted(p.name for p in out.parent.iterdir()) == ["scanqa.jsonl", "scanqa.meta.json"]  # no temp left
