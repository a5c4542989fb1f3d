"""A trained model on a user's own video: answer questions, reconstruct the scene, ground phrases.

    model = VideoModel.load("runs/a/model")
    clip = model.load_video("kitchen.mp4")            # N frames uniformly over the video
    model.ask(clip, "How many chairs are there?")     # → Answer(text, seconds)
    model.reconstruct(clip)                           # → Reconstruction(points, colors, poses, …)
    model.ground(clip, "the brown table")             # → Grounding(boxes, text)

    vision = model.encode(clip)                       # the vision pass alone, kept for later calls:
    model.ask(clip, "What is on the table?", vision=vision)   # only the LLM runs (same answer as without)

No ground-truth depth or poses: geometry comes from the model's reconstruction branch with its
metric-depth scale. Coordinates are in the model's scene frame: metres, origin at the first
camera, gravity-aligned axes (the rotation is predicted). Imports no Ray, Prefect or DVC.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from vidllm.errors import DataError, VidLLMError

if TYPE_CHECKING:
    from vidllm.models.vidllm import VisionState

SCENE_FRAME = "scene frame: metres, origin at the first camera, gravity-aligned axes (predicted)"


@dataclass
class VideoClip:
    path: Path
    images: torch.Tensor  # [S,3,H,W] float32 in [0,1], resized and cropped as in training
    frame_indices: np.ndarray  # [S] source frame index of each sampled frame
    source_size: tuple[int, int]  # (width, height) of the video


@dataclass
class Answer:
    text: str
    seconds: float


@dataclass
class Grounding:
    boxes: np.ndarray  # [n,6] (cx, cy, cz, dx, dy, dz), scene frame; one per emitted <ground>
    text: str  # the model's decoded answer (without the <ground> tokens)
    seconds: float


@dataclass
class Reconstruction:
    points: np.ndarray  # [N,3] float32, scene frame
    colors: np.ndarray  # [N,3] uint8 RGB from the frames
    camera_to_scene: np.ndarray  # [S,4,4] camera (OpenCV axes) → scene frame
    intrinsics: np.ndarray  # [S,3,3] of the model's input frames (pixels of `image_size`)
    depth: np.ndarray  # [S,H,W] metric depth (metres) of the input frames
    image_size: tuple[int, int]  # (width, height) of the model's input frames
    scale: float  # relative → metric scale the metric-depth model gave the reconstruction
    seconds: float

    @property
    def extent(self) -> np.ndarray:
        """[3] size of the point cloud's axis-aligned bounding box, metres (zeros when empty)."""
        return self.points.max(0) - self.points.min(0) if len(self.points) else np.zeros(3)

    def write_ply(self, path: str | Path) -> Path:
        """The coloured point cloud as a binary PLY (no faces), written atomically."""
        from vidllm.data.scannet.writers import write_ply_mesh

        write_ply_mesh(path, self.points, self.colors, np.zeros((0, 3), np.int32))
        return Path(path)


class VideoModel:
    """A model directory (`vidllm init` / `vidllm train` output) loaded once for many questions."""

    def __init__(self, model, tokenizer, frames: int, short_side: int, max_new_tokens: int = 32):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.frames = frames
        self.short_side = short_side
        self.max_new_tokens = max_new_tokens

    @classmethod
    def load(cls, model_dir: str | Path, *, frames: int | None = None, short_side: int | None = None,
             device: str = "auto", max_new_tokens: int = 32) -> VideoModel:
        """Frames and image size default to the model's own config (`model.frames`, and the shorter
        side of `model.image_size`), i.e. the clips it was built and trained for."""
        from vidllm.artifacts.model_dir import load_pretrained

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        with warnings.catch_warnings():  # transformers' own deprecation notices, raised by peft's merge
            warnings.simplefilter("ignore", FutureWarning)
            model, tokenizer = load_pretrained(model_dir, device=device, merge_lora=True)
        if tokenizer is None:
            raise DataError(model_dir, "model directory has no tokenizer/ (needed to read questions)")
        cfg = model.config
        return cls(model, tokenizer, frames or cfg.frames, short_side or min(cfg.image_size), max_new_tokens)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def load_video(self, path: str | Path) -> VideoClip:
        """`self.frames` frames uniformly over the video, shorter side → `self.short_side`, centre crop
        to multiples of the patch size (the preprocessing of training clips)."""
        from vidllm.data.frames import plan_resize_crop, resize_color
        from vidllm.data.video import read_video_frames

        path = Path(path)
        frames, ids = read_video_frames(path, self.frames)
        height, width = frames.shape[1:3]
        try:
            plan = plan_resize_crop((width, height), self.short_side, self.model.patch_size)
        except ValueError as exc:
            raise DataError(path, f"video frames of {width}x{height} are too small: {exc}") from None
        resized = np.stack([resize_color(f, plan) for f in frames])  # [S,H,W,3] uint8
        images = torch.from_numpy(resized).permute(0, 3, 1, 2).float().div_(255.0)
        return VideoClip(path, images, ids, (width, height))

    def encode(self, clip: VideoClip) -> VisionState:
        """The vision pass over `clip` (encoder, reconstruction, 3D-patch tokens, own proposals),
        to give as `vision=` to any later `ask`, `ask_many`, `ground` or `reconstruct` of the same
        clip: they then run only the LLM, with the same results as without it."""
        return self.model.vision_state(clip.images[None].to(self.device))

    def _generate(self, clip: VideoClip, texts: list[str], max_new_tokens: int | None = None, point_stride: int = 4,
                  grounding: bool = False, vision: VisionState | None = None):
        from vidllm.tokenizer import build_prompt

        if vision is None:
            images = clip.images[None].to(self.device)
        elif tuple(vision.images.shape) != (1, *clip.images.shape):
            raise VidLLMError(f"the vision state is of videos {tuple(vision.images.shape)}, not of this clip "
                              f"{tuple(clip.images.shape)}")
        else:
            images = None
        # A grounding request selects among the model's own proposals (there are no others for a video).
        return self.model.generate(images, [build_prompt(t, grounding=grounding) for t in texts], self.tokenizer,
                                   max_new_tokens=max_new_tokens or self.max_new_tokens, point_stride=point_stride,
                                   proposals="own" if grounding else None, vision=vision)

    def ask(self, clip: VideoClip, question: str, *, vision: VisionState | None = None) -> Answer:
        """A free-form answer to `question` about the scene in the video (`vision`: `encode(clip)`)."""
        return self.ask_many(clip, [question], vision=vision)[0]

    def ask_many(self, clip: VideoClip, questions: list[str], *, vision: VisionState | None = None) -> list[Answer]:
        """Answers to several questions about one video: one vision pass (none with `vision`) and
        one LLM pass over its vision tokens serve them all. `seconds` of each answer is the call's
        time shared out."""
        if not questions or any(not q.strip() for q in questions):
            raise VidLLMError("the question is empty")
        start = time.perf_counter()
        results = self._generate(clip, questions, vision=vision)
        seconds = (time.perf_counter() - start) / len(questions)
        return [Answer(r.text, seconds) for r in results]

    def ground(self, clip: VideoClip, phrase: str, *, vision: VisionState | None = None) -> Grounding:
        """3D boxes of the object(s) `phrase` refers to (none if the model answers without `<ground>`):
        each `<ground>` selects one of the model's own proposals and refines it."""
        if not phrase.strip():
            raise VidLLMError("the phrase is empty")
        start = time.perf_counter()
        [result] = self._generate(clip, [phrase], grounding=True, vision=vision)
        return Grounding(result.boxes.cpu().numpy().astype(np.float64), result.text, time.perf_counter() - start)

    def reconstruct(self, clip: VideoClip, point_stride: int = 2, *,
                    vision: VisionState | None = None) -> Reconstruction:
        """Metric point cloud, camera poses, intrinsics and depth of the sampled frames."""
        if point_stride < 1:
            raise ValueError(f"point_stride must be >= 1, got {point_stride}")
        start = time.perf_counter()
        # One vision pass; a single generated token is enough (the text is not used).
        [result] = self._generate(clip, ["Describe the room."], max_new_tokens=1, point_stride=point_stride,
                                  vision=vision)
        colors = (result.colors.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        height, width = clip.images.shape[-2:]
        return Reconstruction(
            points=result.points.float().cpu().numpy(), colors=colors,
            camera_to_scene=result.camera_to_world.double().cpu().numpy(),
            intrinsics=result.intrinsics.double().cpu().numpy(),
            depth=result.depth.float().cpu().numpy(), image_size=(int(width), int(height)),
            scale=float(result.scale), seconds=time.perf_counter() - start,
        )
