"""Sr3D: ReferIt3D's template-generated spatial referring expressions (protocol in `referit3d`)."""

from __future__ import annotations

from vidllm.data.scannet.annotations import SR3D
from vidllm.eval.benchmarks.referit3d import referit3d_spec
from vidllm.eval.benchmarks.registry import register

SPEC = register(referit3d_spec(SR3D, "Sr3D", paper=("77.8", "—", "72.2", "63.1", "—")))
