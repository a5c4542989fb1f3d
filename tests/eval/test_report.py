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


# ----------------------------------------------------------------------------- plots

STAGE1_TERMS = ["total", "geo", "lang", "sc"]
STAGE2_TERMS = ["total", "camera", "camera_trans", "camera_rot", "camera_fov", "depth", "depth_conf", "depth_reg",
                "depth_grad", "point_conf", "rotation", "md_log", "md_chamfer", "lm", "box", "match", "refine",
                "giou", "recon", "md", "vl", "proposal_objectness", "proposal_box", "brand_new_term"]


def _two_stage_log() -> rd.TrainLog:
    """Stage 1 logs the distillation terms over steps 1..10, stage 2 the rest over steps 1..30
    (its own counter); a term is NaN in the rows of the stage that does not log it."""
    steps = np.r_[np.arange(1, 11), np.arange(1, 31)]
    stages = ["stage1"] * 10 + ["stage2"] * 30
    in_stage1 = np.array([s == "stage1" for s in stages])
    decay = 5.0 / steps  # spans more than a decade over stage 2
    losses = {}
    for term in dict.fromkeys(STAGE1_TERMS + STAGE2_TERMS):
        values = np.full(len(steps), np.nan)
        values[in_stage1] = decay[in_stage1] if term in STAGE1_TERMS else np.nan
        values[~in_stage1] = decay[~in_stage1] if term in STAGE2_TERMS else np.nan
        losses[term] = values
    losses["depth_conf"][~in_stage1] -= 0.5  # a signed term: negative late in training
    lr = np.r_[np.linspace(5e-4, 0.0, 10), np.linspace(1e-3, 0.0, 30)]
    return rd.TrainLog(steps, stages, lr, np.ones(len(steps)), losses)


def test_loss_panels_group_terms_by_stage_and_give_each_stage_its_lr():
    assert report_mod.loss_group("geo") == "distillation"
    assert report_mod.loss_group("depth_conf") == report_mod.loss_group("point_conf") == "reconstruction"
    assert report_mod.loss_group("md_chamfer") == report_mod.loss_group("md") == "metric depth"
    assert report_mod.loss_group("proposal_box") == report_mod.loss_group("vl") == "vision-language"
    assert report_mod.loss_group("mdx") == report_mod.loss_group("brand_new_term") == "other"

    panels = {(p.stage, p.title): p for p in report_mod.loss_panels(_two_stage_log())}
    assert list(panels) == [
        ("stage1", "total"), ("stage1", "distillation"), ("stage1", "learning rate"),
        ("stage2", "total"), ("stage2", "reconstruction"), ("stage2", "metric depth"),
        ("stage2", "vision-language"), ("stage2", "other"), ("stage2", "learning rate")]
    assert panels["stage1", "distillation"].terms == ("geo", "lang", "sc")
    assert panels["stage2", "total"].terms == ("total", "recon", "md", "vl")
    recon = panels["stage2", "reconstruction"]
    assert recon.thick == "recon" and recon.terms[0] == "recon"  # the group's sum heads its panel
    assert set(recon.terms) == {"recon", "camera", "camera_trans", "camera_rot", "camera_fov", "depth",
                                "depth_conf", "depth_reg", "depth_grad", "point_conf", "rotation"}
    assert panels["stage2", "metric depth"].terms == ("md", "md_log", "md_chamfer")
    assert set(panels["stage2", "vision-language"].terms) == {
        "vl", "lm", "box", "match", "refine", "giou", "proposal_objectness", "proposal_box"}
    assert panels["stage2", "other"].terms == ("brand_new_term",)
    # Log scale for positive losses spanning > 1 decade, symlog once a term goes negative.
    assert panels["stage2", "vision-language"].yscale == "log"
    assert recon.yscale == "symlog"
    assert panels["stage1", "distillation"].yscale == "linear"  # 5.0 .. 0.5: one decade, not more


def test_loss_figure_has_an_lr_panel_per_stage_and_legends_outside_the_curves():
    log = _two_stage_log()
    fig = report_mod.loss_figure(log)
    axes = {ax.get_title(): ax for ax in fig.axes}
    for stage, n_steps, lr0 in (("Stage 1", 10, 5e-4), ("Stage 2", 30, 1e-3)):
        (line,) = axes[f"{stage} · learning rate"].get_lines()  # one stage's schedule, not both overlaid
        assert len(line.get_xdata()) == n_steps and line.get_ydata()[0] == pytest.approx(lr0)
    ax = axes["Stage 2 · vision-language"]
    assert ax.get_yscale() == "log"
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()][0] == "vl"
    # Each term: a faint raw curve and a labelled smoothed one.
    assert len(ax.get_lines()) == 2 * len(legend.get_texts())
    raw, smooth = ax.get_lines()[:2]
    assert raw.get_alpha() < 0.5 and smooth.get_ydata()[-1] > raw.get_ydata()[-1]  # the EMA lags the decay
    fig.canvas.draw()
    canvas = fig.bbox
    for ax in fig.axes:
        if ax.get_legend() is not None:
            box, plot = ax.get_legend().get_window_extent(), ax.get_window_extent()
            assert box.x0 >= plot.x1  # beside the curves, not over them
            assert canvas.x0 <= box.x0 and box.x1 <= canvas.x1 + 1 and box.y0 >= canvas.y0 - 1  # not cut off


def _box(cx, cy, size=0.5):
    return [cx, cy, 0.5, size, size, 1.0]


def _poses(xs, ys):
    poses = np.tile(np.eye(4), (len(xs), 1, 1))
    poses[:, 0, 3], poses[:, 1, 3], poses[:, 2, 3] = xs, ys, 1.5
    return poses


def test_topdown_figure_draws_predicted_and_gt_boxes_and_camera_paths():
    rng = np.random.default_rng(0)
    gt_path = _poses([0.0, 1.0, 2.0, 3.0, 4.0], [0.0, 0.5, 1.0, 0.5, 0.0])
    pred_path = gt_path.copy()
    pred_path[1:, :3, 3] += 0.2
    pred_path[2, 0, 3] = np.nan  # a frame without a pose is dropped from the path
    geometry = {"points_pred": rng.uniform(0, 4, size=(500, 3)).astype(np.float32),
                "boxes_gt": np.array([_box(1, 1), _box(3, 2)]),
                "boxes_pred": np.array([_box(1.1, 1.0), _box(3.0, 2.2), _box(2, 3)]),
                "camera_to_world_gt": gt_path, "camera_to_world_pred": pred_path}
    ax = report_mod.topdown_figure(geometry, "scene: top-down view").axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["predicted points (darker = higher)", "GT box", "predicted box", "GT camera path",
                      "predicted camera path", "path start"]
    boxes = [p for p in ax.patches if p.get_gid() in ("boxes_gt", "boxes_pred")]
    assert sum(p.get_gid() == "boxes_gt" for p in boxes) == 2 and sum(p.get_gid() == "boxes_pred" for p in boxes) == 3
    assert len({tuple(p.get_edgecolor()) for p in boxes}) == 2  # one colour per box set
    lines = {line.get_gid(): line for line in ax.get_lines() if line.get_gid() != "path_start"}
    np.testing.assert_allclose(lines["camera_to_world_gt"].get_xydata(), gt_path[:, :2, 3])
    np.testing.assert_allclose(lines["camera_to_world_pred"].get_xydata(), pred_path[[0, 1, 3, 4], :2, 3])
    starts = [line for line in ax.get_lines() if line.get_gid() == "path_start"]
    assert [tuple(s.get_xydata()[0]) for s in starts] == [(0.0, 0.0), (0.0, 0.0)]

    # Without poses or predicted boxes, only what is there gets a legend entry.
    bare = report_mod.topdown_figure({"points_pred": geometry["points_pred"], "boxes_gt": geometry["boxes_gt"]}, "t")
    assert [t.get_text() for t in bare.axes[0].get_legend().get_texts()] == [
        "predicted points (darker = higher)", "GT box"]


def test_depth_figure_shows_rgb_gt_prediction_and_error_per_frame():
    rng = np.random.default_rng(0)
    coarse = rng.uniform(1.0, 4.0, size=(6, 6, 8))
    gt = coarse.repeat(2, axis=1).repeat(2, axis=2).astype(np.float32)  # [6,12,16], 2x2 blocks
    gt[:, :2] = 0.0  # invalid GT rows
    geometry = {"frame_ids": np.arange(10, 16), "depth_gt": gt,
                "depth_pred": (coarse * 1.1).astype(np.float32),  # 10% too far, on a coarser grid
                "colors": rng.integers(0, 255, size=(6, 12, 16, 3), dtype=np.uint8)}
    fig = report_mod.depth_figure(geometry, "scene: depth")
    images = [ax for ax in fig.axes if ax.images]
    colorbars = [ax for ax in fig.axes if not ax.images]
    assert len(images) == report_mod.MAX_DEPTH_FRAMES * 4 and len(colorbars) == 2
    grid = np.array(images).reshape(report_mod.MAX_DEPTH_FRAMES, 4)
    assert [ax.get_title().split("\n")[0] for ax in grid[0]] == list(report_mod.DEPTH_COLUMNS)
    assert [ax.get_ylabel() for ax in grid[:, 0]] == ["frame 10", "frame 12", "frame 13", "frame 15"]
    for rgb, gt_ax, pred_ax, err_ax in grid:
        assert rgb.images[0].get_array().shape == (12, 16, 3)
        assert gt_ax.images[0].get_clim() == pred_ax.images[0].get_clim()  # one depth scale
        low, high = err_ax.images[0].get_clim()
        assert low == -high and high > 0
        error = err_ax.images[0].get_array()
        assert error.shape == (12, 16)  # on the GT grid, masked where GT is invalid
        assert np.ma.getmaskarray(error)[:2].all() and not np.ma.getmaskarray(error)[2:].any()
        assert "AbsRel 0.100" in err_ax.get_title()


def test_report_plots_scenes_with_predicted_boxes_first(tmp_path):
    """Grounding predictions cover the evaluated scenes only, so those get the top-down plots."""
    rng = np.random.default_rng(0)
    for scene in ("scene0000_00", "scene0001_00"):
        rd.write_geometry(tmp_path / rd.GEOMETRY_DIR / f"{scene}.npz",
                          points_pred=rng.uniform(0, 3, size=(200, 3)).astype(np.float32),
                          camera_to_world_pred=_poses([0.0, 1.0], [0.0, 1.0]), boxes_gt=np.array([_box(1, 1)]))
    write_predictions(tmp_path / rd.PREDICTIONS_DIR / "scanrefer.jsonl",
                      [{"id": "scene0001_00|3|0", "boxes": [_box(1.2, 1.0)]},
                       {"id": "scene0001_00|4|0", "boxes": []},  # no box: nothing to draw
                       {"id": "scene0001_00|5|0", "boxes": [_box(2.0, 2.0)]}],
                      meta={"benchmark": "scanrefer", "protocol": "P1"})
    boxes = report_mod._predicted_boxes(tmp_path / rd.PREDICTIONS_DIR)
    assert list(boxes) == ["scene0001_00"]
    np.testing.assert_allclose(boxes["scene0001_00"], [_box(1.2, 1.0), _box(2.0, 2.0)], atol=1e-4)
    report = report_mod.build_report(tmp_path, max_scenes=1)
    assert [p.name for p in report.plots] == ["topdown_scene0001_00.png"]
