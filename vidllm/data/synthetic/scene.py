"""The synthetic generator's own ground truth for one scene (shared by the generator and the question writer)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np


class SynthObject(NamedTuple):
    object_id: int  # 0-based, = aggregation objectId
    label: str  # raw ScanNet category
    color_name: str
    box: np.ndarray  # [6] cx,cy,cz,dx,dy,dz in the axis-aligned frame


@dataclass
class SyntheticScene:
    """The generator's own ground truth for one scene."""

    scene_id: str
    split: str
    path: Path  # the raw scan folder
    camera_to_world: np.ndarray  # [N,4,4] world frame (before axis alignment); -inf rows = invalid
    depths_m: np.ndarray | None  # [N,h,w] float32 metres (exact, before mm quantisation)
    intrinsic_color: np.ndarray  # [4,4]
    intrinsic_depth: np.ndarray  # [4,4]
    axis_alignment: np.ndarray  # [4,4] world -> axis-aligned
    objects: list[SynthObject]
    room_size: np.ndarray  # [3] metres; the room spans [0, size] in the axis-aligned frame
    invalid_frame_ids: list[int] = field(default_factory=list)
    # object id -> position in the sampled clip of the first frame showing it (appearance order)
    first_visible: dict[int, int] = field(default_factory=dict)

    @property
    def camera_to_aligned(self) -> np.ndarray:
        """[N,4,4] poses in the axis-aligned frame (-inf rows stay -inf)."""
        return np.einsum("ij,njk->nik", self.axis_alignment, self.camera_to_world)
