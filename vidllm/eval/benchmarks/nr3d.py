"""Nr3D: ReferIt3D's natural (human-written) referring expressions (protocol in `referit3d`)."""

from __future__ import annotations

from vidllm.data.scannet.annotations import NR3D
from vidllm.eval.benchmarks.referit3d import referit3d_spec
from vidllm.eval.benchmarks.registry import register

SPEC = register(referit3d_spec(NR3D, "Nr3D", paper=("65.4", "—", "57.9", "61.9", "—")))
