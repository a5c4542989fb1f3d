"""Tables 7–8 on their own datasets: the pose AUC and monocular depth protocols by hand, and
`vidllm predict --data` + `vidllm score` + the report on tiny Co3Dv2, RealEstate10K and NYUv2 folders
with a random-init tiny model."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tests.geometry_set_fixtures import orbit, write_co3d, write_nyuv2, write_re10k
from vidllm.artifacts.run_dir import read_geometry, write_geometry
from vidllm.cli import main
from vidllm.errors import VidLLMError
from vidllm.eval.benchmarks import registry
from vidllm.eval.benchmarks.pose_sets import score_pose_set
from vidllm.eval.geometry_metrics import median_aligned_depth_metrics, pose_errors, pose_metrics
from vidllm.eval.geometry_sets import to_source_grid
from vidllm.eval.predictions import Prediction, read_meta, read_predictions
from vidllm.eval.report import build_report


def _rot_z(degrees: float) -> np.ndarray:
    a = np.radians(degrees)
    pose = np.eye(4)
    pose[:2, :2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    return pose


def _two_cameras() -> np.ndarray:
    second = np.eye(4)
    second[:3, 3] = [1.0, 0.0, 0.0]
    return np.stack([np.eye(4), second])


# ----------------------------------------------------------------------------- the protocols by hand


def test_pose_auc_by_hand():
    gt = _two_cameras()
    assert pose_metrics(gt, gt)["AUC@30"] == 1.0  # perfect poses
    # Any similarity of the predicted world leaves relative poses, hence the AUC, unchanged.
    similarity = _rot_z(40.0)
    similarity[:3, 3] = [3.0, -2.0, 0.5]
    scaled = similarity @ gt
    scaled[:, :3, 3] *= 2.5
    assert pose_metrics(scaled, gt)["AUC@30"] == pytest.approx(1.0)
    # The second camera turned 10.5° about its optical axis: rotation error 10.5°, translation
    # direction exact. The fraction below t is 0 for t = 1..10 and 1 for t = 11..30: 20/30.
    turned = gt.copy()
    turned[1] = gt[1] @ _rot_z(10.5)
    rot, trans = pose_errors(turned, gt)
    assert rot == pytest.approx([10.5]) and trans == pytest.approx([0.0], abs=1e-6)
    assert pose_metrics(turned, gt)["AUC@30"] == pytest.approx(20 / 30)
    assert pose_metrics(turned, gt)["RRA@15"] == 1.0
    # The second camera moved 5.5° off the baseline direction, rotation exact: 25/30. VGGT takes the
    # larger of the two errors per pair, so with both errors 10.5° dominates.
    moved = gt.copy()
    moved[1, :3, 3] = [np.cos(np.radians(5.5)), np.sin(np.radians(5.5)), 0.0]
    assert pose_metrics(moved, gt)["AUC@30"] == pytest.approx(25 / 30)
    both = moved.copy()
    both[1, :3, :3] = turned[1, :3, :3]
    assert pose_metrics(both, gt)["AUC@30"] == pytest.approx(20 / 30)
    # Past 30° a pair counts for nothing.
    far = gt.copy()
    far[1] = gt[1] @ _rot_z(31.0)
    assert pose_metrics(far, gt)["AUC@30"] == 0.0


def test_pose_set_pools_pairs_per_group_and_averages_groups(tmp_path):
    gt3 = orbit(3)
    turned = gt3.copy()
    turned[2] = gt3[2] @ _rot_z(10.5)  # pairs (0,2) and (1,2) off by 10.5°, (0,1) exact
    preds = {}
    for clip_id, pred, gt in (("cat/a", gt3, gt3), ("cat/b", turned, gt3), ("dog/c", _two_cameras(), _two_cameras())):
        path = tmp_path / f"{clip_id.replace('/', '__')}.npz"
        write_geometry(path, camera_to_world_pred=pred, camera_to_world_gt=gt)
        preds[clip_id] = Prediction(id=clip_id, line=1, geometry=path)
    result = score_pose_set(preds, group_of=lambda i: i.split("/")[0], group_label="category")
    # "cat": 6 pairs, 2 of them off by 10.5°: (4 · 30 + 2 · 20) / (6 · 30); "dog": 1.0.
    cat = (4 * 30 + 2 * 20) / (6 * 30)
    assert result["subgroups"]["cat"]["AUC@30"] == pytest.approx(cat)
    assert result["subgroups"]["cat"]["pairs"] == 6 and result["subgroups"]["dog"]["clips"] == 1
    assert result["metrics"]["pose/AUC@30"] == pytest.approx((cat + 1.0) / 2)
    assert result["count"] == 3 and result["pairs"] == 7
    rows = {r["id"]: r for r in result["per_sample"]}
    assert rows["cat/b"]["pose/AUC@30"] == pytest.approx((30 + 2 * 20) / 90) and rows["cat/b"]["category"] == "cat"


def test_median_aligned_depth_by_hand():
    gt = np.full((48, 64), 2.0)
    gt[10:20] = 4.0
    mask = np.zeros_like(gt, dtype=bool)
    mask[5:40, 5:60] = True
    metrics, scale = median_aligned_depth_metrics(3.0 * gt, gt, mask)  # a scaled-up copy: perfect once aligned
    assert scale == pytest.approx(1 / 3) and metrics["abs_rel"] == pytest.approx(0.0) and metrics["delta1"] == 1.0
    pred = gt.copy()
    pred[35:40] *= 1.5  # AbsRel 0.5 on 5 of the 35 masked rows; the median ratio stays 1
    metrics, scale = median_aligned_depth_metrics(pred, gt, mask)
    assert scale == pytest.approx(1.0)
    assert metrics["abs_rel"] == pytest.approx(0.5 * 5 / 35) and metrics["delta1"] == pytest.approx(30 / 35)
    pred_outside = gt.copy()
    pred_outside[~mask] = 100.0  # outside the crop: not scored
    assert median_aligned_depth_metrics(pred_outside, gt, mask)[0]["abs_rel"] == pytest.approx(0.0)
    metrics, scale = median_aligned_depth_metrics(gt, np.zeros_like(gt), mask)
    assert math.isnan(scale) and math.isnan(metrics["abs_rel"])


def test_depth_goes_back_onto_the_source_grid():
    from vidllm.data.frames import plan_resize_crop

    plan = plan_resize_crop((64, 48), 28, 14)  # 64x48 → 37x28 → crop 28x28 at x = 4: source columns 7..54
    pred = np.arange(28 * 28, dtype=np.float32).reshape(28, 28)
    back = to_source_grid(pred, plan)
    assert back.shape == (48, 64)
    inside = np.isfinite(back)
    assert inside.any(0).nonzero()[0].tolist() == list(range(7, 55)) and inside.any(1).all()
    # A source pixel lands on the prediction pixel covering it in the resized, cropped image.
    x = (40 + 0.5) * plan.scale_xy[0] - plan.crop_xy[0]
    y = (20 + 0.5) * plan.scale_xy[1]
    assert back[20, 40] == pred[int(y), int(x)]


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    model = tmp_path_factory.mktemp("geometry_sets") / "model"
    assert main(["init", "--recipe", "tiny", "--out", str(model)]) == 0
    return model


def _predict_and_score(benchmark, root, model, run, capsys, *extra):
    out = run / "predictions" / f"{benchmark}.jsonl"
    assert main(["predict", "--benchmark", benchmark, "--data", str(root), "--model", str(model), "--out", str(out),
                 *extra]) == 0
    capsys.readouterr()
    assert main(["score", "--benchmark", benchmark, "--pred", str(out), "--json",
                 "--out", str(run / f"score_{benchmark}.json")]) == 0
    return out, json.loads(capsys.readouterr().out)


def _rescore_against_itself(out, benchmark, capsys):
    """The predictions with the ground truth in place of the prediction: a perfect score."""
    for pred in read_predictions(out, benchmark).values():
        geo = read_geometry(pred.geometry)
        if "camera_to_world_gt" in geo:
            world = _rot_z(25.0)
            world[:3, 3] = [1.0, 2.0, 3.0]
            geo["camera_to_world_pred"] = world @ geo["camera_to_world_gt"]  # another world frame
        else:
            geo["depth_pred"] = 0.4 * geo["depth_gt"]  # another scale
        write_geometry(pred.geometry, **geo)
    assert main(["score", "--benchmark", benchmark, "--pred", str(out), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_predict_and_score_co3d(tiny_model, tmp_path, capsys):
    write_co3d(tmp_path / "co3d", sequences=2, frames=3)
    out, result = _predict_and_score("co3d", tmp_path / "co3d", tiny_model, tmp_path / "run", capsys)
    assert set(result["metrics"]) == {"pose/RRA@15", "pose/RTA@15", "pose/AUC@30"}
    assert all(0.0 <= v <= 1.0 for v in result["metrics"].values())
    # Split "test" leaves sequence 0 with 2 frames (1 pair) and sequence 1 with 3 (3 pairs).
    assert result["count"] == 2 and result["pairs"] == 4 and set(result["subgroups"]) == {"apple"}
    meta = read_meta(out)
    assert meta["dataset"] == "Co3Dv2" and meta["split"] == "test" and meta["frames"] == 10 and meta["protocol"] == "P1"
    # Relative poses do not depend on the scene frame's alignment: P2 rescoring changes nothing.
    assert main(["score", "--benchmark", "co3d", "--pred", str(out), "--json", "--protocol", "P2"]) == 0
    p2 = json.loads(capsys.readouterr().out)
    assert p2["protocol"] == "P2" and p2["rescored_from"] == "P1" and p2["metrics"] == result["metrics"]
    geo = read_geometry(next(iter(read_predictions(out, "co3d").values())).geometry)
    assert geo["camera_to_world_pred"].shape == geo["camera_to_world_gt"].shape == (2, 4, 4)
    assert _rescore_against_itself(out, "co3d", capsys)["metrics"]["pose/AUC@30"] == pytest.approx(1.0)


def test_predict_and_score_re10k(tiny_model, tmp_path, capsys):
    write_re10k(tmp_path / "re10k", sequences=1, frames=3)
    out, result = _predict_and_score("re10k", tmp_path / "re10k", tiny_model, tmp_path / "run", capsys,
                                     "--frames", "2", "--seed", "1")
    assert set(result["metrics"]) == {"pose/RRA@15", "pose/RTA@15", "pose/AUC@30"}
    assert all(0.0 <= v <= 1.0 for v in result["metrics"].values())
    assert result["count"] == 1 and result["pairs"] == 1 and result["frames"] == 2
    assert _rescore_against_itself(out, "re10k", capsys)["metrics"]["pose/AUC@30"] == pytest.approx(1.0)


def test_predict_and_score_nyuv2_then_report(tiny_model, tmp_path, capsys):
    written = write_nyuv2(tmp_path / "nyu", images=2)
    run = tmp_path / "run"
    out, result = _predict_and_score("nyuv2", tmp_path / "nyu", tiny_model, run, capsys)
    assert set(result["metrics"]) == {"depth/delta1", "depth/abs_rel", "depth/rmse", "depth/log10"}
    assert all(math.isfinite(v) for v in result["metrics"].values())
    assert 0.0 <= result["metrics"]["depth/delta1"] <= 1.0 and 0.0 <= result["metrics"]["depth/abs_rel"] <= 1.0
    assert result["count"] == result["scored"] == 2
    geo = read_geometry(read_predictions(out, "nyuv2")["00000"].geometry)
    h, w = written.depth["00000"].shape[1:]
    assert geo["depth_pred"].shape == geo["depth_gt"].shape == (1, h, w)  # on the GT grid
    perfect = _rescore_against_itself(out, "nyuv2", capsys)["metrics"]
    assert perfect["depth/abs_rel"] == pytest.approx(0.0, abs=1e-6) and perfect["depth/delta1"] == 1.0

    # The report prints our NYUv2 row beside the paper's NYU-v2 numbers, and the ScanNet columns apart.
    (run / "metrics.json").write_text(json.dumps({"scanqa": {"protocol": "P1"}, "by_protocol": {"P1/own": {}}}))
    assert main(["score", "--benchmark", "nyuv2", "--pred", str(out), "--into", str(run)]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["nyuv2"]["metrics"] == perfect and "scanqa" in metrics  # added, nothing dropped
    assert set(metrics["by_protocol"]) == {"P1/own"} and "nyuv2" in metrics["by_protocol"]["P1/own"]
    md = build_report(run).markdown.read_text()
    depth = md.split("Table 8 — depth")[1].split("Table 9")[0]
    assert ("| Method | ScanNet δ1 ↑ | ScanNet AbsRel ↓ | ScanNet RMSE ↓ | ScanNet log10 ↓ | NYUv2 δ1 ↑ | "
            "NYUv2 AbsRel ↓") in depth
    ours = next(line for line in depth.splitlines() if line.startswith("| Vid-LLM (this run)"))
    assert ours.split(" | ")[5] == f"{perfect['depth/delta1']:.3f}" and ours.split(" | ")[1] == "—"
    assert "| Vid-LLM (paper) | — | — | — | — | 0.987 | 0.025 | 0.109 | 0.010 |" in depth
    pose = md.split("Table 7 — camera pose")[1].split("Table 8")[0]
    assert "| Vid-LLM (paper) | — | — | — | 96.8 | 93.4 | 88.5 | — | — | — |" in pose


def test_dataset_benchmarks_are_apart_from_the_shard_ones(tiny_model, tmp_path, capsys):
    assert registry.dataset_benchmarks() == ("co3d", "re10k", "nyuv2")
    assert not set(registry.dataset_benchmarks()) & set(registry.names())  # `vidllm evaluate` runs shards only
    assert set(registry.dataset_benchmarks()) <= set(registry.geometry_benchmarks())
    out = tmp_path / "p.jsonl"
    assert main(["predict", "--benchmark", "co3d", "--model", str(tiny_model), "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == ("vidllm predict: error: co3d reads its own dataset: pass --data ROOT "
                                               "(not --shards)")
    assert main(["predict", "--benchmark", "nyuv2", "--data", str(tmp_path / "none"), "--model", str(tiny_model),
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar: one line
    assert err == (f"vidllm predict: error: {tmp_path / 'none' / 'rgb'}: NYUv2 colour folder not found "
                   "(expected <root>/rgb/<id>.png)")
    assert main(["predict", "--benchmark", "recon", "--data", str(tmp_path), "--model", str(tiny_model),
                 "--out", str(out)]) == 2
    assert "recon runs on the ScanNet shards: pass --shards" in capsys.readouterr().err
    from vidllm.eval.predict import predict

    with pytest.raises(VidLLMError, match="co3d reads its own dataset, not shards"):
        predict(tiny_model, "co3d", str(tmp_path), out)
