"""ScanNet `.sens` (version 4) reader and writer.

Layout (little-endian; matrices are float32[16], row-major), after ScanNet's
`SensReader/c++/src/sensorData.h`:

    header  version u32 (=4) | strlen u64 | sensor_name | intrinsic_color, extrinsic_color,
            intrinsic_depth, extrinsic_depth (4 x f32[16]) | color_compression i32 |
            depth_compression i32 | color_width, color_height, depth_width, depth_height (u32) |
            depth_shift f32 | num_frames u64
    frame   camera_to_world f32[16] | timestamp_color u64 | timestamp_depth u64 |
            color_size u64 | depth_size u64 | color bytes | depth bytes
    tail    num_imu_frames u64 + 128 B per IMU frame (written by the C++ tools; ignored here)

The reader builds a frame index by reading each 96-byte frame header and seeking past the
payloads, so opening a file and reading all poses never touches the image data.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from vidllm.artifacts.files import atomic_file
from vidllm.errors import DataError

SENS_VERSION = 4

COLOR_COMPRESSION = {-1: "unknown", 0: "raw", 1: "png", 2: "jpeg"}
DEPTH_COMPRESSION = {-1: "unknown", 0: "raw_ushort", 1: "zlib_ushort", 2: "occi_ushort"}

_MATRICES = struct.Struct("<64f")  # intrinsic/extrinsic colour, intrinsic/extrinsic depth
_HEADER_TAIL = struct.Struct("<ii4IfQ")  # compressions, sizes, depth_shift, num_frames
_FRAME_HEADER = struct.Struct("<16f4Q")  # pose, timestamps, payload sizes
_IMU_FRAME_BYTES = 5 * 3 * 8 + 8


@dataclass
class SensFrame:
    """One decoded frame. `depth` is raw uint16 (metres = depth / depth_shift, 0 = invalid)."""

    index: int
    camera_to_world: np.ndarray  # [4,4] float64; all -inf for frames without tracking
    timestamp_color: int
    timestamp_depth: int
    color: np.ndarray  # uint8 [H,W,3]
    depth: np.ndarray  # uint16 [h,w]


@dataclass
class RawSensFrame:
    """One frame with its payloads left compressed exactly as stored."""

    index: int
    camera_to_world: np.ndarray  # [4,4] float64
    timestamp_color: int
    timestamp_depth: int
    color_bytes: bytes
    depth_bytes: bytes


class SensReader:
    """Random-access reader for a ScanNet `.sens` v4 file.

    >>> with SensReader("scene0000_00.sens") as reader:
    ...     poses = reader.camera_to_world          # [N,4,4], no image decoding
    ...     frame = reader.read_frame(10)           # colour uint8 [H,W,3], depth uint16 [h,w]
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            self._file = open(self.path, "rb")
        except OSError as exc:
            raise DataError(self.path, f"cannot open .sens file ({exc.strerror})") from None
        try:
            self._file_size = os.fstat(self._file.fileno()).st_size
            self._read_header()
            self._index_frames()
        except BaseException:
            self._file.close()
            raise

    # ------------------------------------------------------------------ parsing
    def _read_exact(self, n: int, what: str) -> bytes:
        data = self._file.read(n)
        if len(data) != n:
            raise DataError(
                self.path,
                f"truncated .sens file: {what} needs {n} bytes at offset "
                f"{self._file.tell() - len(data)}, only {len(data)} left",
            )
        return data

    def _read_header(self) -> None:
        (self.version,) = struct.unpack("<I", self._read_exact(4, "version"))
        if self.version != SENS_VERSION:
            raise DataError(
                self.path, f"unsupported .sens version {self.version} (only version 4 is supported)"
            )
        (name_len,) = struct.unpack("<Q", self._read_exact(8, "sensor name length"))
        if name_len > self._file_size - 12:
            raise DataError(
                self.path,
                f"truncated or corrupt .sens header: sensor name length {name_len} exceeds file size",
            )
        self.sensor_name = self._read_exact(name_len, "sensor name").decode("utf-8", "replace")
        m = np.array(_MATRICES.unpack(self._read_exact(_MATRICES.size, "calibration")), np.float64)
        m = m.reshape(4, 4, 4)
        self.intrinsic_color, self.extrinsic_color = m[0], m[1]
        self.intrinsic_depth, self.extrinsic_depth = m[2], m[3]
        (
            self.color_compression_type,
            self.depth_compression_type,
            self.color_width,
            self.color_height,
            self.depth_width,
            self.depth_height,
            self.depth_shift,
            self.num_frames,
        ) = _HEADER_TAIL.unpack(self._read_exact(_HEADER_TAIL.size, "header"))
        self.depth_shift = float(self.depth_shift)
        self.color_compression = COLOR_COMPRESSION.get(self.color_compression_type, "invalid")
        self.depth_compression = DEPTH_COMPRESSION.get(self.depth_compression_type, "invalid")
        if self.color_compression not in ("raw", "png", "jpeg"):
            raise DataError(
                self.path,
                f"unsupported colour compression type {self.color_compression_type} "
                f"({self.color_compression}); expected 0 raw, 1 png or 2 jpeg",
            )
        if self.depth_compression not in ("raw_ushort", "zlib_ushort"):
            raise DataError(
                self.path,
                f"unsupported depth compression type {self.depth_compression_type} "
                f"({self.depth_compression}); expected 0 raw_ushort or 1 zlib_ushort",
            )
        if min(self.color_width, self.color_height, self.depth_width, self.depth_height) == 0:
            raise DataError(
                self.path,
                f"invalid image size in header: colour {self.color_width}x{self.color_height}, "
                f"depth {self.depth_width}x{self.depth_height}",
            )
        if not (np.isfinite(self.depth_shift) and self.depth_shift > 0):
            raise DataError(self.path, f"invalid depth_shift {self.depth_shift} in header")
        remaining = self._file_size - self._file.tell()
        if self.num_frames * _FRAME_HEADER.size > remaining:
            raise DataError(
                self.path,
                f"truncated .sens file: header declares {self.num_frames} frames but only "
                f"{remaining} bytes follow the header",
            )

    def _index_frames(self) -> None:
        n = self.num_frames
        self._poses = np.empty((n, 4, 4), np.float64)
        self._timestamps = np.empty((n, 2), np.uint64)
        self._offsets = np.empty(n, np.int64)  # start of colour payload
        self._sizes = np.empty((n, 2), np.int64)  # colour, depth payload bytes
        f = self._file
        pos = f.tell()
        for i in range(n):
            head = f.read(_FRAME_HEADER.size)
            if len(head) != _FRAME_HEADER.size:
                raise DataError(
                    self.path,
                    f"truncated .sens file: frame {i} header at offset {pos} is incomplete "
                    f"(header declares {n} frames)",
                )
            values = _FRAME_HEADER.unpack(head)
            color_size, depth_size = values[18], values[19]
            pos += _FRAME_HEADER.size
            end = pos + color_size + depth_size
            if end > self._file_size:
                raise DataError(
                    self.path,
                    f"truncated .sens file: frame {i} payload ({color_size} colour + {depth_size} "
                    f"depth bytes from offset {pos}) runs past the end of the file "
                    f"({self._file_size} bytes)",
                )
            self._poses[i] = np.asarray(values[:16], np.float64).reshape(4, 4)
            self._timestamps[i] = values[16:18]
            self._offsets[i] = pos
            self._sizes[i] = (color_size, depth_size)
            pos = end
            f.seek(pos)
        # Anything after the frames is the IMU block (or padding); its count is checked only
        # loosely, since the Python tools never wrote it and files in the wild may lack it.
        self.trailing_bytes = self._file_size - pos
        self.num_imu_frames = 0
        if self.trailing_bytes >= 8:
            (count,) = struct.unpack("<Q", f.read(8))
            if 8 + count * _IMU_FRAME_BYTES <= self.trailing_bytes:
                self.num_imu_frames = int(count)

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return self.num_frames

    def __enter__(self) -> SensReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def __repr__(self) -> str:
        return (
            f"SensReader({str(self.path)!r}, frames={self.num_frames}, "
            f"colour={self.color_width}x{self.color_height} {self.color_compression}, "
            f"depth={self.depth_width}x{self.depth_height} {self.depth_compression})"
        )

    @property
    def camera_to_world(self) -> np.ndarray:
        """All frame poses, [N,4,4] float64 (invalid frames are all -inf, as stored)."""
        return self._poses.copy()

    @property
    def timestamps(self) -> np.ndarray:
        """[N,2] uint64 (colour, depth) timestamps in microseconds."""
        return self._timestamps.copy()

    def _check_index(self, i: int) -> int:
        i = int(i)
        if i < 0:
            i += self.num_frames
        if not 0 <= i < self.num_frames:
            raise IndexError(f"{self.path}: frame {i} out of range (file has {self.num_frames})")
        return i

    def _payloads(self, i: int) -> tuple[bytes, bytes]:
        """(colour, depth) payloads of frame i; two reads so neither needs a slicing copy
        (BytesIO shares a `bytes` buffer but copies any other buffer)."""
        color_size, depth_size = (int(s) for s in self._sizes[i])
        self._file.seek(int(self._offsets[i]))
        color = self._file.read(color_size)
        depth = self._file.read(depth_size)
        if len(color) != color_size or len(depth) != depth_size:  # file shrank after indexing
            raise DataError(self.path, f"truncated .sens file: frame {i} payload is incomplete")
        return color, depth

    def raw_frame(self, i: int) -> RawSensFrame:
        i = self._check_index(i)
        color, depth = self._payloads(i)
        ts = self._timestamps[i]
        return RawSensFrame(
            index=i,
            camera_to_world=self._poses[i].copy(),
            timestamp_color=int(ts[0]),
            timestamp_depth=int(ts[1]),
            color_bytes=color,
            depth_bytes=depth,
        )

    def read_frame(self, i: int) -> SensFrame:
        i = self._check_index(i)
        color, depth = self._payloads(i)
        ts = self._timestamps[i]
        return SensFrame(
            index=i,
            camera_to_world=self._poses[i].copy(),
            timestamp_color=int(ts[0]),
            timestamp_depth=int(ts[1]),
            color=self.decode_color(color, i),
            depth=self.decode_depth(depth, i),
        )

    def read_color(self, i: int) -> np.ndarray:
        """Colour only (skips reading the depth payload); uint8 [H,W,3]."""
        i = self._check_index(i)
        self._file.seek(int(self._offsets[i]))
        return self.decode_color(self._file.read(int(self._sizes[i, 0])), i)

    def read_depth(self, i: int) -> np.ndarray:
        """Raw depth only (skips reading the colour payload); uint16 [h,w]."""
        i = self._check_index(i)
        self._file.seek(int(self._offsets[i] + self._sizes[i, 0]))
        return self.decode_depth(self._file.read(int(self._sizes[i, 1])), i)

    def __iter__(self) -> Iterator[SensFrame]:
        for i in range(self.num_frames):
            yield self.read_frame(i)

    # ------------------------------------------------------------------ decoding
    def decode_color(self, data: bytes, index: int) -> np.ndarray:
        """Colour payload -> uint8 [H,W,3]."""
        w, h = self.color_width, self.color_height
        if self.color_compression == "raw":
            if len(data) != w * h * 3:
                raise DataError(
                    self.path,
                    f"frame {index}: raw colour payload has {len(data)} bytes, "
                    f"expected {w}x{h}x3 = {w * h * 3}",
                )
            return np.frombuffer(data, np.uint8).reshape(h, w, 3).copy()
        try:
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                if img.mode != "RGB":
                    img = img.convert("RGB")
                color = np.asarray(img)
        except (OSError, SyntaxError, ValueError) as exc:
            raise DataError(
                self.path, f"frame {index}: cannot decode {self.color_compression} colour ({exc})"
            ) from None
        if color.shape != (h, w, 3):
            raise DataError(
                self.path,
                f"frame {index}: colour image is {color.shape[1]}x{color.shape[0]}, "
                f"header says {w}x{h}",
            )
        return color

    def decode_depth(self, data: bytes, index: int) -> np.ndarray:
        """Depth payload -> raw uint16 [h,w]."""
        w, h = self.depth_width, self.depth_height
        if self.depth_compression == "zlib_ushort":
            try:
                data = zlib.decompress(data)
            except zlib.error as exc:
                raise DataError(self.path, f"frame {index}: corrupt zlib depth ({exc})") from None
        if len(data) != w * h * 2:
            raise DataError(
                self.path,
                f"frame {index}: depth payload decodes to {len(data)} bytes, "
                f"expected {w}x{h} uint16 = {w * h * 2}",
            )
        # One copy into a bytearray so callers get a writable array.
        return np.frombuffer(bytearray(data), dtype="<u2").reshape(h, w).astype(np.uint16, copy=False)


def _as_matrix(value: np.ndarray, name: str, shape: tuple[int, ...]) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape != shape:
        raise ValueError(f"write_sens: {name} must have shape {shape}, got {arr.shape}")
    return arr


def write_sens(
    path: str | os.PathLike,
    *,
    colors: Sequence[np.ndarray],
    depths: Sequence[np.ndarray],
    camera_to_world: np.ndarray,
    intrinsic_color: np.ndarray,
    intrinsic_depth: np.ndarray,
    depth_shift: float = 1000.0,
    sensor_name: str = "vidllm-synthetic",
    jpeg_quality: int = 95,
    timestamps: Sequence[int] | None = None,
) -> None:
    """Write a ScanNet `.sens` v4 file: JPEG colour, zlib_ushort depth, identity extrinsics,
    and an empty IMU block (as ScanNet's C++ writer does).

    colors: N x uint8 [H,W,3]; depths: N x uint16 [h,w] in 1/depth_shift metres;
    camera_to_world: [N,4,4] (non-finite rows mark frames without tracking);
    timestamps: N microsecond values used for colour and depth (default 30 fps from 0).
    The file appears atomically (vidllm.artifacts.files.atomic_file).
    """
    path = Path(path)
    n = len(colors)
    if len(depths) != n:
        raise ValueError(f"write_sens: {n} colour frames but {len(depths)} depth frames")
    poses = np.asarray(camera_to_world, dtype=np.float64)
    if poses.shape != (n, 4, 4):
        raise ValueError(f"write_sens: camera_to_world must be [{n},4,4], got {poses.shape}")
    k_color = _as_matrix(intrinsic_color, "intrinsic_color", (4, 4))
    k_depth = _as_matrix(intrinsic_depth, "intrinsic_depth", (4, 4))
    if timestamps is None:
        timestamps = [i * 33_333 for i in range(n)]
    if len(timestamps) != n:
        raise ValueError(f"write_sens: {len(timestamps)} timestamps for {n} frames")
    if n == 0:
        raise ValueError("write_sens: at least one frame is required")
    color_h, color_w = np.asarray(colors[0]).shape[:2]
    depth_h, depth_w = np.asarray(depths[0]).shape[:2]

    eye = np.eye(4)
    name = sensor_name.encode("utf-8")
    header = b"".join(
        [
            struct.pack("<IQ", SENS_VERSION, len(name)),
            name,
            _MATRICES.pack(*np.concatenate([k_color, eye, k_depth, eye]).ravel()),
            _HEADER_TAIL.pack(2, 1, color_w, color_h, depth_w, depth_h, depth_shift, n),
        ]
    )
    with atomic_file(path) as f:
        f.write(header)
        for i in range(n):
            color = np.asarray(colors[i])
            depth = np.asarray(depths[i])
            if color.shape != (color_h, color_w, 3) or color.dtype != np.uint8:
                raise ValueError(
                    f"write_sens: colour frame {i} must be uint8 [{color_h},{color_w},3], "
                    f"got {color.dtype} {list(color.shape)}"
                )
            if depth.shape != (depth_h, depth_w) or depth.dtype != np.uint16:
                raise ValueError(
                    f"write_sens: depth frame {i} must be uint16 [{depth_h},{depth_w}], "
                    f"got {depth.dtype} {list(depth.shape)}"
                )
            jpeg = io.BytesIO()
            Image.fromarray(color, "RGB").save(jpeg, format="JPEG", quality=jpeg_quality)
            color_bytes = jpeg.getvalue()
            depth_bytes = zlib.compress(depth.astype("<u2", copy=False).tobytes(), 3)
            ts = int(timestamps[i])
            f.write(
                _FRAME_HEADER.pack(
                    *poses[i].ravel(), ts, ts, len(color_bytes), len(depth_bytes)
                )
            )
            f.write(color_bytes)
            f.write(depth_bytes)
        f.write(struct.pack("<Q", 0))  # num_imu_frames
