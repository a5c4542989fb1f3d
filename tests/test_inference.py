"""Own-video use: `vidllm ask / reconstruct / ground VIDEO` on a tiny random-init model directory.

A random model's words are arbitrary, so these tests check what holds for any weights: the video
is sampled and preprocessed as training clips are, the point cloud is the model's own depth
back-projected with the video's colours, the scene frame has its origin at the first camera,
boxes come out of every emitted <ground>, and bad input is one line naming the file.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.video_files import grey_level, write_grey_video
from vidllm.cli import main
from vidllm.data.scannet.meta import read_ply_mesh


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("video_model") / "model"
    assert main(["init", "--recipe", "tiny", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return write_grey_video(tmp_path_factory.mktemp("own_video") / "my room.mp4", frames=30, size=(128, 96))


def _json_out(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_clip_is_preprocessed_like_training_clips(model_dir, video):
    from vidllm.inference import VideoModel

    model = VideoModel.load(model_dir)
    assert (model.frames, model.short_side) == (4, 56)  # the tiny model config: frames, shorter image side
    clip = model.load_video(video)
    assert clip.images.shape == (4, 3, 56, 70)  # 128x96 → 75x56 → cropped to multiples of 14
    assert clip.frame_indices.tolist() == [0, 10, 19, 29] and clip.source_size == (128, 96)
    for image, i in zip(clip.images, clip.frame_indices):
        assert abs(float(image.mean()) * 255 - grey_level(int(i))) < 3.0


def test_clip_size_follows_the_saved_model_config(tmp_path, video):
    from vidllm.inference import VideoModel

    model_dir = tmp_path / "model"
    assert main(["init", "--recipe", "tiny", "--out", str(model_dir), "--set", "model.frames=3"]) == 0
    model = VideoModel.load(model_dir)
    assert model.frames == 3 and model.load_video(video).frame_indices.tolist() == [0, 14, 29]
    assert VideoModel.load(model_dir, frames=5, short_side=42).load_video(video).images.shape == (5, 3, 42, 56)


def test_ask_answers_in_text(model_dir, video, capsys):
    assert main(["ask", str(video), "How many chairs are in the room?", "--model", str(model_dir), "--json",
                 "--max-new-tokens", "6"]) == 0
    out = _json_out(capsys)
    assert isinstance(out["answer"], str) and out["question"] == "How many chairs are in the room?"
    assert out["frames"] == [0, 10, 19, 29] and out["seconds"] > 0


def test_several_questions_share_one_vision_pass(model_dir, video, capsys, monkeypatch):
    from vidllm.inference import VideoModel

    model = VideoModel.load(model_dir, max_new_tokens=5)
    clip = model.load_video(video)
    questions = ["How many chairs are in the room?", "What color is the table?"]
    alone = [model.ask(clip, q).text for q in questions]
    passes = []
    encode = model.model.encode_video
    monkeypatch.setattr(model.model, "encode_video", lambda *a, **k: (passes.append(1), encode(*a, **k))[1])
    assert [a.text for a in model.ask_many(clip, questions)] == alone and len(passes) == 1
    monkeypatch.undo()
    assert main(["ask", str(video), *questions, "--model", str(model_dir), "--json", "--max-new-tokens", "5"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [line["question"] for line in lines] == questions and [line["answer"] for line in lines] == alone


def test_reconstruct_writes_the_point_cloud_and_cameras(model_dir, video, tmp_path, capsys):
    ply = tmp_path / "out" / "scene.ply"
    assert main(["reconstruct", str(video), "-o", str(ply), "--model", str(model_dir), "--json",
                 "--stride", "2", "--frames", "3"]) == 0
    out = _json_out(capsys)
    mesh = read_ply_mesh(ply)
    assert len(mesh.vertices) == out["points"] > 0 and mesh.num_faces == 0
    assert np.isfinite(mesh.vertices).all()
    # Colours are the video's: grey frames give grey points of the sampled frames' levels.
    levels = {grey_level(i) for i in (0, 14, 29)}
    assert np.all(np.abs(mesh.colors[:, 0].astype(int) - mesh.colors[:, 2].astype(int)) <= 3)
    assert all(min(abs(int(c) - lv) for lv in levels) <= 3 for c in np.unique(mesh.colors[:, 0]))
    cameras = json.loads((tmp_path / "out" / "scene.cameras.json").read_text())
    poses = np.array(cameras["camera_to_scene"])
    assert poses.shape == (3, 4, 4) and cameras["source_frame_indices"] == [0, 14, 29]
    np.testing.assert_allclose(poses[:, :3, :3] @ poses[:, :3, :3].transpose(0, 2, 1), np.eye(3)[None].repeat(3, 0),
                               atol=1e-4)  # rigid: rotations ...
    np.testing.assert_allclose(poses[:, 3], np.array([[0, 0, 0, 1.0]] * 3))  # ... and a homogeneous last row
    assert np.array(cameras["intrinsics"]).shape == (3, 3, 3) and cameras["image_size"] == [70, 56]
    # At stride 2, at most one point per kept pixel of each frame.
    assert out["points"] <= 3 * 28 * 35


def test_points_are_the_depth_back_projected_with_the_cameras(model_dir, video):
    from vidllm.inference import VideoModel

    model = VideoModel.load(model_dir)
    recon = model.reconstruct(model.load_video(video), point_stride=3)
    assert recon.depth.shape == (4, 56, 70) and recon.image_size == (70, 56)
    expected = []
    for depth, k, pose in zip(recon.depth, recon.intrinsics, recon.camera_to_scene):
        v, u = np.mgrid[0:56:3, 0:70:3]
        d = depth[::3, ::3].astype(np.float64)
        camera = np.stack([(u - k[0, 2]) / k[0, 0] * d, (v - k[1, 2]) / k[1, 1] * d, d], -1)  # OpenCV axes
        expected.append((camera @ pose[:3, :3].T + pose[:3, 3])[d > 0])
    np.testing.assert_allclose(recon.points, np.concatenate(expected), rtol=1e-4, atol=1e-4)
    assert recon.scale > 0 and np.all(recon.depth >= 0)


def test_ground_returns_one_box_per_ground_token(model_dir, video):
    from vidllm.inference import VideoModel

    model = VideoModel.load(model_dir)
    clip = model.load_video(video)
    llm = model.model.llm
    head = llm.get_output_embeddings()
    # Weights that always emit <ground> (as a grounding-trained model does for a referring phrase).
    biased = torch.nn.Linear(head.in_features, head.out_features, bias=True)
    biased.weight.data.copy_(head.weight.data)
    biased.bias.data.zero_()
    biased.bias.data[model.model.special_ids.ground] = 1e4
    llm.set_output_embeddings(biased)
    model.max_new_tokens = 3
    found = model.ground(clip, "the brown table next to the window")
    assert found.boxes.shape == (3, 6) and np.isfinite(found.boxes).all()
    assert np.all(found.boxes[:, 3:] > 0)  # sizes are positive


def test_ground_cli_prints_boxes(model_dir, video, capsys):
    assert main(["ground", str(video), "the brown table", "--model", str(model_dir), "--json",
                 "--max-boxes", "2"]) == 0
    out = _json_out(capsys)
    assert out["phrase"] == "the brown table" and "first camera" in out["frame"]
    assert all(len(b["center"]) == 3 and len(b["size"]) == 3 for b in out["boxes"]) and len(out["boxes"]) <= 2


def test_bad_video_is_one_line_naming_the_file(model_dir, tmp_path, capsys):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00" * 1000)
    assert main(["ask", str(bad), "What is this?", "--model", str(model_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("vidllm ask: error:") and str(bad) in err and "not a readable video" in err


def test_empty_question_and_bad_numbers_are_one_line_errors(model_dir, video, capsys):
    assert main(["ask", str(video), "  ", "--model", str(model_dir)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == "vidllm ask: error: the question is empty"
    with pytest.raises(SystemExit):  # argparse: usage and the bad value, exit 2
        main(["reconstruct", str(video), "-o", "x.ply", "--model", str(model_dir), "--stride", "0"])
    assert "--stride: must be >= 1, got 0" in capsys.readouterr().err
