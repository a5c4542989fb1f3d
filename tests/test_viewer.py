"""`vidllm view`: scenes from a PLY, a run directory and a model on a video, served by viser and
checked in the system's headless Chromium: the page loads, the 3D canvas renders the scene, and a
question typed into the page is answered by the real (tiny, random-init) model."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.viewer_page import CHROMIUM, browser, canvas_pixels, distinct_colours, open_viewer
from vidllm.cli import main
from vidllm.errors import DataError

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _colour_video(path: Path, frames: int = 30, size: tuple[int, int] = (128, 96)) -> Path:
    """Gradients and a checkerboard, so the reconstruction's colours are many."""
    from vidllm.data.video import write_video

    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    images = [np.stack([(x * 255 // (w - 1) + 4 * i) % 256, y * 255 // (h - 1),
                        ((x // 16 + y // 16) % 2) * 200 + 30], -1).astype(np.uint8) for i in range(frames)]
    return write_video(path, np.stack(images), fps=10)


def _write_ply(path: Path, points: np.ndarray, colors: np.ndarray | None = None, ascii: bool = False) -> Path:
    props = ["property float x", "property float y", "property float z"]
    if colors is not None:
        props += ["property uchar red", "property uchar green", "property uchar blue"]
    header = "\n".join(["ply", f"format {'ascii' if ascii else 'binary_little_endian'} 1.0",
                        f"element vertex {len(points)}", *props, "end_header"]) + "\n"
    if ascii:
        rows = [" ".join([*(f"{v:.5f}" for v in p), *(str(int(c)) for c in (colors[i] if colors is not None else []))])
                for i, p in enumerate(points)]
        path.write_text(header + "\n".join(rows) + "\n")
    else:
        fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")] + ([("red", "u1"), ("green", "u1"), ("blue", "u1")]
                                                             if colors is not None else [])
        table = np.zeros(len(points), dtype=fields)
        table["x"], table["y"], table["z"] = points.T
        if colors is not None:
            table["red"], table["green"], table["blue"] = colors.T
        path.write_bytes(header.encode() + table.tobytes())
    return path


# ----------------------------------------------------------------------------- loading (no browser)


def test_ply_scenes_binary_ascii_and_cameras(tmp_path):
    from vidllm.inference import Reconstruction
    from vidllm.viewer import scene_from_ply

    rng = np.random.default_rng(0)
    points = rng.uniform(-1, 1, (500, 3)).astype(np.float32)
    colors = rng.integers(0, 256, (500, 3)).astype(np.uint8)
    poses = np.eye(4)[None].repeat(2, 0)
    intrinsics = np.array([[[50.0, 0, 35], [0, 40.0, 28], [0, 0, 1]]] * 2)
    recon = Reconstruction(points, colors, poses, intrinsics, np.ones((2, 56, 70)), (70, 56), 1.0, 0.0)
    ply = recon.write_ply(tmp_path / "room.ply")
    (tmp_path / "room.cameras.json").write_text(json.dumps(
        {"camera_to_scene": poses.tolist(), "intrinsics": intrinsics.tolist(), "image_size": [70, 56]}))
    scene = scene_from_ply(ply)
    np.testing.assert_allclose(scene.points, points)
    assert (scene.colors == colors).all()
    assert scene.cameras is not None and len(scene.cameras.camera_to_scene) == 2
    np.testing.assert_allclose(scene.cameras.fov_y, 2 * np.arctan(28 / 40.0))  # from fy and the image height
    assert scene.cameras.aspect == pytest.approx(70 / 56)

    bare = scene_from_ply(_write_ply(tmp_path / "bare.ply", points[:20], ascii=True))
    np.testing.assert_allclose(bare.points, points[:20], atol=1e-5)
    assert bare.cameras is None and bare.colors.shape == (20, 3) and len(np.unique(bare.colors, axis=0)) > 5

    with pytest.raises(DataError, match="bad.ply: not a PLY file"):
        scene_from_ply(_write_bytes(tmp_path / "bad.ply", b"hello\n"))
    with pytest.raises(DataError, match="empty.ply: PLY has no vertices"):
        scene_from_ply(_write_ply(tmp_path / "empty.ply", np.zeros((0, 3), np.float32)))


def _write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_cli_bad_inputs_are_one_line_errors_naming_the_file(tmp_path, capsys):
    bad = _write_bytes(tmp_path / "broken.ply", b"\x00" * 64)
    assert main(["view", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vidllm view: error:") and str(bad) in err[0]
    assert main(["view", str(tmp_path / "missing")]) == 2
    assert f"{tmp_path / 'missing'}: not found" in capsys.readouterr().err
    assert main(["view", str(tmp_path)]) == 2  # a folder that is no run directory
    assert "no geometry/<scene>.npz" in capsys.readouterr().err


def test_run_directory_scene(tmp_path, synthetic_dataset):
    """A run directory as `vidllm evaluate` writes it: the predicted cloud is coloured from the
    stored input frames (found by the point stride), frustums get the fov the points imply, GT
    boxes come from the geometry file, predicted boxes from the grounding predictions with the
    phrases of the annotations metrics.json names."""
    from vidllm.artifacts import run_dir as rd
    from vidllm.eval.predictions import write_predictions
    from vidllm.viewer import load_run_scene

    frames_n, h, w, stride, fy = 3, 28, 36, 4, 30.0
    rng = np.random.default_rng(1)
    depth = rng.uniform(1.0, 3.0, (frames_n, h, w)).astype(np.float32)
    depth[:, :3] = 0  # invalid pixels are not points
    colors = rng.integers(0, 256, (frames_n, h, w, 3)).astype(np.uint8)
    poses = np.eye(4)[None].repeat(frames_n, 0)
    poses[:, :3, 3] = [[0, 0, 0], [0.5, 0, 0], [0.5, 0.5, 0]]
    points = []
    for d, pose in zip(depth, poses):
        v, u = np.mgrid[0:h:stride, 0:w:stride]
        z = d[::stride, ::stride]
        cam = np.stack([(u - w / 2) / 32.0 * z, (v - h / 2) / fy * z, z], -1)[z > 0]
        points.append(cam @ pose[:3, :3].T + pose[:3, 3])
    run = tmp_path / "run"
    scene_id = "scene0000_00"
    boxes_gt = np.array([[1, 1, 1, 0.5, 0.5, 0.5], [2, 1, 0.5, 1, 1, 1.0]])
    rd.write_geometry(run / rd.GEOMETRY_DIR / f"{scene_id}.npz", frame_ids=np.array([0, 4, 7]), depth_pred=depth,
                      depth_gt=depth, camera_to_world_pred=poses, camera_to_world_gt=poses,
                      points_pred=np.concatenate(points).astype(np.float32),
                      points_gt=np.concatenate(points).astype(np.float32), boxes_gt=boxes_gt, colors=colors)
    rd.write_geometry(run / rd.GEOMETRY_DIR / "scene0001_00.npz", points_pred=np.zeros((4, 3), np.float32))
    inst = next(i for i in synthetic_dataset.instructions["scanrefer"] if i.scene_id == scene_id)
    write_predictions(run / rd.PREDICTIONS_DIR / "scanrefer.jsonl",
                      [{"id": inst.id, "text": "", "boxes": [[1.0, 1.0, 1.0, 0.4, 0.4, 0.4]]}],
                      meta={"benchmark": "scanrefer", "split": "train"})
    rd.write_json(run / rd.METRICS_FILE, {"scanrefer": {"gt": str(synthetic_dataset.annotations_dir)}})

    loaded = load_run_scene(run)  # the first scene by default
    scene = loaded.scene
    expected_colors = colors[:, ::stride, ::stride][depth[:, ::stride, ::stride] > 0]
    assert (scene.colors == expected_colors).all() and len(scene.points) == len(expected_colors)
    np.testing.assert_allclose(scene.cameras.fov_y, 2 * np.arctan2(h / 2, fy), rtol=1e-4)
    np.testing.assert_allclose(scene.gt.boxes, boxes_gt)
    assert scene.predicted.labels == [f"scanrefer: {inst.text}"] and scene.predicted.boxes.shape == (1, 6)
    assert "ground-truth points" in scene.extra_points
    assert loaded.model_dir is None and loaded.frames.shape == (frames_n, h, w, 3)
    assert loaded.frame_ids.tolist() == [0, 4, 7]

    other = load_run_scene(run, "scene0001_00")  # no depth/frames: height colours, no cameras
    assert other.scene.cameras is None and other.scene.colors.shape == (4, 3)
    with pytest.raises(DataError, match="no scene 'scene0009_00' \\(the run has scene0000_00, scene0001_00\\)"):
        load_run_scene(run, "scene0009_00")


# ----------------------------------------------------------------------------- the page in Chromium


needs_chromium = pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"no system Chromium at {CHROMIUM}")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from vidllm.inference import VideoModel

    out = tmp_path_factory.mktemp("viewer_model") / "model"
    assert main(["init", "--recipe", "tiny", "--out", str(out)]) == 0
    video = _colour_video(tmp_path_factory.mktemp("viewer_video") / "room.mp4")
    model = VideoModel.load(out, max_new_tokens=6)
    return out, video, model


@needs_chromium
def test_page_renders_the_scene_and_answers_questions(tiny_model):
    from vidllm.viewer import ModelSession, ViewerScene, build_viewer, scene_from_reconstruction

    _, video, model = tiny_model
    clip = model.load_video(video)
    scene = scene_from_reconstruction(model.reconstruct(clip), video.name, clip)
    viewer = build_viewer(scene, ModelSession(model, clip), port=_free_port())
    empty = build_viewer(ViewerScene("empty", np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8)),
                         port=_free_port())
    try:
        assert viewer.url.startswith("http://127.0.0.1:")
        with browser() as chromium:
            blank = canvas_pixels(open_viewer(chromium, empty.url).screenshot())
            page = open_viewer(chromium, viewer.url)
            shown = canvas_pixels(page.screenshot())
            assert page.errors == []
            assert all("127.0.0.1" not in u for u in page.outside)  # only viser's analytics tag was refused
            # The scene renders: many colours in the 3D area, where the empty scene has (almost) none.
            assert distinct_colours(shown) > 200 > 20 > distinct_colours(blank)
            assert np.abs(shown.astype(int) - blank.astype(int)).sum(-1).astype(bool).mean() > 0.002

            question = "What color is the wall?"
            expected = model.ask(clip, question).text
            page.get_by_role("textbox").fill(question)
            page.get_by_role("button", name="Ask").click()
            answer = page.locator("p", has_text="Answer:")
            answer.wait_for(timeout=60_000)
            words = re.sub(r"\W", "", answer.inner_text().split("Answer:", 1)[1])
            assert words == re.sub(r"\W", "", expected)
            assert [(q, a) for q, a, _ in viewer.answers] == [(question, expected)]

            # Weights that always emit <ground> (as a grounding-trained model does for a phrase):
            # the answer's boxes are drawn into the scene.
            head = model.model.llm.get_output_embeddings()
            biased = torch.nn.Linear(head.in_features, head.out_features, bias=True)
            biased.weight.data.copy_(head.weight.data)
            biased.bias.data.zero_()
            biased.bias.data[model.model.special_ids.ground] = 1e4
            model.model.llm.set_output_embeddings(biased)
            try:
                before = canvas_pixels(page.screenshot())
                page.get_by_role("textbox").fill("the brown table")
                page.get_by_role("button", name="Ground").click()
                page.locator("p", has_text="box(es) (orange)").wait_for(timeout=60_000)
                time.sleep(1.5)
                after = canvas_pixels(page.screenshot())
            finally:
                model.model.llm.set_output_embeddings(head)
            phrase, _, boxes = viewer.answers[-1]
            assert phrase == "the brown table" and boxes.shape == (model.max_new_tokens, 6) and np.isfinite(boxes).all()
            assert f"{len(boxes)} box(es) (orange)" in page.locator("p", has_text="box(es)").inner_text()
            # The boxes' wireframes appear: new pixels, warm (orange, shaded), unlike the blue frustums.
            changed = (np.abs(after.astype(int) - before.astype(int)) > 40).any(-1)
            assert changed.mean() > 0.003
            red, _, blue = after[changed].astype(float).mean(0)
            assert red > blue + 50
    finally:
        viewer.stop()
        empty.stop()


def test_cli_serves_a_ply_until_interrupted(tmp_path):
    """`vidllm view scene.ply` prints its URL, serves the page, and stops cleanly on Ctrl-C."""
    rng = np.random.default_rng(2)
    ply = _write_ply(tmp_path / "scene.ply", rng.uniform(-1, 1, (200, 3)).astype(np.float32),
                     rng.integers(0, 256, (200, 3)).astype(np.uint8))
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "vidllm", "view", str(ply), "--port", str(port)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline, line = time.monotonic() + 60, ""
        while "viewer: http://" not in line and time.monotonic() < deadline and proc.poll() is None:
            ready, _, _ = select.select([proc.stdout], [], [], 1.0)
            line = proc.stdout.readline() if ready else line
        url = re.search(r"http://127\.0\.0\.1:\d+/", line)
        assert url, f"no URL printed: {line!r} {proc.stderr.read() if proc.poll() is not None else ''}"
        with urllib.request.urlopen(url.group(0), timeout=10) as response:
            assert response.status == 200 and b'<div id="root">' in response.read()
        assert "200 points" in line and "questions off" in line
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)  # drains both pipes, so a chatty child cannot block on them
        assert proc.returncode == 0 and "stopping the viewer" in stderr
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def test_run_directory_questions_use_its_model_and_land_in_its_world(tmp_path, tiny_model):
    """RUN_DIR/model answers about the stored input frames; its scene frame is mapped onto the run's
    predicted cameras, so `ground` boxes are drawn in the run's world."""
    import shutil

    from vidllm.artifacts import run_dir as rd
    from vidllm.eval.protocols import WorldMap
    from vidllm.viewer import load_run_scene, run_session

    model_dir, video, model = tiny_model
    clip = model.load_video(video)
    frames = (clip.images.permute(0, 2, 3, 1) * 255).round().byte().numpy()
    own = model.reconstruct(clip, point_stride=8)
    angle = 0.7  # the run's world: the scene frame turned about z and moved, as predict's protocol map does
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    world = WorldMap(1.0, rotation, np.array([2.0, 1.0, 0.5]))
    run = tmp_path / "run"
    shutil.copytree(model_dir, run / "model")
    rd.write_geometry(run / rd.GEOMETRY_DIR / "scene0000_00.npz", frame_ids=clip.frame_indices,
                      camera_to_world_pred=world.poses(own.camera_to_scene),
                      points_pred=world.points(own.points).astype(np.float32), colors=frames)
    loaded = load_run_scene(run)
    assert loaded.model_dir == run / "model"
    session = run_session(model, loaded, run)
    np.testing.assert_allclose(session.to_view.poses(own.camera_to_scene), world.poses(own.camera_to_scene),
                               atol=1e-3)
    assert session.ask("How many chairs are in the room?") == model.ask(clip, "How many chairs are in the room?").text
