"""Interactive 3D viewer: a local web page with the coloured point cloud, the camera frustums,
ground-truth and predicted boxes with their phrases, and a question box that calls `ask` / `ground`.

    scene = scene_from_ply("room.ply")                  # or scene_from_reconstruction / load_run_scene
    viewer = build_viewer(scene, session=None, port=8080)
    print(viewer.url); ...; viewer.stop()

The page is viser's web client, which ships pre-built inside the viser wheel (nothing is built or
downloaded at run time; `_check_bundled_client` refuses to start otherwise). viser is imported
only in this module. Coordinates are shown as they are stored, z up (the scene frame and the
ScanNet axis-aligned world both are).
"""

from __future__ import annotations

import contextlib
import io
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vidllm.errors import DataError, VidLLMError

if TYPE_CHECKING:
    from vidllm.eval.protocols import WorldMap
    from vidllm.inference import Reconstruction, VideoClip, VideoModel
    from vidllm.models.vidllm import VisionState

MAX_POINTS = 400_000  # more slows the page's first load without showing more
MAX_LABEL_CHARS = 60
DEFAULT_FOV_Y = np.deg2rad(60.0)  # frustums whose intrinsics are unknown
# Frustums are glyphs: a nearly degenerate predicted fov would draw them as needles.
FOV_RANGE = (np.deg2rad(15.0), np.deg2rad(150.0))
GT_COLOR = (40, 170, 70)
PRED_COLOR = (220, 50, 47)
ANSWER_COLOR = (240, 140, 0)
CAMERA_COLOR = (30, 90, 200)


@dataclass
class Cameras:
    camera_to_scene: np.ndarray  # [S,4,4] camera (OpenCV axes: x right, y down, z forward) → scene
    fov_y: np.ndarray  # [S] vertical field of view, radians
    aspect: float  # width / height of the frames
    images: np.ndarray | None = None  # [S,H,W,3] uint8 frames, drawn inside the frustums


@dataclass
class LabelledBoxes:
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 6)))  # [n,6] (cx,cy,cz,dx,dy,dz), metres
    labels: list[str] = field(default_factory=list)  # [n]

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 6)
        if len(self.labels) != len(self.boxes):
            raise ValueError(f"{len(self.boxes)} boxes but {len(self.labels)} labels")


@dataclass
class ViewerScene:
    title: str
    points: np.ndarray  # [N,3] float32
    colors: np.ndarray  # [N,3] uint8 RGB
    frame: str = "metres, z up"  # what the coordinates are, shown on the page
    cameras: Cameras | None = None
    gt: LabelledBoxes = field(default_factory=LabelledBoxes)
    predicted: LabelledBoxes = field(default_factory=LabelledBoxes)
    extra_points: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # name → hidden layer


@dataclass
class ModelSession:
    """A loaded model and the clip its answers are about; `to_view` maps its scene frame to the
    viewer's coordinates (None: the viewer shows the model's own scene frame)."""

    model: VideoModel
    clip: VideoClip
    to_view: WorldMap | None = None
    vision: VisionState | None = None  # the clip's vision pass, run on the first question, shared by the rest

    def _vision(self) -> VisionState:
        if self.vision is None:
            self.vision = self.model.encode(self.clip)
        return self.vision

    def ask(self, question: str) -> str:
        return self.model.ask(self.clip, question, vision=self._vision()).text

    def ground(self, phrase: str) -> tuple[np.ndarray, str]:
        """([n,6] boxes in the viewer's coordinates, the model's answer text)."""
        found = self.model.ground(self.clip, phrase, vision=self._vision())
        boxes = found.boxes if self.to_view is None else self.to_view.boxes(found.boxes)
        return np.asarray(boxes, dtype=np.float64).reshape(-1, 6), found.text


# ----------------------------------------------------------------------------- scenes from files


def _finite(points: np.ndarray, colors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keep = np.isfinite(points).all(1)
    return points[keep].astype(np.float32), colors[keep].astype(np.uint8)


def height_colors(points: np.ndarray) -> np.ndarray:
    """[N,3] uint8 colours by height (z), for clouds without colours."""
    import matplotlib

    if not len(points):
        return np.zeros((0, 3), np.uint8)
    z = points[:, 2]
    finite = z[np.isfinite(z)]
    lo, hi = np.percentile(finite, [2, 98]) if len(finite) else (0.0, 1.0)
    t = np.clip((z - lo) / max(hi - lo, 1e-6), 0, 1)
    return (matplotlib.colormaps["viridis"](t)[:, :3] * 255).round().astype(np.uint8)


def _cameras_from_intrinsics(camera_to_scene: np.ndarray, intrinsics: np.ndarray, image_size: tuple[int, int],
                             images: np.ndarray | None = None) -> Cameras:
    """`intrinsics` [S,3,3] in pixels of `image_size` (width, height)."""
    width, height = image_size
    fov_y = 2 * np.arctan2(height / 2, np.asarray(intrinsics, dtype=np.float64)[:, 1, 1])
    return Cameras(np.asarray(camera_to_scene, dtype=np.float64), fov_y, width / height, images)


def scene_from_ply(path: str | Path) -> ViewerScene:
    """A binary or ASCII PLY with x,y,z[,red,green,blue] vertices (faces are ignored), e.g.
    `vidllm reconstruct`'s output; its `.cameras.json` beside it adds the camera frustums."""
    from vidllm.data.scannet.meta import read_ply_mesh

    path = Path(path)
    if not path.is_file():
        raise DataError(path, "PLY file not found")
    mesh = read_ply_mesh(path)
    if not len(mesh.vertices):
        raise DataError(path, "PLY has no vertices")
    colors = mesh.colors if mesh.colors is not None else height_colors(mesh.vertices)
    points, colors = _finite(mesh.vertices, colors)
    if not len(points):
        raise DataError(path, "PLY has no finite vertex")
    return ViewerScene(path.name, points, colors, frame="as stored in the PLY", cameras=_ply_cameras(path))


def _ply_cameras(ply: Path) -> Cameras | None:
    import json

    path = ply.with_suffix(".cameras.json")
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        poses = np.asarray(data["camera_to_scene"], dtype=np.float64).reshape(-1, 4, 4)
        intrinsics = np.asarray(data["intrinsics"], dtype=np.float64).reshape(len(poses), 3, 3)
        width, height = (int(v) for v in data["image_size"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(path, f"not a `vidllm reconstruct` cameras file ({type(exc).__name__}: {exc})") from None
    return _cameras_from_intrinsics(poses, intrinsics, (width, height))


def scene_from_reconstruction(recon: Reconstruction, title: str, clip: VideoClip | None = None) -> ViewerScene:
    """The model's point cloud and cameras; the clip's frames are drawn in the frustums."""
    from vidllm.inference import SCENE_FRAME

    images = None
    if clip is not None:
        images = (clip.images.permute(0, 2, 3, 1).clamp(0, 1) * 255).round().byte().numpy()
    points, colors = _finite(np.asarray(recon.points), np.asarray(recon.colors))
    return ViewerScene(title, points, colors, frame=SCENE_FRAME,
                       cameras=_cameras_from_intrinsics(recon.camera_to_scene, recon.intrinsics, recon.image_size,
                                                        images))


# ----------------------------------------------------------------------------- run directories


@dataclass
class RunScene:
    scene: ViewerScene
    frames: np.ndarray | None  # [S,H,W,3] uint8 input frames of the scene (to ask questions about)
    frame_ids: np.ndarray  # [S] source frame ids
    model_dir: Path | None  # the run's model directory, if it exists


def run_scenes(run: Path) -> list[str]:
    from vidllm.artifacts import run_dir as rd

    return sorted(p.stem for p in (run / rd.GEOMETRY_DIR).glob("*.npz"))


def _point_stride(depth: np.ndarray, count: int) -> int | None:
    """The pixel stride the predicted cloud was sampled at: the one whose valid-depth pixel count is
    `count` (points are the valid pixels of every frame at that stride, frame by frame, row-major)."""
    for stride in range(1, 33):
        if int((depth[:, ::stride, ::stride] > 0).sum()) == count:
            return stride
    return None


def _fitted_fov_y(points: np.ndarray, depth: np.ndarray, poses: np.ndarray, stride: int) -> np.ndarray:
    """[S] vertical fov of each frame from its points seen in its camera: v = fy · y/z + cy."""
    out = np.full(len(depth), DEFAULT_FOV_Y)
    start = 0
    for s, (d, pose) in enumerate(zip(depth, poses)):
        grid = d[::stride, ::stride]
        rows = np.nonzero(grid > 0)[0] * stride
        chunk = points[start : start + len(rows)].astype(np.float64)
        start += len(rows)
        camera = (chunk - pose[:3, 3]) @ pose[:3, :3]  # scale-free: only y/z is used
        ok = camera[:, 2] > 1e-6
        if ok.sum() < 8:
            continue
        ratio = camera[ok, 1] / camera[ok, 2]
        design = np.stack([ratio, np.ones_like(ratio)], 1)
        (fy, _), *_ = np.linalg.lstsq(design, rows[ok].astype(np.float64), rcond=None)
        if np.isfinite(fy) and fy > 0:
            out[s] = 2 * np.arctan2(d.shape[0] / 2, fy)
    return out


def _instruction_texts(run: Path, benchmark: str, predictions: Path) -> dict[str, str]:
    """id → phrase of `benchmark`'s instructions, from the annotations `vidllm score` recorded in
    metrics.json ("gt") and the split the predictions were made on; empty when they cannot be
    found (labels then show the ids)."""
    from vidllm.artifacts import run_dir as rd
    from vidllm.data.scannet.annotations import load_annotations
    from vidllm.eval.predictions import read_meta

    path = run / rd.METRICS_FILE
    metrics = rd.read_json(path) if path.is_file() else {}
    result = metrics.get(benchmark) if isinstance(metrics, dict) else None
    gt = result.get("gt") if isinstance(result, dict) else None
    if not isinstance(gt, str) or not Path(gt).exists():
        return {}
    split = read_meta(predictions).get("split")
    texts: dict[str, str] = {}
    for candidate in dict.fromkeys([split, "train", "val", "test"]):  # a folder needs the split
        try:
            texts.update({inst.id: inst.text for inst in load_annotations(benchmark, gt, candidate)})
        except (VidLLMError, OSError):
            continue
        if Path(gt).is_file():
            break
    return texts


def _predicted_boxes(run: Path, scene_id: str) -> LabelledBoxes:
    """The grounding predictions of `scene_id` (ids `scene|object|ann`), labelled with their phrase."""
    from vidllm.artifacts import run_dir as rd
    from vidllm.eval.benchmarks import registry
    from vidllm.eval.predictions import read_predictions

    boxes, labels = [np.zeros((0, 6))], []
    for benchmark in (spec.name for spec in registry.specs() if spec.plot_boxes):
        path = run / rd.PREDICTIONS_DIR / f"{benchmark}.jsonl"
        if not path.is_file():
            continue
        mine = [p for p in read_predictions(path, benchmark).values() if p.id.split("|", 1)[0] == scene_id]
        texts = _instruction_texts(run, benchmark, path) if mine else {}
        for pred in mine:
            phrase = texts.get(pred.id, pred.id.split("|", 1)[-1])
            boxes.append(pred.boxes)
            labels += [f"{benchmark}: {phrase}"] * len(pred.boxes)
    return LabelledBoxes(np.concatenate(boxes), labels)


def _run_model_dir(run: Path) -> Path | None:
    """RUN_DIR/model, else the model the run's predictions were made with, if it exists."""
    from vidllm.artifacts import run_dir as rd
    from vidllm.artifacts.model_dir import CONFIG_NAME
    from vidllm.eval.predictions import read_meta

    candidates = [run / "model"]
    candidates += [Path(m) for p in sorted((run / rd.PREDICTIONS_DIR).glob("*.jsonl"))
                   if isinstance(m := read_meta(p).get("model"), str)]
    return next((c for c in candidates if (c / CONFIG_NAME).is_file()), None)


def load_run_scene(run: str | Path, scene_id: str | None = None) -> RunScene:
    """One scene of a run directory (`vidllm evaluate` output): its predicted point cloud (coloured
    from the input frames), predicted cameras, GT boxes and the grounding predictions' boxes, all in
    the ScanNet axis-aligned world the geometry file holds. The GT cloud is a hidden layer."""
    from vidllm.artifacts import run_dir as rd

    run = Path(run)
    if not run.is_dir():
        raise DataError(run, "run directory not found")
    scenes = run_scenes(run)
    if not scenes:
        raise DataError(run / rd.GEOMETRY_DIR, "no geometry/<scene>.npz in this run (run `vidllm evaluate` with "
                                               "the recon benchmark)")
    scene_id = scene_id or scenes[0]
    if scene_id not in scenes:
        raise DataError(run / rd.GEOMETRY_DIR, f"no scene {scene_id!r} (the run has {', '.join(scenes)})")
    geo_path = run / rd.GEOMETRY_DIR / f"{scene_id}.npz"
    geo = rd.read_geometry(geo_path)
    if "points_pred" not in geo and "points_gt" not in geo:
        raise DataError(geo_path, "holds neither points_pred nor points_gt")
    frames = geo.get("colors")
    depth = geo.get("depth_pred")
    poses = geo.get("camera_to_world_pred")
    cloud = "points_pred" if "points_pred" in geo else "points_gt"
    points = np.asarray(geo[cloud], dtype=np.float32).reshape(-1, 3)
    stride = _point_stride(depth, len(points)) if cloud == "points_pred" and depth is not None else None
    colors = None
    if stride is not None and frames is not None and frames.shape[1:3] == depth.shape[1:3]:
        colors = frames[:, ::stride, ::stride][depth[:, ::stride, ::stride] > 0]
    cameras = None
    if poses is not None:
        shown = frames if frames is not None else depth
        height, width = shown.shape[1:3] if shown is not None else (3, 4)
        fov = (_fitted_fov_y(points, depth, poses, stride) if stride is not None
               else np.full(len(poses), DEFAULT_FOV_Y))
        cameras = Cameras(np.asarray(poses, dtype=np.float64), fov, width / height, frames)
    points, colors = _finite(points, colors if colors is not None else height_colors(points))
    gt_boxes = np.asarray(geo.get("boxes_gt", np.zeros((0, 6))), dtype=np.float64).reshape(-1, 6)
    scene = ViewerScene(
        title=f"{run.name} · {scene_id}", points=points, colors=colors,
        frame="ScanNet axis-aligned world (metres, z up), after the run's evaluation protocol",
        cameras=cameras, gt=LabelledBoxes(gt_boxes, [f"GT object {k}" for k in range(len(gt_boxes))]),
        predicted=_predicted_boxes(run, scene_id),
    )
    if cloud == "points_pred" and "points_gt" in geo:
        gt_points = np.asarray(geo["points_gt"], dtype=np.float32).reshape(-1, 3)
        scene.extra_points["ground-truth points"] = _finite(gt_points, height_colors(gt_points))
    frame_ids = np.asarray(geo.get("frame_ids", np.arange(len(frames) if frames is not None else 0)))
    return RunScene(scene, frames, frame_ids, _run_model_dir(run))


def run_session(model: VideoModel, run_scene: RunScene, source: Path) -> ModelSession:
    """Questions about a run's scene: its stored input frames are the clip; the model's scene frame
    is mapped onto the run's predicted cameras (Umeyama Sim(3) of the camera centres, or the first
    camera's pose when they are too few), so `ground` boxes land in the shown world."""
    import torch

    from vidllm.eval.protocols import WorldMap, world_map_from_centers
    from vidllm.inference import VideoClip

    if run_scene.frames is None:
        raise DataError(source, "the geometry file has no input frames (`colors`) to ask questions about")
    frames = run_scene.frames
    images = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float().div_(255.0)
    clip = VideoClip(source, images, run_scene.frame_ids, (frames.shape[2], frames.shape[1]))
    session = ModelSession(model, clip)
    cameras = run_scene.scene.cameras
    if cameras is not None:
        own = model.reconstruct(clip, point_stride=8).camera_to_scene
        try:
            session.to_view = world_map_from_centers("P2", own[:, :3, 3], cameras.camera_to_scene[:, :3, 3])
        except VidLLMError:  # too few or collinear cameras: rigid map of the first camera
            rotation = cameras.camera_to_scene[0, :3, :3] @ own[0, :3, :3].T
            session.to_view = WorldMap(1.0, rotation, cameras.camera_to_scene[0, :3, 3] - rotation @ own[0, :3, 3])
    return session


# ----------------------------------------------------------------------------- the page


def _check_bundled_client() -> None:
    """viser builds its client with Node (downloaded) when the wheel's build looks missing or older
    than its sources; the viewer refuses instead, so nothing is built or downloaded at run time."""
    from viser import _client_autobuild as autobuild

    build = autobuild.build_dir / "index.html"
    stale = (autobuild.client_dir / "src").exists() and (
        autobuild._modified_time_recursive(autobuild.client_dir / "src")
        > autobuild._modified_time_recursive(autobuild.build_dir) + 10.0)
    if not build.is_file() or stale:
        raise VidLLMError(f"viser's bundled web client at {autobuild.build_dir} is missing or older than its "
                          "sources; reinstall viser (the viewer never builds it)")


def _box_edges(boxes: np.ndarray) -> np.ndarray:
    """[n,6] boxes → [12n,2,3] wireframe edge segments."""
    corners = np.array([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)])
    pairs = [(a, b) for a in range(8) for b in range(a + 1, 8) if np.abs(corners[a] - corners[b]).sum() == 1]
    out = [(boxes[:, None, :3] + corners[None] * boxes[:, None, 3:])[:, [a, b]] for a, b in pairs]
    return np.stack(out, 1).reshape(-1, 2, 3).astype(np.float32)


def _escape(text: str) -> str:
    """Model text shown as literal markdown (no markup, no HTML)."""
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|<>~&])", r"\\\1", text) if text else "_(empty)_"


def _short(text: str) -> str:
    return text if len(text) <= MAX_LABEL_CHARS else text[: MAX_LABEL_CHARS - 1] + "…"


class Viewer:
    """A running viewer page; `url` to open, `stop()` to end it. Built by `build_viewer`."""

    def __init__(self, server: Any, scene: ViewerScene, session: ModelSession | None):
        self.server = server
        self.scene = scene
        self.session = session
        self.answers: list[tuple[str, str, np.ndarray]] = []  # (question, answer text, [n,6] boxes)
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://{self.server.get_host()}:{self.server.get_port()}/"

    def stop(self) -> None:
        self.server.stop()


def _extent(scene: ViewerScene) -> tuple[np.ndarray, float]:
    """(centre [3], size) of what the scene shows, for the initial camera and glyph sizes."""
    parts = [scene.points.reshape(-1, 3)]
    parts += [b.boxes[:, :3] for b in (scene.gt, scene.predicted)]
    if scene.cameras is not None:
        parts.append(scene.cameras.camera_to_scene[:, :3, 3])
    everything = np.concatenate([p for p in parts if len(p)] or [np.zeros((1, 3))]).astype(np.float64)
    lo, hi = np.percentile(everything, 1, axis=0), np.percentile(everything, 99, axis=0)
    return (lo + hi) / 2, float(max(np.max(hi - lo), 0.5))


def _thin(points: np.ndarray, colors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if len(points) <= MAX_POINTS:
        return points, colors
    keep = np.linspace(0, len(points) - 1, MAX_POINTS).astype(int)  # deterministic
    return points[keep], colors[keep]


def _add_boxes(server: Any, name: str, boxes: LabelledBoxes, color: tuple[int, int, int],
               visible: bool = True) -> list[Any]:
    if not len(boxes.boxes):
        return []
    handles = [server.scene.add_line_segments(f"{name}/edges", _box_edges(boxes.boxes), color, line_width=4.0,
                                              visible=visible)]
    for k, (box, label) in enumerate(zip(boxes.boxes, boxes.labels)):
        top = box[:3] + np.array([0.0, 0.0, box[5] / 2])
        handles.append(server.scene.add_label(f"{name}/label_{k}", _short(label), position=top, visible=visible))
    return handles


def build_viewer(scene: ViewerScene, session: ModelSession | None = None, *, host: str = "127.0.0.1",
                 port: int = 8080) -> Viewer:
    """Start the viewer's server for already-loaded data and return it (running in background
    threads). viser moves to the next free port when `port` is taken: read `Viewer.url`."""
    _check_bundled_client()
    import viser
    import viser.transforms as vtf

    with contextlib.redirect_stdout(io.StringIO()):  # viser's own address banner; callers print `url`
        server = viser.ViserServer(host=host, port=port, verbose=False)
    viewer = Viewer(server, scene, session)
    # The page stays local: viser's share button (hiding it crashes its 0.2.23 client on a resize)
    # would open a public tunnel through share.viser.studio, so its request does nothing here.
    server.request_share_url = lambda *args, **kwargs: None
    server.gui.configure_theme(control_layout="fixed", control_width="large", show_logo=False)
    server.scene.set_up_direction("+z")
    centre, size = _extent(scene)

    @server.on_client_connect
    def _(client: Any) -> None:
        client.camera.position = tuple(centre + size * np.array([-0.45, -0.75, 0.95]))
        client.camera.look_at = tuple(centre)

    layers: dict[str, list[Any]] = {}
    point_size = float(np.clip(size / 200, 0.005, 0.05))
    if len(scene.points):
        points, colors = _thin(scene.points, scene.colors)
        layers["points"] = [server.scene.add_point_cloud("/points", points, colors, point_size=point_size)]
    for k, (name, (points, colors)) in enumerate(scene.extra_points.items()):
        points, colors = _thin(points, colors)
        layers[name] = [server.scene.add_point_cloud(f"/extra_{k}", points, colors, point_size=point_size,
                                                     visible=False)]
    if scene.cameras is not None:
        cams, handles = scene.cameras, []
        for i, pose in enumerate(cams.camera_to_scene):
            image = None if cams.images is None else cams.images[i]
            handles.append(server.scene.add_camera_frustum(
                f"/cameras/{i}", fov=float(np.clip(cams.fov_y[i], *FOV_RANGE)), aspect=cams.aspect, scale=0.06 * size,
                color=CAMERA_COLOR, image=image, wxyz=vtf.SO3.from_matrix(pose[:3, :3]).wxyz, position=pose[:3, 3]))
        layers["cameras"] = handles
    layers["ground-truth boxes"] = _add_boxes(server, "/gt_boxes", scene.gt, GT_COLOR)
    layers["predicted boxes"] = _add_boxes(server, "/pred_boxes", scene.predicted, PRED_COLOR)

    with server.gui.add_folder("Scene"):
        server.gui.add_markdown(
            f"**{_escape(scene.title)}**  \n{len(scene.points):,} points, "
            f"{0 if scene.cameras is None else len(scene.cameras.camera_to_scene)} cameras, "
            f"{len(scene.gt.boxes)} GT boxes (green), {len(scene.predicted.boxes)} predicted (red)  \n"
            f"Coordinates: {_escape(scene.frame)}")
        for name, handles in layers.items():
            if handles:
                box = server.gui.add_checkbox(name, initial_value=handles[0].visible)

                @box.on_update
                def _(event: Any, handles: list[Any] = handles) -> None:
                    for handle in handles:
                        handle.visible = event.target.value

    _question_box(server, viewer)
    return viewer


def _question_box(server: Any, viewer: Viewer) -> None:
    session = viewer.session
    with server.gui.add_folder("Ask the model"):
        question = server.gui.add_text("Question", "How many chairs are in the room?" if session else "",
                                       disabled=session is None)
        ask = server.gui.add_button("Ask", disabled=session is None, hint="free-form answer (ask)")
        ground = server.gui.add_button("Ground", disabled=session is None,
                                       hint="3D boxes of the object a phrase refers to (ground); shown in orange")
        answer = server.gui.add_markdown("Ask a question about the scene." if session else
                                         "No model: questions need `vidllm view MODEL_DIR VIDEO`, or a run "
                                         "directory with its model/.")

    def call(kind: str) -> None:
        text = question.value.strip()
        if session is None or not text:
            answer.content = "Type a question first." if session else answer.content
            return
        if not viewer._lock.acquire(blocking=False):
            return  # one model call at a time; a second click while it runs is dropped
        try:
            ask.disabled = ground.disabled = True
            answer.content = f"**Q:** {_escape(text)}  \n_thinking…_"
            boxes = np.zeros((0, 6))
            if kind == "ask":
                reply = session.ask(text)
                shown = f"**Answer:** {_escape(reply)}"
            else:
                boxes, reply = session.ground(text)
                n = len(viewer.answers)
                _add_boxes(server, f"/answers/{n}", LabelledBoxes(boxes, [f"answer: {text}"] * len(boxes)),
                           ANSWER_COLOR)
                shown = f"**Answer:** {len(boxes)} box(es) (orange). Model text: {_escape(reply)}"
            viewer.answers.append((text, reply, boxes))
            answer.content = f"**Q:** {_escape(text)}  \n{shown}"
        except Exception as exc:  # shown in the page; the server keeps serving
            message = str(exc) if isinstance(exc, VidLLMError) else f"{type(exc).__name__}: {exc}"
            answer.content = f"**Error:** {_escape(message)}"
        finally:
            ask.disabled = ground.disabled = False
            viewer._lock.release()

    ask.on_click(lambda _event: call("ask"))
    ground.on_click(lambda _event: call("ground"))
