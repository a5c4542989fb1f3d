"""Training checkpoints: one directory per saved step, written atomically, verified on load.

A checkpoint `RUN_DIR/checkpoints/<stage>/step-NNNNNNNN/` holds model.safetensors (trainable module
state), optimizer.safetensors (keyed by parameter name whatever the strategy; param groups in its
metadata), rng.safetensors and state.json (step, python RNG, and the sha256 of the other files).
It is written under a temporary name (`vidllm.artifacts.files.atomic_dir`) and renamed into place;
resume loads the newest checkpoint that reads and verifies (`load_latest_intact`: a corrupt one is
skipped with a warning). What killed saves left is removed at the next start
(`remove_orphaned_checkpoint_dirs`). Model directories (the exported result) are
`vidllm.artifacts.model_dir`'s.
"""

from __future__ import annotations

import json
import logging
import random
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from vidllm.artifacts.files import atomic_dir
from vidllm.artifacts.model_dir import file_sha256
from vidllm.errors import DataError

log = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
RNG_FILE = "rng.safetensors"
STATE_FILE = "state.json"
_STEP_DIR = re.compile(r"^step-(\d{8})$")
_TMP_STEP_DIR = re.compile(r"^\.step-\d{8}\.(tmp|old)-")  # what an interrupted save_checkpoint leaves


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, Tensor], str]:
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for param_id, values in state["state"].items():
        for name, value in values.items():
            if torch.is_tensor(value):
                tensors[f"{param_id}\t{name}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(param_id), {})[name] = value
    meta = json.dumps({"param_groups": state["param_groups"], "scalars": scalars,
                       "id_types": {str(k): type(k).__name__ for k in state["state"]}})
    return tensors, meta


def _unflatten_optimizer(tensors: dict[str, Tensor], meta: str) -> dict[str, Any]:
    info = json.loads(meta)
    cast = {k: (int if t == "int" else str) for k, t in info["id_types"].items()}
    state: dict[Any, dict[str, Any]] = {}
    for key, value in tensors.items():
        param_id, name = key.split("\t", 1)
        state.setdefault(cast[param_id](param_id), {})[name] = value
    for param_id, values in info["scalars"].items():
        state.setdefault(cast[param_id](param_id), {}).update(values)
    return {"state": state, "param_groups": info["param_groups"]}


def save_checkpoint(out_dir: Path, step: int, model_state: dict[str, Tensor], optimizer_state: dict[str, Any],
                    extra: dict[str, Any] | None = None) -> Path:
    """Write a checkpoint directory atomically (temp dir beside it, then rename)."""
    from vidllm.artifacts.model_dir import _dedupe

    with atomic_dir(out_dir) as tmp:
        weights, tied = _dedupe(model_state)
        save_file(weights, str(tmp / MODEL_FILE), metadata={"tied": json.dumps(tied)})
        opt_tensors, opt_meta = _flatten_optimizer(optimizer_state)
        save_file(opt_tensors, str(tmp / OPTIMIZER_FILE), metadata={"optimizer": opt_meta})
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state()
        save_file(rng, str(tmp / RNG_FILE))
        state = {"step": step, "python_rng": _jsonable_random_state(), **(extra or {}),
                 "sha256": {name: file_sha256(tmp / name) for name in (MODEL_FILE, OPTIMIZER_FILE, RNG_FILE)}}
        (tmp / STATE_FILE).write_text(json.dumps(state))
    return out_dir


def _jsonable_random_state() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def load_checkpoint(ckpt_dir: Path) -> dict[str, Any]:
    """{step, model, optimizer, rng, python_rng, ...} from a checkpoint directory; DataError if broken
    (a missing, truncated or unparsable file, or one whose sha256 differs from state.json's)."""
    from safetensors import SafetensorError, safe_open

    try:
        state = json.loads((ckpt_dir / STATE_FILE).read_text())
        if not isinstance(state, dict) or "step" not in state:
            raise ValueError(f"{STATE_FILE} has no step")
        for name, expected in (state.get("sha256") or {}).items():  # older checkpoints have no digests
            if file_sha256(ckpt_dir / name) != expected:
                raise ValueError(f"{name} does not match its sha256 in {STATE_FILE}")
        model = load_file(str(ckpt_dir / MODEL_FILE))
        with safe_open(str(ckpt_dir / MODEL_FILE), "pt") as f:
            tied = json.loads((f.metadata() or {}).get("tied", "{}"))
        for alias, source in tied.items():
            model[alias] = model[source]
        with safe_open(str(ckpt_dir / OPTIMIZER_FILE), "pt") as f:
            opt_meta = f.metadata()["optimizer"]
            opt_tensors = {k: f.get_tensor(k) for k in f.keys()}
        rng = load_file(str(ckpt_dir / RNG_FILE))
        optimizer = _unflatten_optimizer(opt_tensors, opt_meta)
    except (OSError, KeyError, ValueError, TypeError, SafetensorError) as exc:
        raise DataError(ckpt_dir, f"unreadable training checkpoint ({exc})") from None
    state.pop("sha256", None)
    return {**state, "model": model, "optimizer": optimizer, "rng": rng}


def checkpoint_problems(ckpt_dir: Path) -> list[str]:
    """What is wrong with a training checkpoint directory without loading it: a missing or
    unparsable state.json, a missing file, or one whose sha256 differs from state.json's."""
    try:
        state = json.loads((ckpt_dir / STATE_FILE).read_text())
    except (OSError, ValueError) as exc:
        return [f"{STATE_FILE}: unreadable ({exc.__class__.__name__})"]
    digests = state.get("sha256") if isinstance(state, dict) else None
    if not isinstance(digests, dict):
        return [f"{STATE_FILE} records no digests (written before they were recorded)"]
    problems = []
    for name in (MODEL_FILE, OPTIMIZER_FILE, RNG_FILE):
        if not (ckpt_dir / name).is_file():
            problems.append(f"{name}: missing")
        elif name in digests and file_sha256(ckpt_dir / name) != digests[name]:
            problems.append(f"{name}: sha256 differs from {STATE_FILE} (modified or corrupted)")
    return problems


def step_checkpoints(checkpoints_dir: Path) -> list[Path]:
    """Every `step-NNNNNNNN` directory (complete or not), newest first."""
    if not checkpoints_dir.is_dir():
        return []
    found = sorted((int(m.group(1)), p) for p in checkpoints_dir.iterdir() if (m := _STEP_DIR.match(p.name)))
    return [p for _, p in reversed(found)]


def load_latest_intact(checkpoints_dir: Path) -> tuple[Path | None, dict[str, Any] | None]:
    """(path, `load_checkpoint` dict) of the newest checkpoint that loads; a corrupt newer one is
    skipped with a logged warning naming it. (None, None) if there is none; DataError if there are
    checkpoints but none of them is intact."""
    candidates = step_checkpoints(checkpoints_dir)
    for path in candidates:
        try:
            return path, load_checkpoint(path)
        except DataError as exc:
            log.warning("skipping corrupt checkpoint %s; falling back to an older one", exc)
    if candidates:
        raise DataError(checkpoints_dir, f"no intact checkpoint ({len(candidates)} corrupt, see the warnings): "
                                         "start over with `vidllm train --fresh`")
    return None, None


def remove_orphaned_checkpoint_dirs(checkpoints_dir: Path) -> list[Path]:
    """Delete the temporary directories (`.step-NNNNNNNN.tmp-*`) of saves that were killed. Returns them."""
    if not checkpoints_dir.is_dir():
        return []
    removed = [p for p in checkpoints_dir.iterdir() if _TMP_STEP_DIR.match(p.name)]
    for path in removed:
        log.warning("%s: removing the temporary directory of an interrupted checkpoint save", path)
        shutil.rmtree(path, ignore_errors=True)
    return removed


def latest_checkpoint(checkpoints_dir: Path) -> Path | None:
    """The complete `step-NNNNNNNN` directory with the highest step (temp dirs are ignored)."""
    if not checkpoints_dir.is_dir():
        return None
    found = sorted((int(m.group(1)), p) for p in checkpoints_dir.iterdir()
                   if (m := _STEP_DIR.match(p.name)) and (p / STATE_FILE).is_file())
    return found[-1][1] if found else None


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def prune_checkpoints(checkpoints_dir: Path, keep: int) -> None:
    found = sorted(p for p in checkpoints_dir.iterdir() if _STEP_DIR.match(p.name))
    for old in found[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
