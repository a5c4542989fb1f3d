"""`vidllm predict` with a random-init tiny model on real shards, then `vidllm score` on its output."""

import json

import numpy as np
import pytest

from tests.shard_fixtures import write_tiny_shards
from vidllm.artifacts.run_dir import read_geometry
from vidllm.cli import main
from vidllm.eval.predictions import read_meta, read_predictions


@pytest.fixture(scope="module")
def shards_and_model(synthetic_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    shards = write_tiny_shards(synthetic_dataset, root / "shards")
    model = root / "model"
    assert main(["init", "--recipe", "tiny", "--out", str(model)]) == 0
    return shards, model


def _scene_and_split(ds, task):
    inst = ds.instructions[task][0]
    split = next(s for s, scenes in ds.splits.items() if inst.scene_id in scenes)
    return inst.scene_id, split


def test_predict_scanrefer_then_score(shards_and_model, synthetic_dataset, tmp_path, capsys):
    shards, model = shards_and_model
    ds = synthetic_dataset
    scene_id, split = _scene_and_split(ds, "scanrefer")
    out = tmp_path / "predictions" / "scanrefer.jsonl"
    argv = ["predict", "--model", str(model), "--benchmark", "scanrefer", "--shards", str(shards), "--out", str(out),
            "--split", split, "--max-new-tokens", "3"]
    assert main(argv) == 0
    capsys.readouterr()
    preds = read_predictions(out, "scanrefer")
    expected = {i.id for i in ds.instructions["scanrefer"] if (i.scene_id in ds.splits[split])}
    assert set(preds) == expected
    assert all(len(p.boxes) <= 1 for p in preds.values())
    meta = read_meta(out)
    assert meta["protocol"] == "P1" and meta["benchmark"] == "scanrefer" and meta["seconds_per_scene"] > 0
    assert meta["proposals"] == "own" and set(meta["scene_frames"]) <= {s.scene_id for s in ds.scenes}
    # The output scores as is; the protocol recorded by predict is carried into the score.
    assert main(["score", "--benchmark", "scanrefer", "--pred", str(out), "--gt", str(ds.annotations_dir),
                 "--split", split, "--scans", str(ds.scan_dir), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["protocol"] == "P1" and result["proposals"] == "own" and 0.0 <= result["metrics"]["Acc@0.25"] <= 1.0
    assert result["count"] == len(expected)


def test_predict_nr3d_split_matches_the_scored_split(shards_and_model, synthetic_dataset, tmp_path, capsys):
    """Nr3D records have no split of their own: `--split` must still keep only that split's scenes."""
    shards, model = shards_and_model
    ds = synthetic_dataset
    scene_id, split = _scene_and_split(ds, "nr3d")
    out = tmp_path / "nr3d.jsonl"
    assert main(["predict", "--model", str(model), "--benchmark", "nr3d", "--shards", str(shards), "--out", str(out),
                 "--split", split, "--max-new-tokens", "2"]) == 0
    capsys.readouterr()
    expected = {i.id for i in ds.instructions["nr3d"] if i.scene_id in ds.splits[split]}
    assert set(read_predictions(out, "nr3d")) == expected and len(expected) < len(ds.instructions["nr3d"])
    assert main(["score", "--benchmark", "nr3d", "--pred", str(out), "--gt", str(ds.annotations_dir),
                 "--split", split, "--scans", str(ds.scan_dir), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["count"] == len(expected)
    assert 0.0 <= result["metrics"]["Acc"] <= 1.0


def test_predict_scan2cap_lines_carry_the_prompted_box(shards_and_model, synthetic_dataset, tmp_path, capsys):
    """With ground-truth proposals Scan2Cap captions the object's own box: that box is the line's
    box, and the score says the IoU gate was the GT-box setting."""
    shards, model = shards_and_model
    ds = synthetic_dataset
    _, split = _scene_and_split(ds, "scan2cap")
    out = tmp_path / "scan2cap.jsonl"
    assert main(["predict", "--model", str(model), "--benchmark", "scan2cap", "--shards", str(shards), "--out", str(out),
                 "--split", split, "--max-new-tokens", "2", "--proposals", "gt"]) == 0
    capsys.readouterr()
    preds = read_predictions(out, "scan2cap")
    expected = {i.id: i for i in ds.instructions["scan2cap"] if i.scene_id in ds.splits[split]}
    assert set(preds) == set(expected)
    for pid, pred in preds.items():
        objects = {o.object_id: o.box for o in ds.scene(expected[pid].scene_id).objects}
        assert np.allclose(pred.boxes[0], objects[expected[pid].target_object_ids[0]], atol=1e-4)
    assert main(["score", "--benchmark", "scan2cap", "--pred", str(out), "--gt", str(ds.annotations_dir),
                 "--split", split, "--scans", str(ds.scan_dir), "--json", "--no-meteor"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["box_recall"] == 1.0 and "ground-truth object box" in result["gate"]


def test_predict_recon_writes_geometry_that_scores(shards_and_model, tmp_path, capsys):
    shards, model = shards_and_model
    out = tmp_path / "predictions" / "recon.jsonl"
    assert main(["predict", "--model", str(model), "--benchmark", "recon", "--shards", str(shards), "--out", str(out),
                 "--limit-scenes", "1"]) == 0
    capsys.readouterr()
    preds = read_predictions(out, "recon")
    assert len(preds) == 1
    geo = read_geometry(next(iter(preds.values())).geometry)
    n = len(geo["camera_to_world_gt"])
    assert geo["camera_to_world_pred"].shape == (n, 4, 4) and geo["depth_pred"].shape[0] == n
    # first_camera_gt: the first predicted camera sits exactly on the GT first camera centre.
    assert np.allclose(geo["camera_to_world_pred"][0, :3, 3], geo["camera_to_world_gt"][0, :3, 3], atol=1e-4)
    assert main(["score", "--benchmark", "recon", "--pred", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["metrics"]) >= {"depth/delta1", "pose/AUC@30", "recon/F-score"}


def test_predict_rejects_missing_model_and_missing_shards(shards_and_model, tmp_path, capsys):
    shards, model = shards_and_model
    assert main(["predict", "--model", str(tmp_path / "nope"), "--benchmark", "scanqa", "--shards", str(shards),
                 "--out", str(tmp_path / "p.jsonl")]) == 2
    assert "nope" in capsys.readouterr().err
    # The shards are checked before the model is loaded.
    assert main(["predict", "--model", str(model), "--benchmark", "scanqa", "--shards", str(tmp_path / "empty"),
                 "--out", str(tmp_path / "p.jsonl")]) == 2
    assert "manifest.parquet: no manifest" in capsys.readouterr().err
    assert not (tmp_path / "p.jsonl").exists()


def test_protocols_map_scene_frame_to_scannet_world():
    from scipy.spatial.transform import Rotation

    from vidllm.errors import VidLLMError
    from vidllm.eval.predict import scene_to_world_map

    rng = np.random.default_rng(0)
    gt = np.tile(np.eye(4), (5, 1, 1))
    gt[:, :3, :3] = Rotation.random(5, random_state=1).as_matrix()
    gt[:, :3, 3] = rng.uniform(0, 4, size=(5, 3))
    # The scene frame is the GT world moved so the first camera is the origin, rotated and at half scale.
    rot = Rotation.from_euler("z", 30, degrees=True).as_matrix()
    pred = gt.copy()
    pred[:, :3, :3] = rot.T @ gt[:, :3, :3]
    pred[:, :3, 3] = 0.5 * (gt[:, :3, 3] - gt[0, :3, 3]) @ rot
    sim3 = scene_to_world_map("umeyama_sim3", pred, gt)
    assert sim3.scale == pytest.approx(2.0) and np.allclose(sim3.poses(pred), gt, atol=1e-9)
    assert np.allclose(sim3.boxes(np.array([[0, 0, 0, 1, 1, 1.0]]))[0, 3:], 2.0)
    first = scene_to_world_map("first_camera_gt", pred, gt)
    assert first.scale == 1.0 and np.allclose(first.poses(pred)[0, :3, 3], gt[0, :3, 3])
    with pytest.raises(VidLLMError, match="non-collinear"):
        scene_to_world_map("umeyama_sim3", pred[:2], gt[:2])


def test_predict_multi3drefer_keeps_every_ground_box_and_reads_no_ground_as_no_target(
        shards_and_model, synthetic_dataset, tmp_path, capsys, monkeypatch):
    """The grounding convention at inference: one box per emitted `<ground>` (none cut), and an
    answer without `<ground>` (the zero-target answer "none") is the empty prediction, which
    Multi3DRefer scores 1 on zero-target queries. The model's answers are fixed here: k boxes
    for a k-target query, none for a zero-target one."""
    import torch

    from vidllm.models.vidllm import VidLLM

    shards, model = shards_and_model
    ds = synthetic_dataset
    _, split = _scene_and_split(ds, "multi3drefer")
    expected = {i.id: i for i in ds.instructions["multi3drefer"] if i.scene_id in ds.splits[split]}
    counts: dict[str, set[int]] = {}
    for inst in expected.values():
        counts.setdefault(inst.text.strip(), set()).add(len(inst.target_object_ids))
    assert any(len(i.target_object_ids) > 1 for i in expected.values())
    assert any(not i.target_object_ids for i in expected.values())
    generate = VidLLM.generate

    def fixed_answers(self, images, prompts, tokenizer, **kwargs):
        results = generate(self, images, prompts, tokenizer, **{**kwargs, "max_new_tokens": 1})
        for prompt, result in zip(prompts, results, strict=True):
            [n] = next(c for text, c in counts.items() if text in prompt)
            result.boxes = torch.tensor([[0.0, 0.0, 0.0, 1.0, 1.0, 1.0]]).repeat(n, 1)
            result.text = "" if n else "none"
        return results

    monkeypatch.setattr(VidLLM, "generate", fixed_answers)
    out = tmp_path / "multi3drefer.jsonl"
    assert main(["predict", "--model", str(model), "--benchmark", "multi3drefer", "--shards", str(shards),
                 "--out", str(out), "--split", split]) == 0
    capsys.readouterr()
    preds = read_predictions(out, "multi3drefer")
    assert set(preds) == set(expected)
    for pid, pred in preds.items():
        assert len(pred.boxes) == len(expected[pid].target_object_ids), pid
    assert main(["score", "--benchmark", "multi3drefer", "--pred", str(out), "--gt", str(ds.annotations_dir),
                 "--split", split, "--scans", str(ds.scan_dir), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    zero_target = [result["subgroups"][t] for t in ("zt_w_d", "zt_wo_d") if result["subgroups"][t]["count"]]
    assert zero_target and all(g["F1@0.25"] == 1.0 for g in zero_target)
