"""Build a run directory from the synthetic dataset, score it with the real CLI, render the report."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vidllm.artifacts import run_dir as rd
from vidllm.cli import main
from vidllm.config import config_to_yaml, load_config
from vidllm.eval import report as report_mod
from vidllm.eval.geometry_metrics import backproject_depth
from vidllm.eval.predictions import write_predictions


def _split_of(dataset, scene_id: str) -> str:
    return next(split for split, scenes in dataset.splits.items() if scene_id in scenes)


def _score(capsys, *argv: str) -> dict:
    assert main(["score", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def run_dir(synthetic_dataset, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run")
    scene = synthetic_dataset.scenes[0]
    valid = np.isfinite(scene.camera_to_world).all(axis=(1, 2))
    frame_ids = np.nonzero(valid)[0]
    gt_poses = scene.camera_to_aligned[valid]
    depth_gt = scene.depths_m[valid]
    rng = np.random.default_rng(0)
    pred_poses = gt_poses.copy()
    pred_poses[:, :3, 3] += rng.normal(0, 0.005, size=(len(gt_poses), 3))
    depth_pred = depth_gt * 1.01
    k = scene.intrinsic_depth
    points_gt = np.concatenate([backproject_depth(d, k, p) for d, p in zip(depth_gt, gt_poses)])
    points_pred = np.concatenate([backproject_depth(d, k, p) for d, p in zip(depth_pred, pred_poses)])
    boxes_gt = np.stack([o.box for o in scene.objects])
    rd.write_geometry(run / rd.GEOMETRY_DIR / f"{scene.scene_id}.npz", frame_ids=frame_ids,
                      depth_pred=depth_pred.astype(np.float32), depth_gt=depth_gt.astype(np.float32),
                      camera_to_world_pred=pred_poses, camera_to_world_gt=gt_poses,
                      points_pred=points_pred.astype(np.float32), points_gt=points_gt.astype(np.float32),
                      boxes_gt=boxes_gt)  # boxes_pred come from predictions/scanrefer.jsonl
    (run / rd.CONFIG_FILE).write_text(config_to_yaml(load_config("tiny")))
    with (run / rd.TRAIN_LOG_FILE).open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=rd.train_log_header(["total", "recon", "vl"]))
        writer.writeheader()
        for step in range(1, 21):
            stage = "stage1" if step <= 10 else "stage2"
            writer.writerow(rd.format_train_log_row(step, stage, 1e-3, 12.5,
                                                    {"total": 3.0 / step, "recon": 2.0 / step, "vl": 1.0 / step}))
    return run


def test_score_with_scans_and_report(run_dir, synthetic_dataset, capsys):
    ds = synthetic_dataset
    scene = ds.scenes[0]
    split = _split_of(ds, scene.scene_id)
    # Oracle ScanRefer predictions from the generator's own boxes, scored against boxes read from the scans.
    by_scene = {s.scene_id: {o.object_id: o.box.tolist() for o in s.objects} for s in ds.scenes}
    refer = [i for i in ds.instructions["scanrefer"] if _split_of(ds, i.scene_id) == split]
    assert refer
    pred_path = run_dir / rd.PREDICTIONS_DIR / "scanrefer.jsonl"
    shift = np.array([0.1, -0.05, 0, 0, 0, 0])  # a small error so the plot shows two box outlines
    write_predictions(pred_path, [{"id": i.id, "boxes": [(np.asarray(by_scene[i.scene_id][i.target_object_ids[0]]) + shift).tolist()]}
                                  for i in refer],
                      meta={"benchmark": "scanrefer", "protocol": "first_camera_gt", "model": "oracle",
                            "seconds_per_scene": 1.25})
    scanrefer = _score(capsys, "--benchmark", "scanrefer", "--pred", str(pred_path), "--gt", str(ds.annotations_dir),
                       "--split", split, "--scans", str(ds.scan_dir))
    assert scanrefer["metrics"]["Acc@0.25"] == 1.0
    assert scanrefer["protocol"] == "P1" and "ScanNet scenes" in scanrefer["gt_boxes"]  # the former name, as P1

    recon_pred = run_dir / rd.PREDICTIONS_DIR / "recon.jsonl"
    write_predictions(recon_pred, [{"id": scene.scene_id, "geometry": f"../geometry/{scene.scene_id}.npz"}],
                      meta={"benchmark": "recon", "protocol": "first_camera_gt"})
    recon = _score(capsys, "--benchmark", "recon", "--pred", str(recon_pred))
    m = recon["metrics"]
    assert m["depth/abs_rel"] == pytest.approx(0.01, abs=1e-3) and m["depth/delta1"] == 1.0
    assert 0.5 < m["recon/F-score"] <= 1.0 and m["pose/RRA@15"] == 1.0
    rd.write_json(run_dir / rd.METRICS_FILE, {"scanrefer": scanrefer, "recon": recon})

    assert main(["report", str(run_dir)]) == 0
    capsys.readouterr()
    md = (run_dir / rd.REPORT_MD).read_text()
    assert "Table 3" in md and "| Vid-LLM (this run) | 100.0 |" in md
    assert "## Protocol P1 — predicted geometry" in md and "Evaluation protocol: P1." in md
    assert "| 1.25 |" in md  # time per scene, from the predictions' meta
    # Table 5 summarises a benchmark by the mean of its metrics (paper §4.1).
    refer_mean = 100 * (scanrefer["metrics"]["Acc@0.25"] + scanrefer["metrics"]["Acc@0.5"]) / 2
    table5 = md.split("## Table 5")[1].split("## ")[0]
    assert f"| — | — | {refer_mean:.1f} | 1.25 |" in table5
    assert "| Vid-LLM (paper) | 101.9 |" in md  # the paper's row sits under ours
    html_text = (run_dir / rd.REPORT_HTML).read_text()
    assert html_text.startswith("<!DOCTYPE html>") and "<table>" in html_text and "plots/loss_curves.png" in html_text
    expected = {
        "loss_curves.png": report_mod.LOSS_PLOT_SIZE,
        f"depth_{scene.scene_id}.png": report_mod.DEPTH_PLOT_SIZE,
        f"topdown_{scene.scene_id}.png": report_mod.TOPDOWN_PLOT_SIZE,
    }
    for name, (w, h) in expected.items():
        path = run_dir / rd.PLOTS_DIR / name
        with Image.open(path) as image:
            assert image.size == (int(w * report_mod.PLOT_DPI), int(h * report_mod.PLOT_DPI))
            pixels = np.asarray(image.convert("L"), dtype=np.float64)
        assert pixels.std() > 5  # something was drawn, not a blank canvas
        assert f"plots/{name}" in md


def test_report_of_empty_run_dir_and_bad_train_log(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 0
    md = (tmp_path / rd.REPORT_MD).read_text()
    assert "No metrics.json" in md and "| Vid-LLM (this run) | — |" in md
    (tmp_path / rd.TRAIN_LOG_FILE).write_text("step,stage,lr,samples_per_s,loss/total\n1,stage1,0.001,3,abc\n")
    assert main(["report", str(tmp_path)]) == 2
    assert "train_log.csv: line 2: column 'loss/total' is not a number" in capsys.readouterr().err
    # The minimal training-log format (no stage column) still plots.
    (tmp_path / rd.TRAIN_LOG_FILE).write_text("step,lr,samples_per_s,loss/total,loss/vl\n1,0.001,3,2.0,1.0\n2,0.001,3,1.5,\n")
    assert main(["report", str(tmp_path)]) == 0
    assert (tmp_path / rd.PLOTS_DIR / "loss_curves.png").stat().st_size > 0
    (tmp_path / rd.TRAIN_LOG_FILE).write_text("step,loss\n1,2\n")
    assert main(["report", str(tmp_path)]) == 2
    assert "header lacks column(s) lr, samples_per_s" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "run directory not found" in capsys.readouterr().err
