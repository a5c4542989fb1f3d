"""Benchmark annotation loaders on hand-written files in each published schema."""

from __future__ import annotations

import json

import pytest

from vidllm.data.scannet.annotations import (
    Instruction,
    load_annotations,
    parse_stimulus_id,
    sqa3d_question_type,
    write_annotations,
    write_split_lists,
)
from vidllm.errors import DataError


def _dump(path, obj):
    path.write_text(json.dumps(obj))
    return path


SCANQA = [
    {"answers": ["brown", "dark brown"], "object_ids": [8], "object_names": ["cabinet"],
     "question": "What color is the cabinet?", "question_id": "train-scene0000-0", "scene_id": "scene0000_00"},
    {"answers": ["2"], "object_ids": [3, 4], "object_names": ["chair", "chair"],
     "question": "How many chairs are there?", "question_id": "train-scene0000-1", "scene_id": "scene0000_00"},
]


def test_scanqa_records_and_test_split_without_answers(tmp_path):
    _dump(tmp_path / "ScanQA_v1.0_train.json", SCANQA)
    _dump(tmp_path / "ScanQA_v1.0_test_wo_obj.json",
          [{"question": "Where is the sink?", "question_id": "test-scene0707-0", "scene_id": "scene0707_00"}])
    items = load_annotations("scanqa", tmp_path, split="train")
    assert [i.id for i in items] == ["train-scene0000-0", "train-scene0000-1"]
    assert items[0].answers == ["brown", "dark brown"] and items[0].target_object_ids == [8]
    assert items[0].object_name == "cabinet" and items[1].object_name == "chair"
    assert items[1].text == "How many chairs are there?"
    test = load_annotations("scanqa", tmp_path / "ScanQA_v1.0_test_wo_obj.json")
    assert test[0].answers == [] and test[0].target_object_ids == []


def test_scanqa_malformed_record_names_file_and_record(tmp_path):
    bad = [SCANQA[0], {**SCANQA[1], "object_ids": ["3"]}]
    path = _dump(tmp_path / "ScanQA_v1.0_val.json", bad)
    with pytest.raises(DataError, match=r"ScanQA_v1.0_val.json: record 1 \(question_id train-scene0000-1\): .*object_ids"):
        load_annotations("scanqa", path)
    path.write_text("{not json")
    with pytest.raises(DataError, match="ScanQA_v1.0_val.json: not valid JSON"):
        load_annotations("scanqa", path)
    with pytest.raises(DataError, match="no scanqa annotation file"):
        load_annotations("scanqa", tmp_path, split="train")


def _sqa3d_pair(folder, questions, annotations, split="test"):
    folder.mkdir(parents=True, exist_ok=True)
    _dump(folder / f"v1_balanced_questions_{split}_scannetv2.json", {"questions": questions})
    _dump(folder / f"v1_balanced_sqa_annotations_{split}_scannetv2.json", {"annotations": annotations})


SQA_Q = [
    {"alternative_situation": ["I am facing the window."], "question": "What is on my left?", "question_id": 220602000000,
     "scene_id": "scene0380_00", "situation": "I am sitting on the bed facing the window."},
    {"alternative_situation": [], "question": "Is the door open?", "question_id": 220602000001,
     "scene_id": "scene0380_00", "situation": "I am standing by the door."},
]
SQA_A = [
    {"answer_type": "other", "answers": [{"answer": "lamp", "answer_confidence": "yes", "answer_id": 1}],
     "position": {"x": 1.0, "y": 2.0, "z": 0.0}, "question_id": 220602000000, "question_type": "N/A",
     "rotation": {"_w": 1.0, "_x": 0.0, "_y": 0.0, "_z": 0.0}, "scene_id": "scene0380_00"},
    {"answer_type": "yes/no", "answers": [{"answer": "yes", "answer_confidence": "yes", "answer_id": 1}],
     "position": {"x": 0.0, "y": 0.0, "z": 0.0}, "question_id": 220602000001, "question_type": "N/A",
     "rotation": {"_w": 1.0, "_x": 0.0, "_y": 0.0, "_z": 0.0}, "scene_id": "scene0380_00"},
]


def test_sqa3d_joins_questions_and_annotations(tmp_path):
    _sqa3d_pair(tmp_path / "balanced", SQA_Q, list(reversed(SQA_A)))
    items = load_annotations("sqa3d", tmp_path, split="test")  # found in the balanced/ sub-folder
    assert [i.id for i in items] == ["220602000000", "220602000001"]
    assert items[0].situation == "I am sitting on the bed facing the window." and items[0].answers == ["lamp"]
    assert items[0].eval_subgroup == {"question_type": "what"} and items[1].eval_subgroup == {"question_type": "is"}
    assert items[0].extra["alternative_situation"] == ["I am facing the window."]
    assert items[1].extra["position"] == {"x": 0.0, "y": 0.0, "z": 0.0}
    # Either half of the pair can be passed as the path.
    again = load_annotations("sqa3d", tmp_path / "balanced" / "v1_balanced_sqa_annotations_test_scannetv2.json")
    assert [i.to_dict() for i in again] == [i.to_dict() for i in items]


def test_sqa3d_missing_annotation_is_named(tmp_path):
    _sqa3d_pair(tmp_path, SQA_Q, SQA_A[:1])
    with pytest.raises(DataError, match=r"v1_balanced_sqa_annotations_test_scannetv2.json: no annotation for question_id 220602000001"):
        load_annotations("sqa3d", tmp_path, split="test")


@pytest.mark.parametrize("question,kind", [("What is in front of me?", "what"), ("Is the tv on?", "is"),
                                           ("How many chairs?", "how"), ("Can I sit here?", "can"),
                                           ("Which way is the door?", "which"), ("Where is the lamp?", "others")])
def test_sqa3d_question_types(question, kind):
    assert sqa3d_question_type(question) == kind


SCANREFER = [
    {"scene_id": "scene0011_00", "object_id": "0", "object_name": "chair", "ann_id": "0",
     "description": "this is a brown chair. it is at the end of the table.", "token": ["this", "is", "a"]},
    {"scene_id": "scene0011_00", "object_id": "0", "object_name": "chair", "ann_id": "1",
     "description": "a brown chair next to the table.", "token": ["a", "brown"]},
    {"scene_id": "scene0011_00", "object_id": "5", "object_name": "chair", "ann_id": "0",
     "description": "the chair by the window.", "token": ["the", "chair"]},
    {"scene_id": "scene0011_00", "object_id": "12", "object_name": "table", "ann_id": "0",
     "description": "the big wooden table.", "token": ["the", "big"]},
]


def test_scanrefer_string_ids_and_unique_multiple(tmp_path):
    _dump(tmp_path / "ScanRefer_filtered_val.json", SCANREFER)
    items = load_annotations("scanrefer", tmp_path, split="val")
    assert [i.id for i in items] == ["scene0011_00|0|0", "scene0011_00|0|1", "scene0011_00|5|0", "scene0011_00|12|0"]
    assert items[3].target_object_ids == [12] and items[3].object_name == "table"
    assert [i.eval_subgroup["unique"] for i in items] == [False, False, False, True]
    # An explicit eval_type (as peers add) wins over the count.
    _dump(tmp_path / "ScanRefer_filtered_val.json", [{**SCANREFER[3], "eval_type": "multiple"}])
    assert load_annotations("scanrefer", tmp_path, split="val")[0].eval_subgroup == {"unique": False}


def test_scanrefer_bad_object_id(tmp_path):
    path = _dump(tmp_path / "ScanRefer_filtered_train.json", [SCANREFER[0], {**SCANREFER[1], "object_id": "chair"}])
    with pytest.raises(DataError, match=r"ScanRefer_filtered_train.json: record 1: field 'object_id' should be an integer id"):
        load_annotations("scanrefer", path)
    _dump(path, [{k: v for k, v in SCANREFER[0].items() if k != "description"}])
    with pytest.raises(DataError, match=r"record 0 \(scene0011_00\|0\|0\): missing field 'description'"):
        load_annotations("scanrefer", path)


def test_scan2cap_groups_descriptions_per_object(tmp_path):
    _dump(tmp_path / "ScanRefer_filtered_val.json", SCANREFER)
    items = load_annotations("scan2cap", tmp_path, split="val")
    assert [i.id for i in items] == ["scene0011_00|0|chair", "scene0011_00|5|chair", "scene0011_00|12|table"]
    assert items[0].answers == [SCANREFER[0]["description"], SCANREFER[1]["description"]]
    assert items[0].target_object_ids == [0] and items[0].text


MULTI3DREFER = [
    {"scene_id": "scene0000_00", "object_name": "chair", "ann_id": "0", "description": "the chairs around the table.",
     "object_ids": [3, 4, 7], "eval_type": "mt"},
    {"scene_id": "scene0000_00", "object_name": "sofa", "ann_id": "1", "description": "the pink sofa.",
     "object_ids": [], "eval_type": "zt_wo_d"},
    {"scene_id": "scene0000_00", "object_name": "bed", "ann_id": "2", "description": "the bed.",
     "object_ids": [9], "eval_type": "st_wo_d"},
]


def test_multi3drefer_zero_single_multi(tmp_path):
    _dump(tmp_path / "multi3drefer_val.json", MULTI3DREFER)
    items = load_annotations("multi3drefer", tmp_path, split="val")
    assert [i.target_object_ids for i in items] == [[3, 4, 7], [], [9]]
    assert [i.eval_subgroup["eval_type"] for i in items] == ["mt", "zt_wo_d", "st_wo_d"]
    # Ids follow M3DRef-CLIP's key (scene_id, 0, ann_id): they never reveal the targets.
    assert [i.id for i in items] == ["scene0000_00|0|0", "scene0000_00|0|1", "scene0000_00|0|2"]
    assert items[1].object_name == "sofa"


def test_duplicate_ids_are_rejected(tmp_path):
    path = _dump(tmp_path / "multi3drefer_val.json", [MULTI3DREFER[0], {**MULTI3DREFER[2], "ann_id": "0"}])
    with pytest.raises(DataError, match=r"multi3drefer_val.json: two multi3drefer records share the id 'scene0000_00\|0\|0'"):
        load_annotations("multi3drefer", path)
    path = _dump(tmp_path / "ScanQA_v1.0_val.json", [SCANQA[0], SCANQA[0]])
    with pytest.raises(DataError, match="share the id 'train-scene0000-0'"):
        load_annotations("scanqa", path)


@pytest.mark.parametrize("change,message", [
    ({"eval_type": "zt"}, "eval_type should be one of"),
    ({"eval_type": "st_w_d"}, "does not match 3 object_ids"),
    ({"object_ids": "3"}, "'object_ids' should be a list"),
])
def test_multi3drefer_inconsistent_records(tmp_path, change, message):
    path = _dump(tmp_path / "multi3drefer_train.json", [{**MULTI3DREFER[0], **change}])
    with pytest.raises(DataError, match=r"multi3drefer_train.json: record 0 .*" + message):
        load_annotations("multi3drefer", path)


NR3D_CSV = """assignmentid,stimulus_id,utterance,correct_guess,speaker_id,listener_id,scan_id,instance_type,target_id,tokens,mentions_target_class,uses_object_lang,uses_spatial_lang,uses_color_lang,uses_shape_lang,dataset
a1,scene0525_00-plant-4-13-5-7-11,"Facing the bed, the plant on the left",True,s1,l1,scene0525_00,plant,13,"['facing', 'the', 'bed', ',', 'the', 'plant', 'on', 'the', 'left']",True,True,True,False,False,nr3d
a2,scene0000_00-kitchen_cabinet-2-3-4,the taller kitchen cabinet,True,s2,l2,scene0000_00,kitchen cabinet,3,"['the', 'taller', 'kitchen', 'cabinet']",True,True,False,False,True,nr3d
"""

SR3D_CSV = """scan_id,target_id,distractor_ids,utterance,stimulus_id,coarse_reference_type,reference_type,instance_type,anchors_types,anchor_ids,tokens,dataset,mentions_target_class
scene0000_00,5,"[6, 7]",the chair that is closest to the table,scene0000_00-chair-3-5-6-7,horizontal proximity,closest,chair,['table'],[12],"['the', 'chair', 'that', 'is', 'closest', 'to', 'the', 'table']",sr3d,True
scene0011_00,2,[3],the box that is farthest from the door,scene0011_00-box-2-2-3,horizontal proximity,farthest,box,['door'],[9],"['the', 'box']",sr3d,True
"""


def test_nr3d_subgroups_and_split(tmp_path):
    (tmp_path / "nr3d.csv").write_text(NR3D_CSV)
    items = load_annotations("nr3d", tmp_path)
    assert [i.id for i in items] == ["a1", "a2"]
    assert items[0].target_object_ids == [13] and items[0].extra["distractor_ids"] == [5, 7, 11]
    assert items[0].eval_subgroup == {"hard": True, "view_dependent": True}
    assert items[1].eval_subgroup == {"hard": False, "view_dependent": False}
    assert items[1].object_name == "kitchen cabinet"
    write_split_lists({"val": ["scene0525_00"]}, tmp_path)
    assert [i.scene_id for i in load_annotations("nr3d", tmp_path / "nr3d.csv", split="val")] == ["scene0525_00"]
    with pytest.raises(DataError, match="split 'test' asked for"):
        load_annotations("nr3d", tmp_path, split="test")


def test_nr3d_bad_rows_name_the_line(tmp_path):
    path = tmp_path / "nr3d.csv"
    path.write_text(NR3D_CSV.replace("scene0000_00-kitchen_cabinet-2-3-4", "scene0000_00-kitchen_cabinet-2-9-4"))
    with pytest.raises(DataError, match=r"nr3d.csv: line 3: stimulus_id .* disagrees"):
        load_annotations("nr3d", path)
    path.write_text(NR3D_CSV.replace(",13,", ",thirteen,"))
    with pytest.raises(DataError, match=r"nr3d.csv: line 2: invalid literal"):
        load_annotations("nr3d", path)
    path.write_text("scan_id,utterance\nscene0000_00,hello\n")
    with pytest.raises(DataError, match="csv header lacks column"):
        load_annotations("nr3d", path)


def test_sr3d_anchors_and_distractors(tmp_path):
    (tmp_path / "sr3d.csv").write_text(SR3D_CSV)
    items = load_annotations("sr3d", tmp_path)
    assert items[0].extra["anchor_ids"] == [12] and items[0].extra["distractor_ids"] == [6, 7]
    assert items[0].extra["reference_type"] == "closest" and items[0].eval_subgroup["hard"] is True
    assert items[1].eval_subgroup == {"hard": False, "view_dependent": False}
    assert items[1].id == "scene0011_00|2|3"


def test_stimulus_id_with_dashes_in_label():
    assert parse_stimulus_id("scene0001_00-t-shirt-3-4-5-6") == ("scene0001_00", "t-shirt", 3, 4, [5, 6])
    with pytest.raises(ValueError):
        parse_stimulus_id("scene0001_00-chair")


@pytest.mark.parametrize("task,setup", [
    ("scanqa", lambda d: _dump(d / "ScanQA_v1.0_train.json", SCANQA)),
    ("sqa3d", lambda d: _sqa3d_pair(d, SQA_Q, SQA_A, split="train")),
    ("scanrefer", lambda d: _dump(d / "ScanRefer_filtered_train.json", SCANREFER)),
    ("scan2cap", lambda d: _dump(d / "ScanRefer_filtered_train.json", SCANREFER)),
    ("multi3drefer", lambda d: _dump(d / "multi3drefer_train.json", MULTI3DREFER)),
    ("nr3d", lambda d: (d / "nr3d.csv").write_text(NR3D_CSV)),
    ("sr3d", lambda d: (d / "sr3d.csv").write_text(SR3D_CSV)),
])
def test_write_then_load_round_trip(tmp_path, task, setup):
    source, copy = tmp_path / "src", tmp_path / "copy"
    source.mkdir()
    setup(source)
    split = None if task in ("nr3d", "sr3d") else "train"  # the csvs hold every split
    original = load_annotations(task, source, split=split)
    write_annotations(task, original, copy, split="train")
    again = load_annotations(task, copy, split=split)
    assert [i.to_dict() for i in again] == [i.to_dict() for i in original]
    assert [Instruction.from_dict(i.to_dict()) for i in again] == again


def test_instruction_from_dict_rejects_unknown():
    with pytest.raises(ValueError, match="unknown task"):
        Instruction.from_dict({"task": "vqa", "id": "1", "scene_id": "s", "text": "t"})
    with pytest.raises(ValueError, match="unknown Instruction fields"):
        Instruction.from_dict({"task": "scanqa", "id": "1", "scene_id": "s", "text": "t", "bogus": 1})
