"""Vid-LLM architecture (no Ray, Prefect, DVC or boto3 imports here).

Names are resolved lazily so `import vidllm.models` stays cheap:
`from vidllm.models import VidLLM` imports transformers only then.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "VidLLM": "vidllm.models.vidllm",
    "VisionOutput": "vidllm.models.vidllm",
    "VisionState": "vidllm.models.vidllm",
    "GenerationResult": "vidllm.models.vidllm",
    "SharedEncoder": "vidllm.models.encoder",
    "CrossTaskAdapter": "vidllm.models.cross_task_adapter",
    "ReconstructionBranch": "vidllm.models.reconstruction",
    "Patch3DEmbedding": "vidllm.models.patches3d",
    "SceneFrameHead": "vidllm.models.patches3d",
    "GroundingHeads": "vidllm.models.grounding",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'vidllm.models' has no attribute '{name}'")
