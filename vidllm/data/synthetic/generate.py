"""Synthetic ScanNet-format scenes with benchmark annotations (the embedded default dataset).

`generate_dataset(out_dir, cfg)` writes

    out_dir/scans/sceneXXXX_00/sceneXXXX_00.sens                       RGB-D video (.sens v4)
                               sceneXXXX_00.txt                        metadata + axisAlignment
                               sceneXXXX_00_vh_clean_2.ply             mesh (binary ply)
                               sceneXXXX_00_vh_clean_2.0.010000.segs.json
                               sceneXXXX_00.aggregation.json
    out_dir/annotations/...    ScanQA, SQA3D, ScanRefer (→ Scan2Cap), Multi3DRefer, Nr3D, Sr3D and
                               VSI-Bench files in their published schemas, plus scannetv2_{split}.txt
    out_dir/scannetv2-labels.combined.tsv

Rooms are rendered by ray casting (vidllm.data.synthetic.raycast), so depth is exact and every question's
answer is computed from the same geometry the video shows; objects that the sampled clip
(`cfg.clip_frames` frames over the valid ones) never shows are removed before anything is written.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vidllm.config import SynthConfig
from vidllm.data.scannet.annotations import TASKS, Instruction, load_annotations, write_annotations, write_split_lists
from vidllm.data.scannet.meta import apply_transform
from vidllm.data.scannet.sens import write_sens
from vidllm.data.scannet.writers import write_aggregation, write_label_map, write_ply_mesh, write_scene_info, write_segs
from vidllm.data.synthetic import room_layout
from vidllm.data.synthetic.questions import generate_instructions
from vidllm.data.synthetic.raycast import ROOM_FACES, cast_view, shade
from vidllm.data.synthetic.room_layout import CATEGORIES, COLORS, ROOM_CATEGORIES, RoomLayout
from vidllm.data.synthetic.scene import SyntheticScene, SynthObject

# A furniture piece counts as visible if, in at least one clip frame, it covers this share of the image
# inside the border below (which `prepare`'s crop to multiples of 14 may cut away).
# Bump when the rendered pixels change for the same config: cached data and pretrained
# teachers made from the old renders are then rebuilt (their digests include it).
RENDER_VERSION = 3
# Bump when the generated questions or annotation files change for the same config (2: VSI-Bench
# questions): datasets made by the old generator are then rebuilt (the synth digests include it).
QUESTIONS_VERSION = 2
MIN_VISIBLE_FRACTION = 0.002
CROP_BORDER_FRACTION = 0.05


@dataclass
class SyntheticDataset:
    root: Path
    scan_dir: Path
    annotations_dir: Path
    label_map: Path
    scenes: list[SyntheticScene]
    splits: dict[str, list[str]]
    instructions: dict[str, list[Instruction]]  # task -> all splits (scan2cap derived from scanrefer)

    def scene(self, scene_id: str) -> SyntheticScene:
        for scene in self.scenes:
            if scene.scene_id == scene_id:
                return scene
        raise KeyError(scene_id)


def intrinsic_matrix(width: int, height: int) -> np.ndarray:
    """[4,4] pinhole K with ScanNet's field of view (fx ≈ 0.9·width) and the centre at (w-1)/2."""
    focal = 0.9 * width
    k = np.eye(4)
    k[0, 0] = k[1, 1] = focal
    k[0, 2], k[1, 2] = (width - 1) / 2, (height - 1) / 2
    return k


def _surface_tables(layout: RoomLayout) -> tuple[np.ndarray, ...]:
    """Albedo [S,3], pattern period [S], pattern kind [S] and dark-cell brightness [S] per surface id
    (furniture first, then ROOM_FACES); furniture carries its class's pattern (CLASS_PATTERNS)."""
    room_rgb = {"floor": room_layout.FLOOR_RGB, "ceiling": room_layout.CEILING_RGB}
    albedo = [COLORS[f.color_name] for f in layout.furniture]
    albedo += [room_rgb.get(face, room_layout.WALL_RGB) for face in ROOM_FACES]
    period = [room_layout.CLASS_PATTERN_PERIOD] * len(layout.furniture) + [0.5] * len(ROOM_FACES)
    kind = [room_layout.CLASS_PATTERNS[f.label] for f in layout.furniture] + [0] * len(ROOM_FACES)
    dark = [room_layout.CLASS_PATTERN_DARK] * len(layout.furniture) + [0.9] * len(ROOM_FACES)
    return (np.asarray(albedo, dtype=np.float32), np.asarray(period, dtype=np.float32),
            np.asarray(kind, dtype=np.int64), np.asarray(dark, dtype=np.float32))


def clip_frame_ids(valid_frame_ids: list[int], clip_frames: int | None) -> list[int]:
    """The frames a clip of `clip_frames` shows: spread uniformly over the valid frames, first and
    last included (as `vidllm.data.frames.sample_frame_ids`); None = every valid frame."""
    if clip_frames is None or clip_frames >= len(valid_frame_ids):
        return list(valid_frame_ids)
    positions = np.round(np.linspace(0, len(valid_frame_ids) - 1, clip_frames)).astype(np.int64)
    return [valid_frame_ids[p] for p in positions]


def _render(layout: RoomLayout, camera_to_room: np.ndarray, k_color: np.ndarray, color_size: tuple[int, int],
            k_depth: np.ndarray, depth_size: tuple[int, int]):
    """Colour uint8 [N,H,W,3], depth float32 [N,h,w], and per frame the share of the image (inside
    the crop border) each furniture piece covers [N,M]."""
    boxes_lo = np.array([f.lo for f in layout.furniture], dtype=np.float32).reshape(-1, 3)
    boxes_hi = np.array([f.hi for f in layout.furniture], dtype=np.float32).reshape(-1, 3)
    room_lo, room_hi = np.zeros(3, dtype=np.float32), layout.size.astype(np.float32)
    albedo, checker, pattern, dark = _surface_tables(layout)
    same_grid = color_size == depth_size and np.allclose(k_color, k_depth)
    colors, depths, visible = [], [], []
    border_x, border_y = (math.ceil(CROP_BORDER_FRACTION * side) for side in color_size)
    for pose in camera_to_room:
        hits = cast_view(pose, k_color, *color_size, room_lo, room_hi, boxes_lo, boxes_hi)
        colors.append(shade(hits, albedo, checker, pattern, dark))
        inner = hits.surface[border_y:color_size[1] - border_y, border_x:color_size[0] - border_x]
        counts = np.bincount(inner.ravel(), minlength=len(layout.furniture) + len(ROOM_FACES))
        visible.append(counts[: len(layout.furniture)] / hits.surface.size)
        if not same_grid:
            hits = cast_view(pose, k_depth, *depth_size, room_lo, room_hi, boxes_lo, boxes_hi)
        depths.append(hits.depth)
    return np.stack(colors), np.stack(depths), np.asarray(visible).reshape(len(camera_to_room), -1)


def _grid_face(lo: np.ndarray, hi: np.ndarray, axis: int, side: int, spacing: float):
    """Vertices [V,3] and triangles [F,3] of one box face, subdivided to ≤ `spacing` metres.

    `side` 1 = the face at hi[axis] with normal +axis, 0 = the face at lo[axis] with normal -axis.
    Triangles wind counter-clockwise seen from the normal side.
    """
    b, c = (axis + 1) % 3, (axis + 2) % 3  # e_b x e_c = e_axis
    if side == 0:
        b, c = c, b
    nb = max(1, math.ceil((hi[b] - lo[b]) / spacing))
    nc = max(1, math.ceil((hi[c] - lo[c]) / spacing))
    sb, sc = np.linspace(lo[b], hi[b], nb + 1), np.linspace(lo[c], hi[c], nc + 1)
    gb, gc = np.meshgrid(sb, sc, indexing="ij")
    verts = np.zeros((gb.size, 3))
    verts[:, axis] = hi[axis] if side == 1 else lo[axis]
    verts[:, b], verts[:, c] = gb.ravel(), gc.ravel()
    idx = np.arange(gb.size).reshape(nb + 1, nc + 1)
    a0, a1, a2, a3 = idx[:-1, :-1].ravel(), idx[1:, :-1].ravel(), idx[1:, 1:].ravel(), idx[:-1, 1:].ravel()
    faces = np.concatenate([np.stack([a0, a1, a2], 1), np.stack([a0, a2, a3], 1)])
    return verts, faces


def _build_mesh(layout: RoomLayout, spacing: float):
    """Mesh in the room frame: vertices [V,3], colours [V,3] uint8, faces [F,3], segment id per
    vertex [V], and the segment ids of each furniture piece (one segment per face)."""
    verts, cols, faces, segs = [], [], [], []
    furniture_segments: list[list[int]] = []
    offset = 0
    segment = 0

    def add(v: np.ndarray, f: np.ndarray, rgb: tuple[float, float, float], seg: int) -> None:
        nonlocal offset
        cells = np.floor(v / 0.15).astype(np.int64).sum(-1)
        shade_v = np.where(cells % 2 == 0, 1.0, 0.9)[:, None]
        verts.append(v)
        cols.append(np.clip(np.round(np.asarray(rgb)[None] * shade_v * 255), 0, 255).astype(np.uint8))
        faces.append(f + offset)
        segs.append(np.full(len(v), seg, dtype=np.int64))
        offset += len(v)

    for piece in layout.furniture:
        ids = []
        for axis in range(3):
            for side in (0, 1):
                if axis == 2 and side == 0:
                    continue  # the underside touches the floor and is never seen
                v, f = _grid_face(piece.lo, piece.hi, axis, side, spacing)
                add(v, f, COLORS[piece.color_name], segment)
                ids.append(segment)
                segment += 1
        furniture_segments.append(ids)
    room_lo, room_hi = np.zeros(3), layout.size
    for axis, side, rgb in ((2, 0, room_layout.FLOOR_RGB), (0, 0, room_layout.WALL_RGB), (0, 1, room_layout.WALL_RGB),
                            (1, 0, room_layout.WALL_RGB), (1, 1, room_layout.WALL_RGB)):
        # Room faces look inward: build the opposite box face and flip its triangles.
        v, f = _grid_face(room_lo, room_hi, axis, side, spacing)
        add(v, f[:, ::-1], rgb, segment)
        segment += 1
    return (np.concatenate(verts), np.concatenate(cols), np.concatenate(faces), np.concatenate(segs),
            furniture_segments)


def generate_scene(scene_index: int, scan_dir: Path, cfg: SynthConfig, split: str,
                   keep_depths: bool = True) -> SyntheticScene:
    """Lay out, render and write one scene; returns its ground truth."""
    rng = np.random.default_rng([cfg.seed, scene_index])
    scene_id = f"scene{scene_index:04d}_00"
    layout = room_layout.sample_layout(rng, cfg.min_objects, cfg.max_objects)
    camera_to_room = room_layout.camera_walk(rng, layout, cfg.frames)
    k_color = intrinsic_matrix(cfg.width, cfg.height)
    k_depth = intrinsic_matrix(cfg.depth_width, cfg.depth_height)
    color_size, depth_size = (cfg.width, cfg.height), (cfg.depth_width, cfg.depth_height)

    # Lost-tracking frames are chosen first: readers drop them, so they cannot make an object visible.
    num_invalid = int(round(cfg.invalid_pose_fraction * cfg.frames))
    num_invalid = min(num_invalid, cfg.frames - 2)  # always keep two tracked frames
    invalid = sorted(int(i) for i in rng.choice(cfg.frames, size=num_invalid, replace=False)) if num_invalid else []
    shown = clip_frame_ids([i for i in range(cfg.frames) if i not in invalid], cfg.clip_frames)

    colors, depths, visible = _render(layout, camera_to_room, k_color, color_size, k_depth, depth_size)
    seen = visible[shown].max(axis=0)
    min_fraction = max(MIN_VISIBLE_FRACTION, 4.0 / (cfg.width * cfg.height))
    if np.any(seen < min_fraction):
        # Furniture the clip never shows would make counting answers unanswerable: drop it and
        # render again (removing boxes only uncovers others, so one pass is enough).
        layout = RoomLayout(layout.size, [f for f, v in zip(layout.furniture, seen) if v >= min_fraction])
        colors, depths, visible = _render(layout, camera_to_room, k_color, color_size, k_depth, depth_size)
    shown_visible = visible[shown] >= min_fraction  # [clip, M]; every kept piece is in some clip frame
    first_visible = {i: int(np.argmax(shown_visible[:, i])) for i in range(len(layout.furniture))}

    # World frame = the room frame rotated about z and shifted, as in raw ScanNet scans.
    axis_alignment = room_layout.random_axis_alignment(rng)
    world_from_room = np.linalg.inv(axis_alignment)
    camera_to_world = world_from_room @ camera_to_room

    stored_poses = camera_to_world.copy()
    stored_poses[invalid] = -np.inf  # ScanNet marks lost tracking with all -inf poses

    folder = scan_dir / scene_id
    folder.mkdir(parents=True, exist_ok=True)
    depth_mm = np.clip(np.round(depths * 1000.0), 0, 65535).astype(np.uint16)
    write_sens(folder / f"{scene_id}.sens", colors=list(colors), depths=list(depth_mm),
               camera_to_world=stored_poses, intrinsic_color=k_color, intrinsic_depth=k_depth,
               depth_shift=1000.0, timestamps=[int(i * 33_333) for i in range(cfg.frames)])
    write_scene_info(folder / f"{scene_id}.txt", axis_alignment=axis_alignment, intrinsic_color=k_color,
                     intrinsic_depth=k_depth, color_size=color_size, depth_size=depth_size, num_frames=cfg.frames,
                     scene_type=str(rng.choice(["Living room / Lounge", "Bedroom / Hotel", "Office", "Apartment"])))
    verts, vert_colors, faces, segs, furniture_segments = _build_mesh(layout, cfg.mesh_spacing)
    write_ply_mesh(folder / f"{scene_id}_vh_clean_2.ply", apply_transform(world_from_room, verts), vert_colors, faces)
    write_segs(folder / f"{scene_id}_vh_clean_2.0.010000.segs.json", scene_id, segs)
    write_aggregation(folder / f"{scene_id}.aggregation.json", scene_id,
                      [(i, f.label, furniture_segments[i]) for i, f in enumerate(layout.furniture)])

    objects = [SynthObject(i, f.label, f.color_name, f.box) for i, f in enumerate(layout.furniture)]
    return SyntheticScene(
        scene_id=scene_id, split=split, path=folder, camera_to_world=stored_poses,
        depths_m=depths.astype(np.float32) if keep_depths else None, intrinsic_color=k_color,
        intrinsic_depth=k_depth, axis_alignment=axis_alignment, objects=objects, room_size=layout.size.copy(),
        invalid_frame_ids=invalid, first_visible=first_visible,
    )


def split_scene_ids(num_scenes: int, val_fraction: float) -> list[str]:
    """Split name per scene: the last round(val_fraction·N) scenes (at least one when N ≥ 2) are val."""
    num_val = 0 if num_scenes < 2 else min(num_scenes - 1, max(1, round(val_fraction * num_scenes)))
    return ["train"] * (num_scenes - num_val) + ["val"] * num_val


def label_map_rows() -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for raw, (nyu_id, nyu_class, *_rest) in CATEGORIES.items():
        rows.append({"raw_category": raw, "category": raw, "nyu40id": nyu_id, "nyu40class": nyu_class})
    for raw, (nyu_id, nyu_class) in ROOM_CATEGORIES.items():
        rows.append({"raw_category": raw, "category": raw, "nyu40id": nyu_id, "nyu40class": nyu_class})
    return rows


def generate_dataset(out_dir: str | Path, cfg: SynthConfig, progress: bool = True,
                     keep_depths: bool = True) -> SyntheticDataset:
    """Generate `cfg.scenes` scenes plus annotations under `out_dir` (deterministic in cfg.seed)."""
    root = Path(out_dir)
    scan_dir, annotations_dir = root / "scans", root / "annotations"
    scan_dir.mkdir(parents=True, exist_ok=True)
    annotations_dir.mkdir(parents=True, exist_ok=True)
    label_map = root / "scannetv2-labels.combined.tsv"
    write_label_map(label_map, label_map_rows())

    split_names = split_scene_ids(cfg.scenes, cfg.val_fraction)
    scenes: list[SyntheticScene] = []
    per_split: dict[str, dict[str, list[Instruction]]] = {}
    for index in tqdm(range(cfg.scenes), desc="synth scenes", unit="scene", disable=not progress):
        scene = generate_scene(index, scan_dir, cfg, split_names[index], keep_depths=keep_depths)
        scenes.append(scene)
        scene_rng = np.random.default_rng([cfg.seed, index, 1])
        for task, items in generate_instructions(scene, scene_rng).items():
            per_split.setdefault(scene.split, {}).setdefault(task, []).extend(items)

    splits: dict[str, list[str]] = {}
    for scene in scenes:
        splits.setdefault(scene.split, []).append(scene.scene_id)
    write_split_lists(splits, annotations_dir)
    # The tasks `generate_instructions` makes, each in its published file(s): one per split, or one
    # over every scan whose splits come from scannetv2_{split}.txt.
    generated = {task for by_task in per_split.values() for task in by_task}
    own_file = [t.name for t in TASKS.values() if t.annotation_files and t.built_from is None and t.name in generated]
    for split, by_task in per_split.items():
        for task in own_file:
            if TASKS[task].split_files:
                write_annotations(task, by_task.get(task, []), annotations_dir, split=split)
    for task in own_file:
        if not TASKS[task].split_files:
            rows = [i for split in splits for i in per_split[split].get(task, [])]
            write_annotations(task, rows, annotations_dir)
    # Hand back exactly what the loaders read from the files (Scan2Cap is built from the
    # ScanRefer files, as for the real benchmark), so both routes give the same records.
    built = [t.name for t in TASKS.values() if t.built_from in own_file]
    instructions = {
        task: [i for split in splits for i in load_annotations(task, annotations_dir, split=split)]
        for task in (*own_file, *built)
    }
    return SyntheticDataset(root=root, scan_dir=scan_dir, annotations_dir=annotations_dir, label_map=label_map,
                            scenes=scenes, splits=splits, instructions=instructions)
