"""`vidllm serve`: a model directory behind HTTP, as a Ray Serve deployment (the only module that imports Ray Serve).

Endpoints (JSON in and out; every error is `{"error": message, "status": code}`):

    POST /videos       upload a video → {video_id, frames, image_size, cache}
    POST /ask          {video_id, question} → {answer, ...}
    POST /ground       {video_id, phrase} → {boxes [n, 6], text, ...}
    POST /reconstruct  {video_id, stride?, max_points?, format?: "json" | "ply"} → points, colors, poses
    GET  /stats        vision cache hits / misses / entries, limits, model settings

A video goes in as the raw request body (fields then in the query string: `POST /ask?question=…`),
or as a multipart form (a file field plus text fields); or a JSON body names a `video_id`
returned before. The video_id is the sha256 of the video's bytes: a video uploaded once is decoded
and run through the vision pass once (`VideoModel.encode`), and later questions about it run only
the LLM, while its vision state stays in a bounded LRU cache keyed by (digest, frames, short side).

Limits (413 upload or video too large, 400 bad video or empty text, 404 unknown video_id,
504 past the per-request timeout; a client may ask for a shorter `timeout_s`). Model work runs one
request at a time on the replica (two cores serve one model best in turn); a request that times
out still finishes its vision pass in the background, so a retry finds it cached.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from ray import serve
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from vidllm.errors import DataError, VidLLMError

logger = logging.getLogger("vidllm.serve")

APP_NAME = "vidllm"
_DIGEST = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class ServeSettings:
    """What the deployment loads and the limits it enforces (`vidllm serve --help` explains each)."""

    model_dir: str
    frames: int | None = None  # None: the model's config
    short_side: int | None = None
    device: str = "auto"
    max_new_tokens: int = 32
    cache_size: int = 16  # vision states kept (LRU by count)
    max_upload_bytes: int = 200 * 1024 * 1024
    max_video_frames: int = 36_000  # decoded frames of the source video (all are decoded to sample)
    max_video_seconds: float = 1200.0  # source duration (frames / frame rate)
    timeout_s: float = 60.0  # per request, from arrival to response
    max_points: int = 200_000  # reconstruct JSON point cap (evenly thinned beyond it; PLY has all)

    def __post_init__(self):
        for name in ("max_new_tokens", "cache_size", "max_upload_bytes", "max_video_frames", "max_points"):
            if getattr(self, name) < 1:
                raise VidLLMError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_video_seconds", "timeout_s"):
            if not getattr(self, name) > 0:
                raise VidLLMError(f"{name} must be > 0, got {getattr(self, name)}")


class ServeError(Exception):
    """A client error with its HTTP status; the message is what the client reads."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status)


class VisionCache:
    """Vision states by key, least recently used evicted beyond `capacity` entries; counts hits and misses."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._entries: OrderedDict[tuple, Any] = OrderedDict()
        self.hits = self.misses = self.evictions = 0

    def get(self, key: tuple):
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
            self.hits += 1
        return entry

    def put(self, key: tuple, entry) -> None:
        self.misses += 1
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
            self.evictions += 1

    def stats(self) -> dict:
        return {"hits": self.hits, "misses": self.misses, "entries": len(self._entries),
                "capacity": self.capacity, "evictions": self.evictions}


class VideoService:
    """The model, its vision cache and the request limits, independent of the HTTP layer. Thread-safe:
    one lock serialises model work (and with it every cache update)."""

    def __init__(self, settings: ServeSettings):
        from vidllm.inference import VideoModel

        self.settings = settings
        self.model = VideoModel.load(settings.model_dir, frames=settings.frames, short_side=settings.short_side,
                                     device=settings.device, max_new_tokens=settings.max_new_tokens)
        self.cache = VisionCache(settings.cache_size)
        self.unknown = 0  # video_ids asked for that were never uploaded or were evicted
        self._lock = threading.Lock()

    def key(self, digest: str) -> tuple:
        return digest, self.model.frames, self.model.short_side

    def stats(self) -> dict:
        with self._lock:
            cache = {**self.cache.stats(), "unknown_video_ids": self.unknown}
        limits = {k: v for k, v in asdict(self.settings).items() if k.startswith("max_") or k == "timeout_s"}
        return {"cache": cache, "limits": limits,
                "model": {"dir": self.settings.model_dir, "frames": self.model.frames,
                          "short_side": self.model.short_side, "device": str(self.model.device)}}

    def with_video(self, digest: str, data: bytes | None, work):
        """`work(clip, vision_state)` on the cached vision state of `digest`, made from `data`
        (the video's bytes) on a miss. Returns (work's result, the clip, "hit" | "miss")."""
        with self._lock:
            entry = self.cache.get(self.key(digest))
            status = "hit"
            if entry is None:
                if data is None:
                    self.unknown += 1
                    raise ServeError(404, f"unknown video_id {digest}: never uploaded, or evicted from the "
                                          f"cache of {self.cache.capacity} videos; upload the video again")
                entry = self._encode(digest, data)
                self.cache.put(self.key(digest), entry)
                status = "miss"
            clip, vision = entry
            return work(clip, vision), clip, status

    def _encode(self, digest: str, data: bytes):
        from vidllm.data.video import probe_video

        limits = self.settings
        with tempfile.TemporaryDirectory(prefix="vidllm-serve-") as tmp:
            path = Path(tmp) / "upload"
            path.write_bytes(data)  # a scratch input for the decoder, deleted with the directory
            try:
                info = probe_video(path)
                if info.frames > limits.max_video_frames:
                    raise ServeError(413, f"the video has {info.frames} frames; this server takes at most "
                                          f"{limits.max_video_frames}")
                seconds = info.frames / info.fps if info.fps else None
                if seconds is not None and seconds > limits.max_video_seconds:
                    raise ServeError(413, f"the video lasts {seconds:.1f} s; this server takes at most "
                                          f"{limits.max_video_seconds:g} s")
                clip = self.model.load_video(path)
            except DataError as exc:  # its path is the scratch file: name the problem only
                raise ServeError(400, f"bad video: {exc.problem.replace(str(path), 'upload')}") from None
        clip = replace(clip, path=Path(digest))
        return clip, self.model.encode(clip)


# ---------------------------------------------------------------------------------------------- HTTP

app = FastAPI(title="vidllm serve", description=__doc__)


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return _error(exc.status_code, str(exc.detail))  # unknown routes, wrong methods: JSON like the rest


class _Upload:
    """A parsed request: text fields (query string, JSON body or form fields) and the video's bytes, if sent."""

    def __init__(self, fields: dict[str, Any], video: bytes | None):
        self.fields = fields
        self.video = video

    def text(self, name: str) -> str:
        value = self.fields.get(name)
        if not isinstance(value, str) or not value.strip():
            raise ServeError(400, f"the {name} is empty" if value is None or isinstance(value, str)
                             else f"{name} must be a string")
        return value

    def number(self, name: str, default, kind=int, low: float = 0):
        value = self.fields.get(name, default)
        try:
            number = kind(value)
        except (TypeError, ValueError):
            raise ServeError(400, f"{name} must be a number, got {value!r}") from None
        if not number > low:
            raise ServeError(400, f"{name} must be > {low:g}, got {value!r}")
        return number


@serve.deployment(max_ongoing_requests=32, ray_actor_options={"num_cpus": 1})
@serve.ingress(app)
class VideoServer:
    def __init__(self, settings: ServeSettings):
        self.service = VideoService(settings)
        self.settings = settings

    # -------------------------------------------------------------- request plumbing

    async def _read(self, request: Request) -> _Upload:
        limit = self.settings.max_upload_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise ServeError(413, f"the upload is {int(declared)} bytes; this server takes at most {limit}")
        chunks, size = [], 0
        async for chunk in request.stream():  # also bounds bodies sent without a length (chunked)
            size += len(chunk)
            if size > limit:
                raise ServeError(413, f"the upload exceeds {limit} bytes, this server's limit")
            chunks.append(chunk)
        body = b"".join(chunks)
        fields: dict[str, Any] = dict(request.query_params)
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "application/json":
            try:
                parsed = json.loads(body or b"{}")
            except ValueError as exc:
                raise ServeError(400, f"the body is not valid JSON ({exc})") from None
            if not isinstance(parsed, dict):
                raise ServeError(400, "the JSON body must be an object")
            return _Upload({**fields, **parsed}, None)
        if kind == "multipart/form-data":
            return await self._read_form(request, body, fields)
        return _Upload(fields, body or None)  # any other type: the body is the video itself

    @staticmethod
    async def _read_form(request: Request, body: bytes, fields: dict[str, Any]) -> _Upload:
        replayed = False

        async def receive() -> dict:  # the body was read (and bounded) already; hand it to the parser
            nonlocal replayed
            if replayed:
                return {"type": "http.disconnect"}
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        video = None
        try:
            async with Request(request.scope, receive).form(max_files=1, max_fields=64) as form:
                for name, value in form.multi_items():
                    if isinstance(value, UploadFile):
                        video = await value.read()
                    else:
                        fields[name] = value
        except StarletteHTTPException as exc:  # malformed multipart, too many parts
            raise ServeError(400, f"bad multipart form: {exc.detail}") from None
        return _Upload(fields, video or None)

    def _digest(self, upload: _Upload) -> str:
        if upload.video is not None:
            return hashlib.sha256(upload.video).hexdigest()
        video_id = upload.fields.get("video_id")
        if not isinstance(video_id, str) or not video_id.strip():
            raise ServeError(400, "send a video (request body or multipart file) or a video_id")
        video_id = video_id.strip().lower()
        if not _DIGEST.match(video_id):
            raise ServeError(404, f"unknown video_id {video_id!r} (video ids are 64 hex digits)")
        return video_id

    async def _serve(self, request: Request, handler) -> Response:
        """Parse the request, run `handler(upload, deadline)` within the timeout, map failures to JSON."""
        start = time.monotonic()
        deadline = start + self.settings.timeout_s
        try:
            upload = await asyncio.wait_for(self._read(request), self.settings.timeout_s)
            if "timeout_s" in upload.fields:  # a client may want a shorter deadline, never a longer one
                deadline = min(deadline, start + upload.number("timeout_s", None, float))
            return await handler(upload, deadline)
        except ServeError as exc:
            return _error(exc.status, exc.message)
        except (asyncio.TimeoutError, TimeoutError):
            return _error(504, f"the request took longer than its {deadline - start:g} s timeout")
        except VidLLMError as exc:
            return _error(400, str(exc))
        except Exception:
            logger.exception("request %s %s failed", request.method, request.url.path)
            return _error(500, "internal error (the server log has the details)")

    async def _on_video(self, upload: _Upload, deadline: float, work):
        """`work(clip, vision)` in a worker thread on the request's video, within `deadline`."""
        digest = self._digest(upload)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise asyncio.TimeoutError
        # The thread runs on after a timeout (torch cannot be interrupted); its vision pass is then cached.
        result, clip, status = await asyncio.wait_for(
            asyncio.to_thread(self.service.with_video, digest, upload.video, work), remaining)
        return result, {"video_id": digest, "cache": status, "frames": clip.frame_indices.tolist()}

    # -------------------------------------------------------------- endpoints

    @app.post("/videos")
    async def videos(self, request: Request) -> Response:
        async def handle(upload: _Upload, deadline: float):
            _, meta = await self._on_video(upload, deadline, lambda clip, vision: None)
            return JSONResponse(meta)
        return await self._serve(request, handle)

    @app.post("/ask")
    async def ask(self, request: Request) -> Response:
        async def handle(upload: _Upload, deadline: float):
            question = upload.text("question")
            answer, meta = await self._on_video(
                upload, deadline, lambda clip, vision: self.service.model.ask(clip, question, vision=vision))
            return JSONResponse({**meta, "question": question, "answer": answer.text,
                                 "seconds": round(answer.seconds, 4)})
        return await self._serve(request, handle)

    @app.post("/ground")
    async def ground(self, request: Request) -> Response:
        async def handle(upload: _Upload, deadline: float):
            from vidllm.inference import SCENE_FRAME

            phrase = upload.text("phrase")
            found, meta = await self._on_video(
                upload, deadline, lambda clip, vision: self.service.model.ground(clip, phrase, vision=vision))
            return JSONResponse({**meta, "phrase": phrase, "text": found.text, "boxes": found.boxes.tolist(),
                                 "box_format": "cx, cy, cz, dx, dy, dz", "frame": SCENE_FRAME,
                                 "seconds": round(found.seconds, 4)})
        return await self._serve(request, handle)

    @app.post("/reconstruct")
    async def reconstruct(self, request: Request) -> Response:
        async def handle(upload: _Upload, deadline: float):
            from vidllm.inference import SCENE_FRAME

            stride = upload.number("stride", 2)
            max_points = min(upload.number("max_points", self.settings.max_points), self.settings.max_points)
            kind = upload.fields.get("format", "json")
            if kind not in ("json", "ply"):
                raise ServeError(400, f"format must be json or ply, got {kind!r}")
            recon, meta = await self._on_video(
                upload, deadline, lambda clip, vision: self.service.model.reconstruct(clip, stride, vision=vision))
            if kind == "ply":
                with tempfile.TemporaryDirectory(prefix="vidllm-serve-") as tmp:
                    data = recon.write_ply(Path(tmp) / "scene.ply").read_bytes()
                return Response(data, media_type="application/octet-stream", headers={
                    "Content-Disposition": 'attachment; filename="scene.ply"',
                    "X-Video-Id": meta["video_id"], "X-Cache": meta["cache"]})
            total = len(recon.points)
            step = -(-total // max_points) if total > max_points else 1  # even thinning keeps the cloud's extent
            return JSONResponse({
                **meta, "frame": SCENE_FRAME, "points_total": total, "point_step": step,
                "points": recon.points[::step].round(5).tolist(), "colors": recon.colors[::step].tolist(),
                "camera_to_scene": recon.camera_to_scene.tolist(), "intrinsics": recon.intrinsics.tolist(),
                "image_size": list(recon.image_size), "scale": recon.scale, "extent": recon.extent.tolist(),
                "seconds": round(recon.seconds, 4)})
        return await self._serve(request, handle)

    @app.get("/stats")
    async def stats(self) -> Response:
        return JSONResponse(await asyncio.to_thread(self.service.stats))


# ---------------------------------------------------------------------------------------------- running

@dataclass
class RunningServer:
    """A started deployment: its URL, and whether this process started Ray (then `stop` ends it too)."""

    url: str
    started_ray: bool

    def stop(self) -> None:
        """Shut Serve down; also the local Ray instance when `start` started it (never another one)."""
        import ray

        serve.shutdown()
        if self.started_ray:
            ray.shutdown()


def start(settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000, num_cpus: int | None = None,
          quiet: bool = True) -> RunningServer:
    """Start (or reuse) a private local Ray, Serve's HTTP proxy on host:port, and the deployment;
    returns when it answers requests. A model directory that fails to load is a VidLLMError."""
    import ray

    from vidllm.artifacts.model_dir import read_model_config
    from vidllm.ray_session import absolute_local

    settings = replace(settings, model_dir=absolute_local(settings.model_dir))  # the replica has another cwd
    read_model_config(settings.model_dir)  # a missing or foreign directory fails here, in one line
    started = False
    if quiet:  # the driver-side Serve logger reports every step at INFO
        logging.getLogger("ray.serve").setLevel(logging.WARNING)
    if not ray.is_initialized():
        # A private instance on this machine, never a cluster a `ray start` recorded here.
        ray.init(address="local", include_dashboard=False, num_cpus=num_cpus,
                 logging_level="WARNING" if quiet else "INFO", log_to_driver=not quiet)
        started = True
    logging_config = {"log_level": "WARNING" if quiet else "INFO"}
    try:
        # The proxy's own timeout is a backstop only: the replica answers 504 first, as JSON.
        serve.start(http_options={"host": host, "port": port, "request_timeout_s": settings.timeout_s + 30},
                    logging_config=logging_config)
        serve.run(VideoServer.bind(settings), name=APP_NAME, route_prefix="/", logging_config=logging_config)
    except Exception as exc:
        serve.shutdown()
        if started:
            ray.shutdown()
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
        raise VidLLMError(f"the server did not start: {first}") from None
    return RunningServer(f"http://{host}:{port}", started)
