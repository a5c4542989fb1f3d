"""A user's own video (.mp4, .mov, .mkv, .webm, …) → N upright frames sampled uniformly over it (PyAV).

The same sampling as ScanNet clips (`vidllm.data.frames.sample_frame_ids`: first and last
frame included, frames repeated when the video is shorter than N), so a model sees a video the
way it saw its training clips. Only the sampled frames are converted to RGB; the video is
demuxed once to count its frames when the container does not say, and decoded once.
Every failure is a DataError naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vidllm.errors import DataError


@dataclass(frozen=True)
class VideoInfo:
    frames: int  # decodable video frames (from the container, else by counting packets)
    width: int  # as coded; frames are returned upright (a stored display rotation is applied)
    height: int
    fps: float | None
    codec: str


def _open(path: Path):
    import av  # PyAV: only the video commands need it

    if not path.is_file():
        raise DataError(path, "no such video file")
    try:
        container = av.open(str(path))
    except Exception as exc:  # av.error.InvalidDataError and friends
        raise DataError(path, f"not a readable video ({type(exc).__name__}: {exc})") from None
    if not container.streams.video:
        container.close()
        raise DataError(path, "the file has no video stream")
    return container


def _count_frames(container, stream) -> int:
    if stream.frames and stream.frames > 0:
        return int(stream.frames)
    count = sum(1 for packet in container.demux(stream) if packet.size > 0)  # no decoding
    container.seek(0)
    return count


def probe_video(path: str | Path) -> VideoInfo:
    """Frame count, size, frame rate and codec of the first video stream."""
    path = Path(path)
    container = _open(path)
    try:
        stream = container.streams.video[0]
        frames = _count_frames(container, stream)
        rate = stream.average_rate
        return VideoInfo(frames, int(stream.codec_context.width), int(stream.codec_context.height),
                         float(rate) if rate else None, stream.codec_context.name)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(path, f"cannot read the video stream ({type(exc).__name__}: {exc})") from None
    finally:
        container.close()


def _upright(frame) -> np.ndarray:
    """RGB uint8 `[H,W,3]` as a player shows it: phone videos store a display rotation beside the pixels."""
    image = frame.to_ndarray(format="rgb24")
    quarter_turns = round((frame.rotation or 0) / 90) % 4  # counter-clockwise, as np.rot90 turns
    return np.ascontiguousarray(np.rot90(image, quarter_turns)) if quarter_turns else image


def _decode_selected(path: Path, wanted: set[int]) -> tuple[dict[int, np.ndarray], int]:
    """RGB uint8 `[H,W,3]` of the frames whose index is in `wanted`, and how many frames decoded."""
    container = _open(path)
    kept: dict[int, np.ndarray] = {}
    index = -1
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # codec threads; the frames come back in order
        last = max(wanted)
        for index, frame in enumerate(container.decode(stream)):
            if index in wanted:
                kept[index] = _upright(frame)
            if index >= last:
                break
    except Exception as exc:
        if index < 0:
            raise DataError(path, f"no frame could be decoded ({type(exc).__name__}: {exc})") from None
        # A damaged tail: keep what decoded; the caller re-samples over it.
    finally:
        container.close()
    return kept, index + 1


def read_video_frames(path: str | Path, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """`num_frames` RGB frames uniformly over the video → (uint8 `[S,H,W,3]`, source frame indices `[S]`)."""
    from vidllm.data.frames import sample_frame_ids

    path = Path(path)
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    total = probe_video(path).frames
    if total == 0:
        raise DataError(path, "the video stream has no frames")
    ids = sample_frame_ids(np.arange(total), num_frames)
    wanted = set(ids.tolist())
    kept, decoded = _decode_selected(path, wanted)
    if len(kept) < len(wanted):
        # Fewer frames decode than the container announced (a truncated file): sample over those.
        if decoded == 0:
            raise DataError(path, "no frame could be decoded")
        ids = sample_frame_ids(np.arange(decoded), num_frames)
        wanted = set(ids.tolist())
        kept, _ = _decode_selected(path, wanted)
        if len(kept) < len(wanted):
            raise DataError(path, f"frames stop decoding before frame {decoded} of {total}")
    shapes = {kept[i].shape for i in kept}
    if len(shapes) != 1:
        raise DataError(path, f"frame size changes within the video ({sorted(shapes)})")
    return np.stack([kept[i] for i in ids.tolist()]), ids


def write_video(path: str | Path, frames: np.ndarray, fps: float = 10.0, codec: str = "libx264",
                display_rotation: int = 0) -> Path:
    """uint8 RGB `[S,H,W,3]` → a video file (H.264 in .mp4 by default), written under a temporary name
    and renamed. Odd sizes lose their last row/column (4:2:0 chroma needs even sizes).
    `display_rotation` (degrees counter-clockwise) is stored as players expect it, as phones do."""
    from fractions import Fraction

    import av

    from vidllm.artifacts.files import atomic_path

    path = Path(path)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise ValueError(f"frames must be uint8 [S,H,W,3] with S >= 1, got {frames.dtype} {frames.shape}")
    height, width = frames.shape[1] // 2 * 2, frames.shape[2] // 2 * 2
    if height == 0 or width == 0:
        raise ValueError(f"frames of {frames.shape[2]}x{frames.shape[1]} are too small for a video")
    with atomic_path(path, keep_suffix=True) as tmp:  # PyAV picks the container from the suffix
        with av.open(tmp, "w") as container:
            stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1000))
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            if display_rotation:
                stream.set_display_rotation(display_rotation)
            for frame in frames:
                image = np.ascontiguousarray(frame[:height, :width])
                for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():  # flush the encoder
                container.mux(packet)
    return path
