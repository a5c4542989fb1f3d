"""Declared evaluation protocols (P0/P1/P2 + proposal source): rescoring between P1 and P2 on a
known similarity, the external-proposal formats, Scan2Cap's proposal protocol and the report."""

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from tests.eval.test_score import BOXES, _jsonl, _score, _write
from vidllm.artifacts import run_dir as rd
from vidllm.cli import main
from vidllm.errors import DataError, VidLLMError
from vidllm.eval.benchmarks.ground_truth import load_proposals, load_scored_proposals
from vidllm.eval.predictions import read_meta, read_predictions
from vidllm.eval.protocols import WorldMap, canonical_protocol, scene_frame_record, world_map_from_centers

SCENE = "scene0000_00"


def _scanrefer_gt(tmp_path: Path) -> Path:
    return _write(tmp_path / "ScanRefer_filtered_val.json", [
        {"scene_id": SCENE, "object_id": str(o), "object_name": "chair", "ann_id": "0", "description": "a"}
        for o in ("0", "1", "2")])


def test_same_predictions_under_p1_and_p2_on_a_known_similarity(tmp_path, capsys):
    """The predicted scene is the GT world under a known Sim(3) (scale 1/2, 30° yaw, shifted):
    P1 only translates, so the scale error stays and IoU drops; P2 fits the Sim(3) from the
    camera centres and recovers every box exactly."""
    boxes_file = _write(tmp_path / "boxes.json", BOXES)
    truth = WorldMap(2.0, Rotation.from_euler("z", 30, degrees=True).as_matrix(), np.array([1.0, -2.0, 0.5]))
    rng = np.random.default_rng(0)
    centers_gt = rng.uniform(-2, 2, size=(6, 3))
    to_scene = truth.inverse()
    centers_pred = to_scene.points(centers_gt)
    p1 = world_map_from_centers("P1", centers_pred, centers_gt)
    lines = [{"id": f"{SCENE}|{o}|0", "boxes": p1.boxes(to_scene.boxes(np.array([box]))).tolist()}
             for o, box in BOXES[SCENE].items()]
    pred = _jsonl(tmp_path / "scanrefer.jsonl", lines)
    meta = {"benchmark": "scanrefer", "protocol": "P1", "proposals": "own",
            "scene_frames": {SCENE: scene_frame_record(p1, centers_pred, centers_gt)}}
    (tmp_path / "scanrefer.meta.json").write_text(json.dumps(meta))
    args = ["--benchmark", "scanrefer", "--pred", str(pred), "--gt", str(_scanrefer_gt(tmp_path)),
            "--boxes", str(boxes_file)]
    under_p1 = _score(capsys, *args)
    under_p2 = _score(capsys, *args, "--protocol", "P2")
    assert under_p1["protocol"] == "P1" and "rescored_from" not in under_p1 and under_p1["proposals"] == "own"
    assert under_p1["metrics"]["mean_IoU"] < 0.2 and under_p1["metrics"]["Acc@0.25"] == 0.0  # half-size boxes
    assert under_p2["protocol"] == "P2" and under_p2["rescored_from"] == "P1" and "Umeyama" in under_p2["protocol_card"]
    assert under_p2["metrics"]["mean_IoU"] == pytest.approx(1.0, abs=1e-4) and under_p2["metrics"]["Acc@0.5"] == 1.0
    # And back: P2 → P1 gives the P1 numbers again.
    meta2 = {**meta, "protocol": "P2"}
    p2 = world_map_from_centers("P2", centers_pred, centers_gt)
    _jsonl(pred, [{"id": line["id"], "boxes": p2.boxes(p1.inverse().boxes(np.array(line["boxes"]))).tolist()}
                  for line in lines])
    meta2["scene_frames"] = {SCENE: scene_frame_record(p2, centers_pred, centers_gt)}
    (tmp_path / "scanrefer.meta.json").write_text(json.dumps(meta2))
    back = _score(capsys, *args, "--protocol", "first_camera_gt")  # the former name of P1
    assert back["metrics"]["mean_IoU"] == pytest.approx(under_p1["metrics"]["mean_IoU"])


def test_rescoring_is_refused_where_the_model_inputs_depended_on_the_protocol(tmp_path, capsys):
    from vidllm.eval.scoring import score_predictions

    boxes_file = _write(tmp_path / "boxes.json", BOXES)
    gt = _scanrefer_gt(tmp_path)
    pred = _jsonl(tmp_path / "p.jsonl", [{"id": f"{SCENE}|{o}|0", "boxes": [b]} for o, b in BOXES[SCENE].items()])
    for meta, message in (({"protocol": "P0"}, "P0 places the 3D patches"),
                          ({"protocol": "P1", "proposals": "external"}, "boxes given to the model"),
                          ({"protocol": "P1", "proposals": "own"}, "records no scene_frames")):
        (tmp_path / "p.meta.json").write_text(json.dumps(meta))
        with pytest.raises((VidLLMError, DataError), match=message):
            score_predictions("scanrefer", pred, gt, boxes=boxes_file, protocol="P2")
    # Without a recorded protocol the caller's is a label, as before protocols were declared.
    (tmp_path / "p.meta.json").unlink()
    assert score_predictions("scanrefer", pred, gt, boxes=boxes_file, protocol="P2")["metrics"]["Acc@0.5"] == 1.0
    assert canonical_protocol("umeyama_sim3") == "P2"
    with pytest.raises(VidLLMError, match="unknown evaluation protocol"):
        canonical_protocol("P3")


def test_external_proposal_formats(tmp_path):
    boxes = np.array([[0, 0, 0.5, 1, 1, 1], [3, 0, 0.5, 1, 1, 1]], dtype=float)
    scores = np.array([0.2, 0.9])
    folder = tmp_path / "mask3d"
    folder.mkdir()
    np.save(folder / "scene0000_00.npy", boxes)
    np.save(folder / "scene0001_00.npy", np.concatenate([boxes, scores[:, None]], axis=1))  # [K,7]
    np.savez(folder / "scene0002_00.npz", boxes=boxes, scores=scores)
    _write(folder / "scene0003_00.json", [{"box": b, "score": s} for b, s in zip(boxes.tolist(), scores.tolist())])
    _write(folder / "scene0004_00.json", {"boxes": boxes.tolist()})
    np.savez(folder / "scene0005_00.npz", np.zeros((0, 6)))
    found = load_scored_proposals(folder, [f"scene000{i}_00" for i in range(6)])
    for i in range(5):
        assert np.array_equal(found[f"scene000{i}_00"].boxes, boxes), i
    assert found["scene0000_00"].scores is None and found["scene0004_00"].scores is None
    for i in (1, 2, 3):
        assert np.array_equal(found[f"scene000{i}_00"].scores, scores), i
    assert found["scene0005_00"].boxes.shape == (0, 6)
    one_file = _write(tmp_path / "proposals.json", {"scene0000_00": [{"box": boxes[0].tolist(), "score": 0.5}]})
    assert np.array_equal(load_proposals(one_file, ["scene0000_00"])["scene0000_00"], boxes[:1])
    np.save(folder / "scene0006_00.npy", np.zeros((2, 5)))
    with pytest.raises(DataError, match=r"shape \[K,6\] or \[K,7\]"):
        load_scored_proposals(folder, ["scene0006_00"])
    with pytest.raises(DataError, match="no proposals for scene scene0009_00"):
        load_scored_proposals(folder, ["scene0009_00"])


def test_scan2cap_m_at_half_counts_objects_without_a_matching_proposal_as_zero(tmp_path, capsys):
    """Three objects, each captioned exactly: the chair's proposal matches (IoU 1), the second
    chair's overlaps by a third (IoU 1/3 < 0.5), the table found none (no box, no caption).
    ROUGE-L of an exact caption is 1, so ROUGE-L@0.5 = 1/3 and boxes passing = 1/3."""
    boxes_file = _write(tmp_path / "boxes.json", BOXES)
    captions = {"0": "this is a brown chair next to the table.", "1": "a second chair by the wall.",
                "2": "a long table in the room."}
    gt = _write(tmp_path / "ScanRefer_filtered_val.json", [
        {"scene_id": SCENE, "object_id": o, "object_name": "chair", "ann_id": "0", "description": c, "token": []}
        for o, c in captions.items()])
    pred = _jsonl(tmp_path / "scan2cap.jsonl", [
        {"id": f"{SCENE}|0|chair", "text": captions["0"], "boxes": [[0, 0, 0.5, 1, 1, 1]]},
        {"id": f"{SCENE}|1|chair", "text": captions["1"], "boxes": [[3.5, 0, 0.5, 1, 1, 1]]},
        {"id": f"{SCENE}|2|chair", "text": "", "boxes": []}])
    out = _score(capsys, "--benchmark", "scan2cap", "--pred", str(pred), "--gt", str(gt), "--boxes", str(boxes_file),
                 "--no-meteor")
    assert out["box_recall"] == pytest.approx(1 / 3)
    assert out["metrics"]["ROUGE-L@0.5"] == pytest.approx(1 / 3)
    assert out["metrics"]["BLEU-4@0.5"] == pytest.approx(1 / 3, abs=1e-6)


def test_report_shows_each_protocol_of_a_run(tmp_path):
    from vidllm.eval.report import build_report

    run = tmp_path / "run"
    run.mkdir()
    p1 = {"protocol": "P1", "proposals": "own", "metrics": {"Acc@0.25": 0.25, "Acc@0.5": 0.1}, "count": 4}
    p2 = {"protocol": "P2", "proposals": "own", "metrics": {"Acc@0.25": 0.75, "Acc@0.5": 0.5}, "count": 4}
    qa = {"protocol": "P1", "proposals": None, "metrics": {"EM@1": 0.5}, "count": 2}
    rd.write_json(run / rd.METRICS_FILE, {"scanrefer": p2, "by_protocol": {"P1/own": {"scanrefer": p1, "scanqa": qa},
                                                                           "P2/own": {"scanrefer": p2}}})
    md = build_report(run).markdown.read_text()
    p1_part = md.split("## Protocol P1")[1].split("## Protocol P2")[0]
    p2_part = md.split("## Protocol P2")[1]
    assert "own proposals" in p1_part and "### Table 3" in p1_part and "### Table 3" in p2_part
    assert "| Vid-LLM (this run) | 25.0 |" in p1_part.split("### Table 3")[1]
    assert "| Vid-LLM (this run) | 75.0 |" in p2_part.split("### Table 3")[1]


# ----------------------------------------------------------------------------- with a model


@pytest.fixture(scope="module")
def shards_and_model(synthetic_dataset, tmp_path_factory):
    from tests.shard_fixtures import write_tiny_shards

    root = tmp_path_factory.mktemp("protocols")
    shards = write_tiny_shards(synthetic_dataset, root / "shards")
    model = root / "model"
    assert main(["init", "--recipe", "tiny", "--out", str(model)]) == 0
    return shards, model


def _split_of(ds, task):
    inst = ds.instructions[task][0]
    return next(s for s, scenes in ds.splits.items() if inst.scene_id in scenes)


def _proposals_dir(ds, tmp_path, task, split) -> tuple[Path, dict[str, np.ndarray], dict[str, int]]:
    """Per scene: the first target object's exact box, then one far away. -> (dir, boxes, matched object)."""
    folder = tmp_path / "proposals"
    folder.mkdir()
    by_scene, matched = {}, {}
    for scene in (s for s in ds.scenes if s.scene_id in ds.splits[split]):
        target = next((i.target_object_ids[0] for i in ds.instructions[task]
                       if i.scene_id == scene.scene_id and i.target_object_ids), None)
        objects = {o.object_id: o.box for o in scene.objects}
        if target is None:
            continue
        boxes = np.stack([objects[target], np.array([50.0, 50.0, 50.0, 0.5, 0.5, 0.5])])
        np.save(folder / f"{scene.scene_id}.npy", np.concatenate([boxes, [[0.9], [0.1]]], axis=1))
        by_scene[scene.scene_id], matched[scene.scene_id] = boxes, target
    return folder, by_scene, matched


def test_predict_grounding_selects_among_external_proposals(shards_and_model, synthetic_dataset, tmp_path, capsys):
    shards, model = shards_and_model
    ds = synthetic_dataset
    split = _split_of(ds, "scanrefer")
    folder, proposals, _ = _proposals_dir(ds, tmp_path, "scanrefer", split)
    for protocol in ("P1", "P2"):  # P2 places the proposals in the scene frame with the inverse Sim(3)
        out = tmp_path / f"scanrefer_{protocol}.jsonl"
        assert main(["predict", "--model", str(model), "--benchmark", "scanrefer", "--shards", str(shards),
                     "--out", str(out), "--split", split, "--max-new-tokens", "3", "--proposals", str(folder),
                     "--protocol", protocol]) == 0
        capsys.readouterr()
        meta = read_meta(out)
        assert meta["protocol"] == protocol and meta["proposals"] == "external"
        assert meta["proposals_path"] == str(folder)
        for pid, pred in read_predictions(out, "scanrefer").items():
            scene = pid.split("|")[0]
            # Every answer is one of the scene's proposals, as given (a <ground> always selects one).
            assert all(any(np.allclose(b, p, atol=1e-4) for p in proposals[scene]) for b in pred.boxes), pid
        result = _score(capsys, "--benchmark", "scanrefer", "--pred", str(out), "--gt", str(ds.annotations_dir),
                        "--split", split, "--scans", str(ds.scan_dir))
        assert result["protocol"] == protocol and result["proposals"] == "external"


def test_predict_scan2cap_captions_the_best_matching_proposal(shards_and_model, synthetic_dataset, tmp_path, capsys,
                                                              monkeypatch):
    """Each object is captioned from its best-overlapping proposal, prompted with that proposal's
    box (scene frame = world minus the GT first camera under P1), and that proposal is the line's
    box: only objects whose proposal is their own box pass the gate."""
    from vidllm.eval.grounding import box_iou_matrix
    from vidllm.models.vidllm import VidLLM

    shards, model = shards_and_model
    ds = synthetic_dataset
    split = _split_of(ds, "scan2cap")
    folder, proposals, matched = _proposals_dir(ds, tmp_path, "scan2cap", split)
    prompted: list[np.ndarray] = []
    generate = VidLLM.generate

    def recording(self, images, prompts, tokenizer, **kwargs):
        if kwargs.get("object_boxes") is not None:
            prompted.extend(kwargs["object_boxes"].numpy())
        return generate(self, images, prompts, tokenizer, **kwargs)

    monkeypatch.setattr(VidLLM, "generate", recording)
    out = tmp_path / "scan2cap.jsonl"
    assert main(["predict", "--model", str(model), "--benchmark", "scan2cap", "--shards", str(shards),
                 "--out", str(out), "--split", split, "--max-new-tokens", "2", "--proposals", str(folder)]) == 0
    capsys.readouterr()
    expected = [i for i in ds.instructions["scan2cap"] if i.scene_id in ds.splits[split]]
    preds = read_predictions(out, "scan2cap")
    passing = 0
    for inst in expected:
        objects = {o.object_id: o.box for o in ds.scene(inst.scene_id).objects}
        gt_box = objects[inst.target_object_ids[0]]
        best = proposals[inst.scene_id][int(box_iou_matrix(proposals[inst.scene_id], gt_box[None])[:, 0].argmax())]
        assert np.allclose(preds[inst.id].boxes[0], best, atol=1e-4), inst.id
        passing += float(box_iou_matrix(best[None], gt_box[None])[0, 0]) >= 0.5
    assert len(prompted) == len(expected)
    # The prompts carried proposal boxes (in the scene frame), never a ground-truth box that no proposal matches.
    sizes = np.concatenate([boxes[:, 3:] for boxes in proposals.values()])
    assert all(np.isclose(sizes, b[3:], atol=1e-5).all(1).any() for b in prompted)
    meta = read_meta(out)
    assert meta["proposals"] == "external" and "external proposal" in meta["scan2cap_prompt_box"]
    result = _score(capsys, "--benchmark", "scan2cap", "--pred", str(out), "--gt", str(ds.annotations_dir),
                    "--split", split, "--scans", str(ds.scan_dir), "--no-meteor")
    assert result["box_recall"] == pytest.approx(passing / len(expected))
    assert passing >= len({i.scene_id for i in expected if matched.get(i.scene_id) == i.target_object_ids[0]})
    assert "external proposal" in result["gate"]


def test_predict_records_the_protocol_card_and_scene_frames(shards_and_model, synthetic_dataset, tmp_path, capsys):
    shards, model = shards_and_model
    out = tmp_path / "recon.jsonl"
    assert main(["predict", "--model", str(model), "--benchmark", "recon", "--shards", str(shards), "--out", str(out),
                 "--limit-scenes", "1", "--protocol", "P1"]) == 0
    capsys.readouterr()
    meta = read_meta(out)
    assert meta["protocol"] == "P1" and "VG-LLM" in meta["protocol_card"] and meta["proposals"] is None
    [frame] = meta["scene_frames"].values()
    assert len(frame["camera_centers"]) == len(frame["camera_centers_gt"]) >= 3
    # The same recon predictions rescored under P2: the geometry is mapped, the result says from what.
    p1 = _score(capsys, "--benchmark", "recon", "--pred", str(out))
    p2 = _score(capsys, "--benchmark", "recon", "--pred", str(out), "--protocol", "P2")
    assert p1["protocol"] == "P1" and p2["protocol"] == "P2" and p2["rescored_from"] == "P1"
    assert set(p1["metrics"]) == set(p2["metrics"])


def test_a_run_evaluated_under_two_protocols_reports_both(shards_and_model, synthetic_dataset, tmp_path, capsys):
    shards, model = shards_and_model
    ds = synthetic_dataset
    run = tmp_path / "run"
    split = _split_of(ds, "scanrefer")
    for protocol in ("P1", "P2"):
        assert main(["evaluate", "--model", str(model), "--shards", str(shards), "--run-dir", str(run),
                     "--annotations", str(ds.annotations_dir), "--scans", str(ds.scan_dir), "--split", split,
                     "--benchmarks", "scanrefer", "--recipe", "tiny", "--set", "eval.max_new_tokens=2",
                     "--protocol", protocol, "--no-meteor"]) == 0
    capsys.readouterr()
    metrics = json.loads((run / rd.METRICS_FILE).read_text())
    assert metrics["scanrefer"]["protocol"] == "P2"  # the latest evaluation
    # evaluate keeps every item's scores beside the predictions: one line per scored query
    per_sample = [json.loads(line) for line in
                  (run / rd.PREDICTIONS_DIR / rd.PER_SAMPLE_DIR / "scanrefer.jsonl").read_text().splitlines()]
    assert len(per_sample) == metrics["scanrefer"]["count"] > 0
    assert {"id", "scene", "Acc@0.25"} <= set(per_sample[0])
    assert {k: v["scanrefer"]["protocol"] for k, v in metrics["by_protocol"].items()} == {"P1/own": "P1",
                                                                                         "P2/own": "P2"}
    assert main(["report", str(run)]) == 0
    md = (run / rd.REPORT_MD).read_text()
    assert "## Protocol P1 — predicted geometry" in md and "## Protocol P2 — predicted geometry" in md


def test_one_evaluation_is_also_rescored_under_the_other_protocol(shards_and_model, synthetic_dataset, tmp_path):
    from vidllm.eval.evaluate import evaluate_run

    shards, model = shards_and_model
    ds = synthetic_dataset
    run = tmp_path / "run"
    split = _split_of(ds, "scanrefer")
    summary = evaluate_run(model, str(shards), run, annotations=ds.annotations_dir, scans=ds.scan_dir, split=split,
                           benchmarks=["scanrefer", "scanqa"], protocol="P1", max_new_tokens=2, meteor=False,
                           also_score_under=["P2", "P1"])
    by_protocol = json.loads((run / rd.METRICS_FILE).read_text())["by_protocol"]
    assert set(by_protocol) == {"P1/own", "P2/own"}
    p1, p2 = by_protocol["P1/own"], by_protocol["P2/own"]
    assert summary.metrics["scanrefer"]["protocol"] == "P1"  # the top level stays the predicted protocol
    # Boxes are mapped again (the scorer reran); text answers score the same under either protocol.
    assert p2["scanrefer"]["protocol"] == "P2" and p2["scanrefer"]["rescored_from"] == "P1"
    assert p2["scanrefer"]["count"] == p1["scanrefer"]["count"]
    assert p2["scanqa"]["metrics"] == p1["scanqa"]["metrics"] and p2["scanqa"]["rescored_from"] == "P1"
