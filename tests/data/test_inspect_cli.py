import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from sens_bytes import build_sens, intrinsic, pose, ramp_depth, smooth_image  # noqa: E402
from test_scannet import AXIS_ALIGN, CHAIR_BOX, TABLE_BOX, make_raw_scan  # noqa: E402

from vidllm.cli import main  # noqa: E402

K_COLOR = intrinsic(58.0, 57.5, 31.5, 23.5)
K_DEPTH = intrinsic(29.0, 28.75, 15.75, 11.75)


def _inspect_json(capsys, *args) -> dict:
    assert main(["inspect", *map(str, args), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_inspect_json_on_handmade_sens_with_imu(tmp_path, capsys):
    poses = np.stack([pose(0.1 * i, 0, 1.2, yaw=0.1 * i) for i in range(5)])
    poses[[1, 3]] = -np.inf
    path = tmp_path / "scene0042_01.sens"
    path.write_bytes(build_sens([smooth_image(40, 56, i) for i in range(5)], [ramp_depth(20, 28, i) for i in range(5)],
                                poses, K_COLOR, K_DEPTH, num_imu_frames=4, depth_shift=1000.0))
    out = _inspect_json(capsys, path)
    assert out["scene_id"] == "scene0042_01"
    assert (out["num_frames"], out["num_valid_frames"], out["dropped_frame_ids"]) == (5, 3, [1, 3])
    assert out["color_size"] == [56, 40] and out["depth_size"] == [28, 20] and out["depth_shift"] == 1000.0
    np.testing.assert_allclose(out["intrinsic_color"], K_COLOR, atol=1e-6)
    np.testing.assert_allclose(out["camera_to_world"], poses[[0, 2, 4]], atol=1e-6)
    assert out["axis_alignment"] == np.eye(4).tolist() and out["objects"] == []


def test_inspect_json_on_scene_folder_with_objects(tmp_path, capsys):
    scan = make_raw_scan(tmp_path)
    out = _inspect_json(capsys, scan, "--check-frames")
    np.testing.assert_allclose(out["axis_alignment"], AXIS_ALIGN)
    assert [(o["object_id"], o["label"]) for o in out["objects"]] == [(0, "office chair"), (1, "table")]
    np.testing.assert_allclose(out["objects"][0]["box"], CHAIR_BOX, atol=1e-6)
    np.testing.assert_allclose(out["objects"][1]["box"], TABLE_BOX, atol=1e-6)
    assert out["frame_check"]["frames_decoded"] == 3
    assert 0.9 < out["frame_check"]["valid_depth_fraction"] < 1.0


def test_inspect_text_output(tmp_path, capsys):
    scan = make_raw_scan(tmp_path)
    assert main(["inspect", str(scan), "--check-frames", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "scene0001_00" in text and "4 total, 3 valid, 1 dropped" in text
    assert "office chair" in text and "frame check  3 frames decoded" in text


def test_inspect_bad_input_is_one_line_error(tmp_path, capsys):
    path = tmp_path / "broken.sens"
    path.write_bytes(b"\x04\x00\x00\x00" + b"\x00" * 20)
    assert main(["inspect", str(path), "--json"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "broken.sens: truncated .sens file" in err


def test_inspect_entry_point_and_help(tmp_path):
    scan = make_raw_scan(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run([sys.executable, "-m", "vidllm", "inspect", str(scan), "--json"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["num_valid_frames"] == 3
    with pytest.raises(SystemExit):
        main(["inspect", "--help"])
