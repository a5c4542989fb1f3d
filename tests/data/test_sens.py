import os
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from sens_bytes import build_sens, intrinsic, jpeg_bytes, pose, ramp_depth, smooth_image  # noqa: E402

from vidllm.data.scannet.sens import SensReader, write_sens  # noqa: E402
from vidllm.errors import DataError  # noqa: E402

CH, CW, DH, DW = 48, 64, 24, 32
K_COLOR = intrinsic(58.0, 57.5, 31.5, 23.5)
K_DEPTH = intrinsic(29.0, 28.75, 15.75, 11.75)


def _frames(n: int):
    colors = [smooth_image(CH, CW, i) for i in range(n)]
    depths = [ramp_depth(DH, DW, i) for i in range(n)]
    poses = np.stack([pose(0.1 * i, -0.2 * i, 1.5, yaw=0.05 * i) for i in range(n)])
    return colors, depths, poses


def test_reads_handmade_file_with_imu_block(tmp_path):
    colors, depths, poses = _frames(4)
    poses[2] = -np.inf
    ext_depth = pose(0.025, 0.0, 0.0)
    path = tmp_path / "hand.sens"
    path.write_bytes(
        build_sens(colors, depths, poses, K_COLOR, K_DEPTH, extrinsic_depth=ext_depth, num_imu_frames=3)
    )
    with SensReader(path) as r:
        assert r.version == 4 and r.sensor_name == "StructureSDK"
        assert (r.color_width, r.color_height, r.depth_width, r.depth_height) == (CW, CH, DW, DH)
        assert r.color_compression == "jpeg" and r.depth_compression == "zlib_ushort"
        assert r.depth_shift == 1000.0 and len(r) == r.num_frames == 4
        np.testing.assert_allclose(r.intrinsic_color, K_COLOR, atol=1e-6)
        np.testing.assert_allclose(r.intrinsic_depth, K_DEPTH, atol=1e-6)
        np.testing.assert_allclose(r.extrinsic_depth, ext_depth, atol=1e-6)
        np.testing.assert_array_equal(r.extrinsic_color, np.eye(4))
        assert r.num_imu_frames == 3
        cams = r.camera_to_world
        assert cams.shape == (4, 4, 4) and cams.dtype == np.float64
        assert np.isneginf(cams[2]).all()
        np.testing.assert_allclose(cams[[0, 1, 3]], poses[[0, 1, 3]], atol=1e-6)
        frame = r.read_frame(3)
        assert (frame.index, frame.timestamp_color, frame.timestamp_depth) == (3, 3000, 3007)
        assert frame.color.shape == (CH, CW, 3) and frame.color.dtype == np.uint8
        np.testing.assert_array_equal(frame.depth, depths[3])
        assert np.abs(frame.color.astype(int) - colors[3]).mean() < 3
        frames = list(r)
        assert [f.index for f in frames] == [0, 1, 2, 3]
        np.testing.assert_array_equal(r.read_depth(-1), depths[3])
        raw = r.raw_frame(1)
        assert raw.color_bytes == jpeg_bytes(colors[1])
        assert zlib.decompress(raw.depth_bytes) == depths[1].astype("<u2").tobytes()
        with pytest.raises(IndexError):
            r.read_frame(4)


def test_reads_file_without_imu_block_and_raw_payloads(tmp_path):
    colors, depths, poses = _frames(2)
    path = tmp_path / "raw.sens"
    path.write_bytes(
        build_sens(colors, depths, poses, K_COLOR, K_DEPTH, color_compression=0,
                   depth_compression=0, num_imu_frames=None, sensor_name=b"")
    )
    with SensReader(path) as r:
        assert r.color_compression == "raw" and r.depth_compression == "raw_ushort"
        assert r.sensor_name == "" and r.trailing_bytes == 0
        np.testing.assert_array_equal(r.read_frame(1).color, colors[1])
        np.testing.assert_array_equal(r.read_frame(1).depth, depths[1])


def test_write_read_round_trip(tmp_path):
    colors, depths, poses = _frames(6)
    poses[4] = -np.inf
    path = tmp_path / "sub" / "scene.sens"
    write_sens(path, colors=colors, depths=depths, camera_to_world=poses,
               intrinsic_color=K_COLOR, intrinsic_depth=K_DEPTH, depth_shift=4000.0,
               timestamps=[10 * i for i in range(6)])
    assert os.listdir(path.parent) == ["scene.sens"]  # no temp file left behind
    with SensReader(path) as r:
        assert r.version == 4 and r.sensor_name == "vidllm-synthetic" and r.depth_shift == 4000.0
        finite = [0, 1, 2, 3, 5]
        assert np.abs(r.camera_to_world[finite] - poses[finite]).max() <= 1e-5
        assert np.isneginf(r.camera_to_world[4]).all()
        np.testing.assert_allclose(r.intrinsic_color, K_COLOR, atol=1e-5)
        np.testing.assert_allclose(r.intrinsic_depth, K_DEPTH, atol=1e-5)
        for i, frame in enumerate(r):
            np.testing.assert_array_equal(frame.depth, depths[i])  # exact uint16
            assert np.abs(frame.color.astype(int) - colors[i]).mean() < 3
            assert frame.timestamp_color == frame.timestamp_depth == 10 * i
        assert r.num_imu_frames == 0 and r.trailing_bytes == 8


def test_writer_output_is_byte_compatible_with_published_layout(tmp_path):
    """Our writer and the independent struct builder agree on every header/frame byte except the
    JPEG payloads (encoder settings), so compare with colour swapped out."""
    colors, depths, poses = _frames(2)
    ours = tmp_path / "ours.sens"
    write_sens(ours, colors=colors, depths=depths, camera_to_world=poses, intrinsic_color=K_COLOR,
               intrinsic_depth=K_DEPTH, sensor_name="StructureSDK",
               timestamps=[0, 1000])
    data = ours.read_bytes()
    (name_len,) = struct.unpack_from("<Q", data, 4)
    header_len = 12 + name_len + 256 + 8 + 16 + 4 + 8
    reference = build_sens(colors, depths, poses, K_COLOR, K_DEPTH, num_imu_frames=0,
                           timestamps=[(0, 0), (1000, 1000)])
    assert data[:header_len] == reference[:header_len]
    assert data[-8:] == reference[-8:] == struct.pack("<Q", 0)


def test_writer_rejects_bad_frames_and_leaves_nothing(tmp_path):
    colors, depths, poses = _frames(2)
    depths[1] = depths[1].astype(np.float32)
    with pytest.raises(ValueError, match="depth frame 1 must be uint16"):
        write_sens(tmp_path / "bad.sens", colors=colors, depths=depths, camera_to_world=poses,
                   intrinsic_color=K_COLOR, intrinsic_depth=K_DEPTH)
    assert os.listdir(tmp_path) == []


@pytest.fixture
def good_bytes():
    colors, depths, poses = _frames(3)
    return build_sens(colors, depths, poses, K_COLOR, K_DEPTH, num_imu_frames=None)


def test_truncated_payload(tmp_path, good_bytes):
    path = tmp_path / "cut.sens"
    path.write_bytes(good_bytes[:-50])
    with pytest.raises(DataError, match=r"cut\.sens: truncated \.sens file: frame 2 payload"):
        SensReader(path)


def test_truncated_header(tmp_path, good_bytes):
    path = tmp_path / "cut.sens"
    path.write_bytes(good_bytes[:100])
    with pytest.raises(DataError, match=r"cut\.sens: truncated \.sens file: calibration"):
        SensReader(path)


def test_wrong_version(tmp_path, good_bytes):
    path = tmp_path / "v5.sens"
    path.write_bytes(struct.pack("<I", 5) + good_bytes[4:])
    with pytest.raises(DataError, match=r"v5\.sens: unsupported \.sens version 5"):
        SensReader(path)


def test_depth_payload_of_wrong_size(tmp_path):
    colors, depths, poses = _frames(3)
    short = zlib.compress(depths[1].astype("<u2").tobytes()[:-2])
    path = tmp_path / "depth.sens"
    path.write_bytes(build_sens(colors, depths, poses, K_COLOR, K_DEPTH, depth_payload_override={1: short}))
    with SensReader(path) as r:
        r.read_frame(0)  # other frames stay readable
        with pytest.raises(DataError, match=r"depth\.sens: frame 1: depth payload decodes to 1534 bytes, "
                                            r"expected 32x24 uint16 = 1536"):
            r.read_frame(1)


def test_corrupt_depth_and_colour_payloads(tmp_path):
    colors, depths, poses = _frames(2)
    path = tmp_path / "bad.sens"
    path.write_bytes(build_sens(colors, depths, poses, K_COLOR, K_DEPTH, depth_payload_override={0: b"xx"}))
    with SensReader(path) as r:
        with pytest.raises(DataError, match=r"bad\.sens: frame 0: corrupt zlib depth"):
            r.read_depth(0)
    data = bytearray(path.read_bytes())
    jpeg_start = data.index(b"\xff\xd8\xff")
    data[jpeg_start: jpeg_start + 3] = b"BAD"
    path.write_bytes(bytes(data))
    with SensReader(path) as r:
        with pytest.raises(DataError, match=r"bad\.sens: frame 0: cannot decode jpeg colour"):
            r.read_color(0)


def test_unsupported_compression_and_missing_file(tmp_path):
    colors, depths, poses = _frames(1)
    path = tmp_path / "occi.sens"
    path.write_bytes(build_sens(colors, depths, poses, K_COLOR, K_DEPTH, depth_compression=2))
    with pytest.raises(DataError, match="unsupported depth compression type 2"):
        SensReader(path)
    with pytest.raises(DataError, match="cannot open"):
        SensReader(tmp_path / "absent.sens")
