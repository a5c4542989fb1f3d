"""The Co3Dv2, RealEstate10K and NYUv2 readers on tiny folders in the published layouts: poses,
intrinsics and depth come out in OpenCV convention exactly as written, and bad input is one DataError."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from tests.geometry_set_fixtures import write_co3d, write_nyuv2, write_re10k
from vidllm.data.geometry_sets import co3d, nyuv2, re10k, sample_clip_frames
from vidllm.errors import DataError


def _project_opencv(camera_to_world: np.ndarray, k: np.ndarray, point: np.ndarray) -> np.ndarray:
    cam = np.linalg.inv(camera_to_world) @ np.append(point, 1.0)
    return (k @ cam[:3])[:2] / cam[2]


def _project_pytorch3d(view: dict, width: int, height: int, point: np.ndarray) -> np.ndarray:
    """PyTorch3D's own chain: row-vector camera transform, NDC projection (+X left, +Y up), NDC → pixels
    with edges at 0 and W (pixel centres at .5), then OpenCV's integer pixel centres."""
    cam = point @ np.asarray(view["R"]) + np.asarray(view["T"])
    ndc = np.asarray(view["focal_length"]) * cam[:2] / cam[2] + np.asarray(view["principal_point"])
    s = min(width, height) / 2.0
    return np.array([width / 2.0 - s * ndc[0], height / 2.0 - s * ndc[1]]) - 0.5


def test_co3d_cameras_project_points_as_pytorch3d_does(tmp_path):
    written = write_co3d(tmp_path)
    w, h = written.size
    clips = co3d.load_co3d(tmp_path, frames=None, with_depth=True)
    assert [c.id for c in clips] == sorted(written.camera_to_world) and {c.group for c in clips} == {"apple"}
    point = np.array([0.3, -0.2, 0.4])
    records = written.raw["records"]
    for clip in clips:
        np.testing.assert_allclose(clip.camera_to_world, written.camera_to_world[clip.id], atol=1e-9)
        np.testing.assert_allclose(clip.intrinsics, np.broadcast_to(written.intrinsics[clip.id], (4, 3, 3)), atol=1e-9)
        assert clip.frame_ids.tolist() == written.frame_ids[clip.id]
        sequence = clip.id.split("/")[1]
        views = [r["viewpoint"] for r in records if r["sequence_name"] == sequence]
        for pose, k, view in zip(clip.camera_to_world, clip.intrinsics, views, strict=True):
            by_pytorch3d = _project_pytorch3d(view, w, h, point)
            np.testing.assert_allclose(_project_opencv(pose, k, point), by_pytorch3d, atol=1e-9)
            # The camera looks at the origin: it projects onto the principal point, in front of the camera.
            np.testing.assert_allclose(_project_opencv(pose, k, np.zeros(3)), k[:2, 2], atol=1e-9)
            assert (np.linalg.inv(pose) @ np.array([0, 0, 0, 1.0]))[2] > 0
        depth = clip.load_depth()
        assert depth.shape == (4, h, w) and (depth[:, :2] == 0).all()  # masked rows
        np.testing.assert_allclose(depth, written.depth[clip.id], rtol=1e-6)
        assert [img.shape for img in clip.load_images()] == [(h, w, 3)] * 4


def test_co3d_conversion_formula_by_hand():
    # PyTorch3D identity rotation: camera +X left, +Y up, so OpenCV's camera x is world -x and y is world -y.
    pose, k = co3d.pytorch3d_to_opencv(np.eye(3), [0.0, 0.0, 3.0], [2.0, 2.5], [0.1, -0.2], [100, 200])
    np.testing.assert_allclose(pose, [[-1, 0, 0, 0], [0, -1, 0, 0], [0, 0, 1, -3], [0, 0, 0, 1]])
    # s = min(W, H) / 2 = 50: f = 100, 125; cx = 100 - 5 - 0.5, cy = 50 + 10 - 0.5.
    np.testing.assert_allclose(k, [[100, 0, 94.5], [0, 125, 59.5], [0, 0, 1]])
    _, k_bounds = co3d.pytorch3d_to_opencv(np.eye(3), [0, 0, 3], [2.0, 2.0], [0.0, 0.0], [100, 200],
                                           "ndc_norm_image_bounds")
    np.testing.assert_allclose(k_bounds, [[200, 0, 99.5], [0, 100, 49.5], [0, 0, 1]])


def test_co3d_split_and_frame_draw(tmp_path):
    write_co3d(tmp_path, frames=4)
    test = co3d.load_co3d(tmp_path, "test", frames=None)
    assert [len(c) for c in test] == [3, 4]  # sequence 0's first frame is in "train"
    assert co3d.load_co3d(tmp_path, "train", frames=None, min_frames=1)[0].frame_ids.tolist() == [1]
    drawn = co3d.load_co3d(tmp_path, frames=2, seed=3)
    assert [len(c) for c in drawn] == [2, 2]
    again = co3d.load_co3d(tmp_path, frames=2, seed=3)
    assert [c.frame_ids.tolist() for c in drawn] == [c.frame_ids.tolist() for c in again]  # deterministic
    assert all(np.all(np.diff(c.frame_ids) > 0) for c in drawn)
    assert sample_clip_frames(3, 10, 0).tolist() == [0, 1, 2]


def test_co3d_bad_input_is_one_data_error(tmp_path):
    with pytest.raises(DataError, match="not a Co3Dv2 root"):
        co3d.load_co3d(tmp_path)
    written = write_co3d(tmp_path)
    with pytest.raises(DataError, match="no set list has a 'dev' subset"):
        co3d.load_co3d(tmp_path, "dev")
    path = tmp_path / "apple" / "frame_annotations.jgz"
    records = json.loads(gzip.decompress(path.read_bytes()))
    del records[2]["viewpoint"]["T"]
    path.write_bytes(gzip.compress(json.dumps(records).encode()))
    with pytest.raises(DataError, match=r"frame_annotations.jgz: frame annotation 2: missing 'viewpoint.T'"):
        co3d.load_co3d(tmp_path)
    path.write_bytes(gzip.compress(json.dumps(written.raw["records"]).encode()))
    clip = co3d.load_co3d(tmp_path, frames=None)[0]
    clip.image_paths[1].unlink()
    with pytest.raises(DataError, match=r"frame000003.jpg: image file not found"):
        clip.load_images()
    path.write_bytes(b"not gzip")
    with pytest.raises(DataError, match="not a gzip file"):
        co3d.load_co3d(tmp_path)


def test_re10k_poses_and_intrinsics(tmp_path):
    written = write_re10k(tmp_path)
    w, h = written.size
    clips = re10k.load_re10k(tmp_path, "test", frames=None)
    assert sorted(c.id for c in clips) == sorted(written.camera_to_world)
    point = np.array([0.1, 0.2, 0.3])
    for clip in clips:
        np.testing.assert_allclose(clip.camera_to_world, written.camera_to_world[clip.id], atol=1e-9)
        np.testing.assert_allclose(clip.intrinsics[0], written.intrinsics[clip.id], atol=1e-7)
        assert clip.frame_ids.tolist() == written.frame_ids[clip.id] and clip.image_sizes[0] == (w, h)
        lines = (tmp_path / "test" / f"{clip.id}.txt").read_text().splitlines()[1:]
        for pose, k, text in zip(clip.camera_to_world, clip.intrinsics, lines, strict=True):
            # Normalised intrinsics applied to the camera file's world-to-camera matrix, by hand.
            line = text.split()
            fx, fy, cx, cy = map(float, line[1:5])
            w2c = np.asarray(line[7:], dtype=float).reshape(3, 4)
            cam = w2c @ np.append(point, 1.0)
            by_hand = np.array([fx * cam[0] / cam[2] + cx, fy * cam[1] / cam[2] + cy]) * [w, h] - 0.5
            np.testing.assert_allclose(_project_opencv(pose, k, point), by_hand, atol=1e-6)
    # A frame whose image is missing is left out; a sequence without frames is skipped.
    first = sorted(written.camera_to_world)[0]
    (tmp_path / "frames" / first / f"{written.frame_ids[first][1]}.png").unlink()
    clips = {c.id: c for c in re10k.load_re10k(tmp_path, frames=None)}
    assert len(clips[first]) == 3
    # Frames may also sit in a folder per split.
    (tmp_path / "frames" / "test").mkdir()
    (tmp_path / "frames" / first).rename(tmp_path / "frames" / "test" / first)
    nested = {c.id: c for c in re10k.load_re10k(tmp_path, frames=2, seed=5)}
    assert set(nested) == set(written.camera_to_world) and len(nested[first]) == 2
    assert nested[first].image_paths[0].parent == tmp_path / "frames" / "test" / first


def test_re10k_bad_input_is_one_data_error(tmp_path):
    with pytest.raises(DataError, match="split folder not found"):
        re10k.load_re10k(tmp_path, "test")
    write_re10k(tmp_path, sequences=1)
    path = next((tmp_path / "test").glob("*.txt"))
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], lines[1], " ".join(lines[2].split()[:10])]) + "\n")
    with pytest.raises(DataError, match=r"line 3: expected 19 values"):
        re10k.load_re10k(tmp_path)
    path.write_text("\n".join(lines[1:]) + "\n")
    with pytest.raises(DataError, match="line 1 must be the video URL"):
        re10k.load_re10k(tmp_path)
    path.write_text("\n".join(lines) + "\n")
    for image in (tmp_path / "frames").rglob("*.png"):
        image.unlink()
    with pytest.raises(DataError, match="no sequence of split 'test' has at least 2 extracted frames"):
        re10k.load_re10k(tmp_path)


def test_nyuv2_depth_in_metres_split_and_eigen_crop(tmp_path):
    written = write_nyuv2(tmp_path)
    clips = nyuv2.load_nyuv2(tmp_path)
    assert [c.id for c in clips] == ["00000", "00001", "00002"] and all(len(c) == 1 for c in clips)
    for clip in clips:
        np.testing.assert_allclose(clip.load_depth(), written.depth[clip.id], atol=1e-6)  # .png mm and .npy m
        assert clip.load_depth()[0, 0, 0] == 0.0  # no measurement stays invalid
        # 64x48 is a tenth of 640x480: the Kinect intrinsics scale with it.
        np.testing.assert_allclose(clip.intrinsics[0, 0, 0], 51.88579) and clip.image_sizes == ((64, 48),)
    assert [c.id for c in nyuv2.load_nyuv2(tmp_path, "test")] == ["00001", "00002"]
    full = nyuv2.eigen_crop_mask(480, 640)
    assert full.sum() == (471 - 45) * (601 - 41) and full[45, 41] and not full[44, 41] and not full[45, 601]
    np.testing.assert_allclose(nyuv2.KINECT_COLOR[0, 0], 518.8579)


def test_nyuv2_bad_input_is_one_data_error(tmp_path):
    (tmp_path / nyuv2.LABELED_MAT).write_bytes(b"\x89HDF\r\n")
    with pytest.raises(DataError, match="needs h5py"):
        nyuv2.load_nyuv2(tmp_path)
    write_nyuv2(tmp_path)
    (tmp_path / "depth" / "00001.png").unlink()
    with pytest.raises(DataError, match=r"00001.png: no depth for this image"):
        nyuv2.load_nyuv2(tmp_path)
    with pytest.raises(DataError, match="split list not found"):
        nyuv2.load_nyuv2(tmp_path, "val")
    (tmp_path / "depth" / "00000.png").write_bytes(b"garbage")
    (tmp_path / "depth" / "00001.npy").write_bytes(b"garbage")
    clip = nyuv2.load_nyuv2(tmp_path)[0]
    with pytest.raises(DataError, match="not a readable PNG"):
        clip.load_depth()
