"""Own-video frames: uniform sampling over the video (as for ScanNet clips), containers with and
without a frame count, and a clear error naming the file for anything that does not decode."""

from __future__ import annotations

import numpy as np
import pytest

from tests.video_files import grey_level, write_grey_video
from vidllm.data.frames import sample_frame_ids
from vidllm.data.video import probe_video, read_video_frames, write_video
from vidllm.errors import DataError


@pytest.fixture(scope="module")
def mp4(tmp_path_factory):
    return write_grey_video(tmp_path_factory.mktemp("video") / "room.mp4", frames=30)


def test_probe_reads_count_size_and_rate(mp4):
    info = probe_video(mp4)
    assert (info.frames, info.width, info.height) == (30, 96, 64)
    assert info.fps == pytest.approx(10.0) and info.codec == "h264"


@pytest.mark.parametrize("num_frames", [1, 5, 30])
def test_frames_are_sampled_uniformly_over_the_video(mp4, num_frames):
    frames, ids = read_video_frames(mp4, num_frames)
    assert frames.shape == (num_frames, 64, 96, 3) and frames.dtype == np.uint8
    np.testing.assert_array_equal(ids, sample_frame_ids(np.arange(30), num_frames))
    assert ids[0] == 0 and (num_frames == 1 or ids[-1] == 29)
    for frame, i in zip(frames, ids):  # each decoded frame is the source frame it claims to be
        assert abs(float(frame.mean()) - grey_level(int(i))) < 3.0, i


def test_a_short_video_repeats_frames(mp4):
    frames, ids = read_video_frames(mp4, 45)
    assert len(frames) == 45 and set(ids.tolist()) == set(range(30)) and np.all(np.diff(ids) >= 0)


def test_container_without_a_frame_count_is_counted(tmp_path):
    mkv = write_grey_video(tmp_path / "room.mkv", frames=12, codec="mpeg4")
    assert probe_video(mkv).frames == 12
    frames, ids = read_video_frames(mkv, 4)
    assert ids.tolist() == sample_frame_ids(np.arange(12), 4).tolist()
    assert all(abs(float(f.mean()) - grey_level(int(i))) < 6.0 for f, i in zip(frames, ids))  # mpeg4 at its default rate


def test_errors_name_the_file(tmp_path, mp4):
    cases = {
        tmp_path / "missing.mp4": "no such video file",
        tmp_path / "notes.mp4": "not a readable video",
        tmp_path / "half.mp4": "not a readable video",  # cut before the index (moov) at the end
    }
    (tmp_path / "notes.mp4").write_text("this is not a video\n")
    data = mp4.read_bytes()
    (tmp_path / "half.mp4").write_bytes(data[: len(data) // 2])
    for path, problem in cases.items():
        with pytest.raises(DataError) as err:
            read_video_frames(path, 4)
        assert str(path) in str(err.value) and problem in str(err.value), str(err.value)


def test_a_stored_display_rotation_is_applied(tmp_path):
    """Phones store portrait video as rotated landscape pixels plus a display rotation: frames come back upright."""
    image = np.zeros((64, 96, 3), np.uint8)
    image[:32, :48] = 255  # a white top-left quadrant marks the orientation
    path = write_video(tmp_path / "portrait.mp4", np.stack([image] * 3), display_rotation=90)
    frames, _ = read_video_frames(path, 2)
    assert frames.shape == (2, 96, 64, 3)  # shown 90 degrees counter-clockwise: portrait
    expected = np.rot90(image)
    assert np.abs(frames[0].astype(int) - expected.astype(int)).mean() < 4.0
    assert frames[0][80:, :16].mean() > 200 and frames[0][:16, 48:].mean() < 50  # the quadrant moved to bottom-left


def test_a_truncated_video_is_sampled_over_the_frames_that_decode(tmp_path):
    """The index (moov, written first with faststart) announces 30 frames but the file stops early."""
    import av

    rng = np.random.default_rng(0)

    def level(i: int) -> int:  # mid-grey levels, so the texture below never clips
        return 60 + 4 * i

    path = tmp_path / "cut.mp4"
    with av.open(str(path), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        for i in range(30):  # textured frames: each takes its share of the file's bytes
            image = np.clip(level(i) + rng.integers(-20, 21, (64, 96, 3)), 0, 255).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.6)])
    assert probe_video(path).frames == 30
    frames, ids = read_video_frames(path, 4)
    assert len(frames) == 4 and ids[0] == 0 and 0 < ids[-1] < 29  # spread over what decodes, not over 30
    for frame, i in zip(frames, ids):
        assert abs(float(frame.mean()) - level(int(i))) < 3.0, i
