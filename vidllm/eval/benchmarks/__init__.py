"""The benchmarks: one module each, holding its `BenchmarkSpec` (registered on import of this
package), its scorer and its report columns.

- `registry`: `BenchmarkSpec` (a data-layer `Task` plus what evaluation needs), `register` / `get`,
  and the derived lists of benchmark names.
- `tables`: the report-table model and the paper's tables several benchmarks share.
- `ground_truth`: object boxes, detector proposals and reference answers, shared by scorers.
- `referit3d`: the protocol Nr3D and Sr3D share.
- `pose_sets`: the camera-pose protocol Co3Dv2 and RealEstate10K share.

Registration order is the order `vidllm evaluate` runs the benchmarks and metrics.json lists them:
the built-in ones in the order imported below, then every other module of this package, by name.
To add a benchmark, add its module here: nothing else changes.
"""

import importlib
import pkgutil

from vidllm.eval.benchmarks import scanqa, sqa3d, scanrefer, multi3drefer, scan2cap, nr3d, sr3d, recon  # noqa: F401, I001
from vidllm.eval.benchmarks import co3d, re10k, nyuv2  # noqa: F401, I001  (own datasets, after recon in Tables 7-8)
from vidllm.eval.benchmarks.ground_truth import SceneBoxes, load_boxes_from_scans, load_boxes_json, load_proposals
from vidllm.eval.benchmarks.multi3drefer import score_multi3drefer
from vidllm.eval.benchmarks.recon import score_recon
from vidllm.eval.benchmarks.referit3d import score_referit3d
from vidllm.eval.benchmarks.registry import (
    BENCHMARKS,
    BenchmarkSpec,
    DatasetSpec,
    ScoreInputs,
    box_benchmarks,
    choices,
    dataset_benchmarks,
    geometry_benchmarks,
    get,
    names,
    register,
    specs,
    text_benchmarks,
    unregister,
)
from vidllm.eval.benchmarks.scan2cap import score_scan2cap
from vidllm.eval.benchmarks.scanqa import SCANQA_FAMILIES, scanqa_family, score_scanqa
from vidllm.eval.benchmarks.scanrefer import score_scanrefer
from vidllm.eval.benchmarks.sqa3d import score_sqa3d

# Shared code, no spec of their own.
SUPPORT_MODULES = frozenset({"registry", "tables", "ground_truth", "referit3d", "pose_sets"})

for _module in sorted(info.name for info in pkgutil.iter_modules(__path__)):
    if _module not in SUPPORT_MODULES:
        importlib.import_module(f"{__name__}.{_module}")  # the built-in ones above are already loaded

__all__ = [
    "BENCHMARKS", "SCANQA_FAMILIES", "BenchmarkSpec", "DatasetSpec", "SceneBoxes", "ScoreInputs", "box_benchmarks",
    "choices", "dataset_benchmarks",
    "geometry_benchmarks", "get", "load_boxes_from_scans", "load_boxes_json", "load_proposals", "names", "register",
    "scanqa_family", "score_multi3drefer", "score_recon", "score_referit3d", "score_scan2cap", "score_scanqa",
    "score_scanrefer", "score_sqa3d", "specs", "text_benchmarks", "unregister",
]
