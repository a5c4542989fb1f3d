"""Evaluation protocols: what of the ground truth a prediction was allowed to use, declared.

Every prediction file's `.meta.json`, every score result and every report section names one:

- **P0**: ground-truth geometry given. The 3D patches are placed with the sample's GT depth and
  poses (the scene frame is then the GT one), so the GT first-camera translation is exact.
- **P1**: predicted geometry; the model's gravity-aligned scene frame is moved to the GT first
  camera centre (translation only: predicted rotation and metric scale errors still count). The
  setting VG-LLM reports; formerly named `first_camera_gt`.
- **P2**: predicted geometry and nothing from the ground truth but a declared Sim(3) alignment of
  the predicted reconstruction to it: `umeyama_sim3` over predicted vs GT camera centres (≥ 3
  non-collinear frames), applied to predicted boxes and points before scoring. Box sizes are
  scaled, boxes stay axis-aligned. Formerly named `umeyama_sim3`.

plus the proposal source grounding selects among (and Scan2Cap captions): "own" (the model's
proposal head, from the video alone), "external" (a detector's boxes read by
`vidllm.eval.benchmarks.ground_truth.load_proposals`) or "gt" (the ground-truth instances).

A P1 prediction file can be rescored under P2 and back (`rescore_map`): `vidllm predict`
records per scene the map it applied and both sets of camera centres (meta "scene_frames").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from vidllm.errors import DataError, VidLLMError

PROTOCOLS: tuple[str, ...] = ("P0", "P1", "P2")
LEGACY_NAMES: dict[str, str] = {"first_camera_gt": "P1", "umeyama_sim3": "P2"}
CARDS: dict[str, str] = {
    "P0": "ground-truth geometry given (3D patches placed with GT depth and poses)",
    "P1": "predicted geometry, scene frame moved to the ground-truth first camera (comparable to VG-LLM)",
    "P2": "predicted geometry, Sim(3) of predicted to ground-truth camera centres (Umeyama) applied before scoring",
}
PROPOSAL_SOURCES: tuple[str, ...] = ("own", "external", "gt")
PROPOSAL_CARDS: dict[str, str] = {"own": "own proposals", "external": "external proposals",
                                  "gt": "ground-truth instances"}


PROTOCOL_HELP = "; ".join(f"{name} = {text}" for name, text in CARDS.items())  # the CLI options' help


def protocol_argument(value: str) -> str:
    """argparse `type` of --protocol: the former names become P1 / P2; argparse's choices reject the rest."""
    return LEGACY_NAMES.get(value, value)


def canonical_protocol(name: str) -> str:
    """"P1" / "p1" / "first_camera_gt" → "P1"; VidLLMError for anything else."""
    value = LEGACY_NAMES.get(name, name.upper() if isinstance(name, str) else name)
    if value not in PROTOCOLS:
        raise VidLLMError(f"unknown evaluation protocol '{name}' (choose from {', '.join(PROTOCOLS)})")
    return value


def proposal_source(proposals: str | None) -> str | None:
    """The source a `--proposals` value names: "own", "gt", a path = "external"; None stays None."""
    if proposals is None or proposals in ("own", "gt", "external"):
        return proposals
    return "external"


def card(protocol: str, proposals: str | None = None) -> str:
    """The section heading of a protocol card, e.g. "P1 — predicted geometry, … · own proposals"."""
    text = f"{protocol} — {CARDS.get(protocol, 'undeclared protocol')}"
    return text + (f" · {PROPOSAL_CARDS.get(proposals, proposals)}" if proposals else "")


def card_key(protocol: str, proposals: str | None) -> str:
    """metrics.json "by_protocol" key of one evaluation: "P1/own"."""
    return f"{protocol}/{proposals or '-'}"


@dataclass
class WorldMap:
    """Scene frame → ScanNet axis-aligned world: x_world = scale · R @ x + t."""

    scale: float
    rotation: np.ndarray  # [3,3]
    translation: np.ndarray  # [3]

    def points(self, xyz: np.ndarray) -> np.ndarray:
        return self.scale * np.asarray(xyz, dtype=np.float64) @ self.rotation.T + self.translation

    def boxes(self, boxes: np.ndarray) -> np.ndarray:
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 6)
        return np.concatenate([self.points(boxes[:, :3]), self.scale * boxes[:, 3:]], axis=1)

    def poses(self, camera_to_scene: np.ndarray) -> np.ndarray:
        out = np.array(camera_to_scene, dtype=np.float64)
        out[:, :3, :3] = self.rotation @ out[:, :3, :3]
        out[:, :3, 3] = self.points(out[:, :3, 3])
        return out

    def inverse(self) -> WorldMap:
        rot_t = self.rotation.T
        return WorldMap(1.0 / self.scale, rot_t, -(rot_t @ self.translation) / self.scale)

    def after(self, first: WorldMap) -> WorldMap:
        """The map applying `first`, then this one."""
        return WorldMap(self.scale * first.scale, self.rotation @ first.rotation,
                        self.scale * self.rotation @ first.translation + self.translation)

    def to_json(self) -> dict[str, Any]:
        return {"scale": round(float(self.scale), 8), "rotation": np.round(self.rotation, 8).tolist(),
                "translation": np.round(self.translation, 6).tolist()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> WorldMap:
        return cls(float(data["scale"]), np.asarray(data["rotation"], dtype=np.float64).reshape(3, 3),
                   np.asarray(data["translation"], dtype=np.float64).reshape(3))


def world_map_from_centers(protocol: str, pred_centers: np.ndarray, gt_centers: np.ndarray) -> WorldMap:
    """The protocol's scene → world map from predicted (scene frame) and GT (world) camera centres `[S,3]`."""
    protocol = canonical_protocol(protocol)
    pred_centers = np.asarray(pred_centers, dtype=np.float64).reshape(-1, 3)
    gt_centers = np.asarray(gt_centers, dtype=np.float64).reshape(-1, 3)
    if protocol in ("P0", "P1"):
        return WorldMap(1.0, np.eye(3), gt_centers[0] - pred_centers[0])
    import torch

    from vidllm.geometry import umeyama_sim3

    src, dst = torch.as_tensor(pred_centers), torch.as_tensor(gt_centers)
    if len(src) < 3 or torch.linalg.matrix_rank(src - src.mean(0), tol=1e-6) < 2:
        raise VidLLMError("protocol P2 needs at least 3 non-collinear predicted camera centres")
    scale, rot, trans = umeyama_sim3(src, dst)
    return WorldMap(float(scale), rot.numpy(), trans.numpy())


def scene_to_world_map(protocol: str, pred_camera_to_scene: np.ndarray, gt_camera_to_aligned: np.ndarray) -> WorldMap:
    """`world_map_from_centers` from camera poses `[S,4,4]` (predicted: camera → scene frame)."""
    return world_map_from_centers(protocol, np.asarray(pred_camera_to_scene)[:, :3, 3],
                                  np.asarray(gt_camera_to_aligned)[:, :3, 3])


def scene_frame_record(applied: WorldMap, pred_centers: np.ndarray, gt_centers: np.ndarray) -> dict[str, Any]:
    """What predict records per scene (meta "scene_frames") so scoring can change the protocol."""
    return {**applied.to_json(), "camera_centers": np.round(np.asarray(pred_centers, float), 6).tolist(),
            "camera_centers_gt": np.round(np.asarray(gt_centers, float), 6).tolist()}


def rescore_map(record: Mapping[str, Any], protocol: str, where: Any = "predictions meta") -> WorldMap:
    """World (as predicted) → world (under `protocol`): the recorded map undone, `protocol`'s applied."""
    try:
        applied = WorldMap.from_json(record)
        pred, gt = record["camera_centers"], record["camera_centers_gt"]
    except (KeyError, TypeError, ValueError):
        raise DataError(where, "a scene_frames entry needs scale, rotation, translation, camera_centers, "
                               "camera_centers_gt") from None
    return world_map_from_centers(protocol, pred, gt).after(applied.inverse())
