"""Procedural furnished rooms and camera walks, in the room's z-up (ScanNet axis-aligned) frame.

A room is an axis-aligned box [0,Lx]x[0,Ly]x[0,Lz]; furniture are labelled, coloured,
axis-aligned boxes standing on the floor. The camera walks an ellipse around the room centre
looking inward, and furniture is kept clear of that walk so the camera never enters a box.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# raw ScanNet category -> (nyu40 id, nyu40 class, plural, base size dx,dy,dz in metres, weight)
CATEGORIES: dict[str, tuple[int, str, str, tuple[float, float, float], float]] = {
    "chair": (5, "chair", "chairs", (0.5, 0.5, 0.9), 3.0),
    "table": (7, "table", "tables", (1.4, 0.8, 0.75), 2.0),
    "cabinet": (3, "cabinet", "cabinets", (0.9, 0.5, 1.0), 1.5),
    "bed": (4, "bed", "beds", (2.0, 1.5, 0.55), 1.0),
    "sofa": (6, "sofa", "sofas", (1.9, 0.9, 0.8), 1.0),
    "bookshelf": (10, "bookshelf", "bookshelves", (1.0, 0.35, 1.8), 1.0),
    "desk": (14, "desk", "desks", (1.2, 0.6, 0.75), 1.0),
    "nightstand": (32, "night stand", "nightstands", (0.5, 0.45, 0.6), 1.0),
    "box": (29, "box", "boxes", (0.4, 0.4, 0.4), 1.5),
    "trash can": (39, "otherprop", "trash cans", (0.35, 0.35, 0.5), 1.0),
    "refrigerator": (24, "refridgerator", "refrigerators", (0.8, 0.75, 1.8), 0.5),
}
# Each class has its own surface pattern kind (vidllm.data.synthetic.raycast.PATTERN_*) at one period, as real
# objects of a class share an appearance: without it a class showed only as a box size, which no
# image patch can see. One period for all classes, so distance (which rescales a period) does not
# turn one class's pattern into another's. Colour names stay recoverable (the hue is unchanged).
CLASS_PATTERN_PERIOD = 0.12  # metres
CLASS_PATTERNS: dict[str, int] = {
    "chair": 0, "table": 1, "cabinet": 2, "bed": 3, "sofa": 4, "bookshelf": 5, "desk": 6, "nightstand": 7,
    "box": 8, "trash can": 9, "refrigerator": 10,
}
CLASS_PATTERN_DARK = 0.78  # dark-cell brightness on furniture (room surfaces keep a faint 0.9)
# Room surfaces: raw category -> (nyu40 id, nyu40 class); only used for the label map.
ROOM_CATEGORIES = {"wall": (1, "wall"), "floor": (2, "floor"), "ceiling": (22, "ceiling")}

# Saturated, well-separated colours so a colour name is recoverable from the shaded pixels.
COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.80, 0.12, 0.12),
    "green": (0.16, 0.62, 0.20),
    "blue": (0.16, 0.28, 0.80),
    "yellow": (0.90, 0.80, 0.15),
    "orange": (0.95, 0.50, 0.10),
    "purple": (0.50, 0.20, 0.66),
    "pink": (0.95, 0.52, 0.72),
    "black": (0.10, 0.10, 0.10),
    "white": (0.93, 0.93, 0.93),
}
FLOOR_RGB = (0.62, 0.52, 0.40)
WALL_RGB = (0.74, 0.78, 0.74)
CEILING_RGB = (0.90, 0.90, 0.88)

PATH_SCALE = 0.30  # camera ellipse semi-axes as a fraction of the room size
PATH_CLEARANCE = 0.4  # metres between the camera walk and any furniture footprint
OBJECT_GAP = 0.15  # metres between furniture footprints


@dataclass
class Furniture:
    label: str
    color_name: str
    lo: np.ndarray  # [3] min corner, room frame
    hi: np.ndarray  # [3] max corner

    @property
    def box(self) -> np.ndarray:
        """[6] cx,cy,cz,dx,dy,dz."""
        return np.concatenate([(self.lo + self.hi) / 2, self.hi - self.lo])


@dataclass
class RoomLayout:
    size: np.ndarray  # [3] Lx, Ly, Lz
    furniture: list[Furniture]

    @property
    def center(self) -> np.ndarray:
        return self.size / 2


def camera_path_points(size: np.ndarray, count: int = 96) -> np.ndarray:
    """[count,2] xy samples of the camera walk (an ellipse around the room centre)."""
    angles = np.linspace(0, 2 * np.pi, count, endpoint=False)
    return size[:2] / 2 + np.stack([np.cos(angles), np.sin(angles)], -1) * size[:2] * PATH_SCALE


def _rect_point_distance(lo: np.ndarray, hi: np.ndarray, points: np.ndarray) -> np.ndarray:
    delta = np.maximum(np.maximum(lo[None] - points, points - hi[None]), 0.0)
    return np.linalg.norm(delta, axis=-1)


def sample_layout(rng: np.random.Generator, min_objects: int, max_objects: int) -> RoomLayout:
    """A room with between min_objects and max_objects pieces of furniture (fewer only if they
    do not fit). One category is repeated 2-3 times so counting, distractors and multi-target
    references always have material."""
    size = np.array([rng.uniform(5.0, 7.5), rng.uniform(5.0, 7.5), rng.uniform(2.5, 3.0)])
    path = camera_path_points(size)
    target_count = int(rng.integers(min_objects, max_objects + 1))
    names = list(CATEGORIES)
    weights = np.array([CATEGORIES[n][4] for n in names])
    weights /= weights.sum()
    repeated = str(rng.choice(["chair", "chair", "box", "cabinet", "table", "trash can"]))
    labels = [repeated] * min(target_count, int(rng.integers(2, 4)))
    while len(labels) < target_count:
        labels.append(str(rng.choice(names, p=weights)))
    color_names = list(COLORS)
    furniture: list[Furniture] = []
    for label in labels:
        base = np.array(CATEGORIES[label][3]) * rng.uniform(0.85, 1.15, size=3)
        if rng.random() < 0.5:
            base[[0, 1]] = base[[1, 0]]
        # Repeated objects share a colour half the time so "the red chairs" can be multi-target.
        same = [f for f in furniture if f.label == label]
        color = same[0].color_name if same and rng.random() < 0.5 else str(rng.choice(color_names))
        for _ in range(200):
            lo_xy = rng.uniform(0.05, size[:2] - base[:2] - 0.05)
            lo = np.array([lo_xy[0], lo_xy[1], 0.0])
            hi = lo + base
            if _rect_point_distance(lo[:2], hi[:2], path).min() < PATH_CLEARANCE:
                continue
            if any(np.all(lo[:2] < f.hi[:2] + OBJECT_GAP) and np.all(f.lo[:2] < hi[:2] + OBJECT_GAP) for f in furniture):
                continue
            furniture.append(Furniture(label, color, lo, hi))
            break
    return RoomLayout(size=size, furniture=furniture)


def look_at(position: np.ndarray, target: np.ndarray, up: np.ndarray = np.array([0.0, 0.0, 1.0])) -> np.ndarray:
    """[4,4] camera-to-room pose, OpenCV camera axes (x right, y down, z forward)."""
    forward = target - position
    forward = forward / np.linalg.norm(forward)
    right = np.cross(forward, up)
    right = right / np.linalg.norm(right)
    down = np.cross(forward, right)
    pose = np.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = right, down, forward, position
    return pose


def camera_walk(rng: np.random.Generator, layout: RoomLayout, num_frames: int) -> np.ndarray:
    """[N,4,4] camera-to-room poses: one loop around the room with varied height and pitch."""
    start = rng.uniform(0, 2 * np.pi)
    direction = rng.choice([-1.0, 1.0])
    phase = rng.uniform(0, 2 * np.pi, size=3)
    center = layout.center
    poses = []
    for index in range(num_frames):
        angle = start + direction * 2 * np.pi * index / num_frames
        xy = center[:2] + np.array([np.cos(angle), np.sin(angle)]) * layout.size[:2] * PATH_SCALE
        height = 1.45 + 0.25 * np.sin(2 * angle + phase[0])
        # Mostly look across the room, but swing up to ±70° sideways so the walls and the
        # furniture near them are seen from close by too; aim low enough to see the furniture.
        inward = center[:2] - xy
        swing = np.deg2rad(70.0) * np.sin(2 * angle + phase[1])
        c, s = np.cos(swing), np.sin(swing)
        view = np.array([c * inward[0] - s * inward[1], s * inward[0] + c * inward[1]])
        target = np.array([xy[0] + view[0], xy[1] + view[1], 0.6 + 0.2 * np.sin(3 * angle + phase[2])])
        poses.append(look_at(np.array([xy[0], xy[1], height]), target))
    return np.stack(poses)


def random_axis_alignment(rng: np.random.Generator) -> np.ndarray:
    """[4,4] world->axis-aligned transform: rotation about z plus a translation (ScanNet-like)."""
    angle = rng.uniform(-np.pi, np.pi)
    c, s = np.cos(angle), np.sin(angle)
    align = np.eye(4)
    align[:2, :2] = [[c, -s], [s, c]]
    align[:3, 3] = [rng.uniform(-3, 3), rng.uniform(-3, 3), rng.uniform(-0.1, 0.1)]
    return align
