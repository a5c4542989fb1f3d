"""`vidllm ablate`: train several variants of one recipe on the same data, seeds and steps, and
score each on the held-out scenes (a Table 6-style comparison).

Only a comparison shows what the model learns from the video: a `blind` control (the LLM reads
no vision tokens) answers from language priors alone, and `gt_geometry` (3D patches placed with
ground-truth depth and poses) bounds what better reconstruction could give.

Layout under `work_dir`:
  data/ (synthetic ScanNet-format scenes), shards/, teacher_cache/ — shared by all variants
  teachers/ — random-init teachers, or with `teachers.miniatures` teachers/miniature/: the miniature
    VGGT + teachers (`vidllm.pretrain.fill_teachers`, the flow's rule), shared by all variants
  stage1/<digest>/ — one Stage-1 model per distinct Stage-1 configuration (variants share them)
  variants/<name>/ — each variant's run directory (config, checkpoints, model, eval/metrics.json)
  ablation.json — every variant's headline metrics, written atomically after each variant

A variant whose result is present for the same configuration and data is reused, not retrained.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vidllm.artifacts import run_dir as rd
from vidllm.artifacts.model_dir import has_weights
from vidllm.config import VidLLMConfig, digest, load_config
from vidllm.errors import VidLLMError

log = logging.getLogger(__name__)

ABLATION_FILE = "ablation.json"


@dataclass(frozen=True)
class Variant:
    name: str
    overrides: tuple[str, ...]
    description: str


# The named variants, in table order. Each is the recipe plus these overrides.
VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("full", (), "the model as the recipe defines it"),
    Variant("blind", ("model.vision_tokens=false",), "no vision tokens reach the LLM (language priors only)"),
    Variant("gt_geometry", ("model.patch_geometry=ground_truth",),
            "3D patches placed with ground-truth depth and poses (upper bound)"),
    Variant("no_cta", ("model.cta.variant=none",), "w/o Cross-Task Adapter (both branches read the encoder)"),
    Variant("no_md", ("model.metric_depth.enabled=false",), "w/o metric depth (no real-scale alignment)"),
    Variant("single_stage", ("train.single_stage=true",), "no Stage-1 distillation"),
)}

def columns() -> tuple[tuple[str, str, str, str | None], ...]:
    """Table columns: (header, benchmark, metric, subgroup or None), each benchmark's `ablation_columns`."""
    from vidllm.eval.benchmarks import registry

    return tuple((c.header, spec.name, c.metric, c.group) for spec in registry.specs() for c in spec.ablation_columns)


def ablation_benchmarks() -> tuple[str, ...]:
    """The benchmarks each variant is evaluated on: those with a column in the table."""
    return tuple(dict.fromkeys(benchmark for _, benchmark, _, _ in columns()))


def _digest(*parts: Any) -> str:
    return digest(*parts)[:16]


def variant_config(recipe: str, variant: str, overrides: Sequence[str] = (), yaml_path: str | None = None
                   ) -> VidLLMConfig:
    if variant not in VARIANTS:
        raise VidLLMError(f"unknown ablation variant '{variant}' (choose from {', '.join(VARIANTS)})")
    return load_config(recipe, yaml_path, [*overrides, *VARIANTS[variant].overrides])


def headline(metrics: dict[str, Any]) -> dict[str, float | None]:
    """The table's numbers from a metrics.json mapping (None where a benchmark is absent)."""
    out: dict[str, float | None] = {}
    for header, benchmark, metric, subgroup in columns():
        entry = metrics.get(benchmark) or {}
        source = (entry.get("subgroups") or {}).get(subgroup, {}) if subgroup else entry.get("metrics") or {}
        value = source.get(metric)
        out[header] = None if value is None else float(value)
    return out


def format_table(result: dict[str, Any]) -> str:
    """Markdown table of an `ablation.json` mapping: one row per variant, percentages except δ1/AUC."""
    headers = [h for h, *_ in columns()]
    lines = ["| variant | " + " | ".join(headers) + " |", "|---|" + "---:|" * len(headers)]
    for name, entry in result["variants"].items():
        cells = []
        for header in headers:
            value = entry["table"].get(header)
            cells.append("–" if value is None else f"{100 * value:.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _prepare_data(cfg: VidLLMConfig, work: Path, progress: bool) -> dict[str, str]:
    """Synthetic scenes → shards → teacher features, shared by every variant (reused when present)."""
    from vidllm.data.prepare import prepare_shards
    from vidllm.data.shards.format import read_manifest
    from vidllm.data.synthetic.generate import generate_dataset
    from vidllm.data.teacher_cache import build_teacher_cache
    from vidllm.pretrain import fill_teachers

    data, shards, cache = work / "data", work / "shards", work / "teacher_cache"
    stamp = work / "data.digest"
    from vidllm.data.synthetic.generate import QUESTIONS_VERSION, RENDER_VERSION

    data_digest = _digest(cfg.data.synth.model_dump(mode="json"), cfg.data.prep.model_dump(mode="json"),
                          RENDER_VERSION, QUESTIONS_VERSION)
    if not (stamp.is_file() and stamp.read_text() == data_digest and read_manifest(str(shards))):
        for stale in (data, shards, cache):
            if stale.exists():
                shutil.rmtree(stale)
        log.info("ablate: generating %d synthetic scenes", cfg.data.synth.scenes)
        generate_dataset(data, cfg.data.synth, progress=progress, keep_depths=False)
        summary = prepare_shards(str(data / "scans"), str(data / "annotations"), str(shards), cfg.data.prep,
                                 label_map=str(data / "scannetv2-labels.combined.tsv"), progress=progress)
        if summary.failed:
            raise VidLLMError(f"ablate: {len(summary.failed)} scene(s) failed to prepare: "
                              + "; ".join(f"{k}: {v}" for k, v in summary.failed.items()))
        stamp.write_text(data_digest)
    if cfg.teachers.miniatures:
        log.info("ablate: miniature teachers (trained once, then reused)")
    filled = fill_teachers(cfg, work / "teachers", progress=progress)
    teachers, vggt = filled.teachers, filled.model.init.vggt
    build_teacher_cache(str(shards), str(cache), teachers, progress=progress)  # present keys are reused
    return {"data": str(data), "shards": str(shards), "cache": str(cache),
            "geometry_teacher": str(teachers.geometry), "semantic_teacher": str(teachers.semantic),
            "vggt": None if vggt is None else str(vggt)}


def _stage1_key(cfg: VidLLMConfig) -> str:
    """What a Stage-1 model depends on: the student's encoder + CTA, the teachers, the data, the schedule."""
    train = cfg.train
    return _digest(cfg.model.encoder.model_dump(mode="json"), cfg.model.cta.model_dump(mode="json"),
                   cfg.model.image_size, cfg.model.frames, cfg.model.init.vggt, cfg.teachers.model_dump(mode="json"),
                   train.stage1.model_dump(mode="json"), train.distill_lambda, train.distill_teachers,
                   train.distill_sc_tokens, train.seed, cfg.data.synth.model_dump(mode="json"))


def run_variant(name: str, cfg: VidLLMConfig, work: Path, paths: dict[str, str], *, meteor: bool = False,
                progress: bool = False) -> dict[str, Any]:
    """Train (Stage 1 unless single-stage, then Stage 2) and evaluate one variant on the val split."""
    from vidllm.eval.evaluate import evaluate_run
    from vidllm.train import train_stage1, train_stage2
    from vidllm.train.jobs import STAGE1_MODEL_DIR

    run = work / "variants" / name
    key = _digest(cfg.model_dump(mode="json"), paths)
    result_path = run / "result.json"
    if result_path.is_file():
        previous = rd.read_json(result_path)
        if previous.get("digest") == key:
            log.info("ablate: %s reused (same configuration and data)", name)
            return {**previous, "reused": True}
    if run.exists():
        shutil.rmtree(run)  # another configuration's run: never resume from its checkpoints
    run.mkdir(parents=True)
    seconds: dict[str, float] = {}
    init_model = None
    if not cfg.train.single_stage:
        stage1_dir = work / "stage1" / _stage1_key(cfg)
        start = time.monotonic()
        if not has_weights(stage1_dir / STAGE1_MODEL_DIR):
            if stage1_dir.exists():
                shutil.rmtree(stage1_dir)
            train_stage1(cfg, paths["shards"], paths["cache"], stage1_dir, progress=progress)
        seconds["stage1"] = time.monotonic() - start
        init_model = stage1_dir / STAGE1_MODEL_DIR
    start = time.monotonic()
    trained = train_stage2(cfg, paths["shards"], run, init_model=init_model, progress=progress)
    seconds["stage2"] = time.monotonic() - start
    start = time.monotonic()
    summary = evaluate_run(trained.model_dir, paths["shards"], run / "eval", annotations=Path(paths["data"]) /
                           "annotations", scans=Path(paths["data"]) / "scans", split="val",
                           benchmarks=ablation_benchmarks(), protocol=cfg.eval.protocol,
                           max_new_tokens=cfg.eval.max_new_tokens, meteor=meteor, proposals=cfg.eval.proposals)
    seconds["eval"] = time.monotonic() - start
    metrics = rd.read_json(run / "eval" / rd.METRICS_FILE)
    result = {"digest": key, "description": VARIANTS[name].description, "overrides": list(VARIANTS[name].overrides),
              "table": headline(metrics), "metrics_file": str(run / "eval" / rd.METRICS_FILE),
              "proposals": cfg.eval.proposals, "skipped": summary.skipped,
              "steps": {"stage1": 0 if cfg.train.single_stage else cfg.train.stage1.steps,
                        "stage2": cfg.train.stage2.steps},
              "final_losses": trained.final_losses, "seconds": seconds}
    rd.write_json(result_path, result)
    return result


def run_ablation(recipe: str, variants: Sequence[str], work_dir: str | Path, *, overrides: Sequence[str] = (),
                 yaml_path: str | None = None, meteor: bool = False, progress: bool = False,
                 on_variant: Callable[[str, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train and score each of `variants` (names in `VARIANTS`) of `recipe`; returns and writes
    WORK_DIR/ablation.json: {recipe, overrides, val_scenes, variants: {name: result}}.

    Every variant sees the same data, seeds and step counts; only its own overrides differ.
    """
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise VidLLMError(f"unknown ablation variant(s) {', '.join(unknown)} (choose from {', '.join(VARIANTS)})")
    if not variants:
        raise VidLLMError("no variants given")
    configs = {v: variant_config(recipe, v, overrides, yaml_path) for v in variants}  # all validated first
    work = Path(work_dir).absolute()
    work.mkdir(parents=True, exist_ok=True)
    base = configs[variants[0]]
    start = time.monotonic()
    paths = _prepare_data(base, work, progress)
    data_seconds = time.monotonic() - start
    out: dict[str, Any] = {"recipe": recipe, "overrides": list(overrides), "data_seconds": data_seconds,
                           "split": "val", "variants": {}}
    for name in variants:
        log.info("ablate: variant %s (%s)", name, VARIANTS[name].description)
        cfg = configs[name]
        cfg = cfg.model_copy(update={
            "teachers": cfg.teachers.model_copy(update={"geometry": paths["geometry_teacher"],
                                                        "semantic": paths["semantic_teacher"]}),
            "model": cfg.model.model_copy(update={"init": cfg.model.init.model_copy(update={"vggt": paths["vggt"]})}),
        })
        out["variants"][name] = run_variant(name, cfg, work, paths, meteor=meteor, progress=progress)
        rd.write_json(work / ABLATION_FILE, out)
        if on_variant is not None:
            on_variant(name, out["variants"][name])
    out["seconds"] = time.monotonic() - start
    rd.write_json(work / ABLATION_FILE, out)
    return out


def blind_control(cfg: VidLLMConfig, shards_uri: str, run_dir: str | Path, *, init_model: str | Path | None,
                  annotations: str | Path, scans: str | Path, split: str | None, benchmarks: Sequence[str],
                  meteor: bool = False, progress: bool = False) -> dict[str, Any]:
    """Beside a trained run: the same Stage 2 (same init, data, seeds, steps) with no vision tokens,
    evaluated the same way; RUN_DIR/ablation.json then holds both rows (full from RUN_DIR/metrics.json).
    Returns that mapping."""
    from vidllm.eval.evaluate import evaluate_run
    from vidllm.train import train_stage2

    run = Path(run_dir)
    control = run / "control_blind"
    if control.exists():
        shutil.rmtree(control)
    blind_cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"vision_tokens": False})})
    start = time.monotonic()
    trained = train_stage2(blind_cfg, shards_uri, control, init_model=init_model, progress=progress)
    evaluate_run(trained.model_dir, shards_uri, control / "eval", annotations=annotations, scans=scans, split=split,
                 benchmarks=benchmarks, protocol=cfg.eval.protocol, max_new_tokens=cfg.eval.max_new_tokens,
                 meteor=meteor, proposals=cfg.eval.proposals)
    seconds = time.monotonic() - start
    full = rd.read_json(run / rd.METRICS_FILE)
    blind = rd.read_json(control / "eval" / rd.METRICS_FILE)
    out = {"recipe": cfg.recipe, "split": split, "variants": {
        "full": {"description": VARIANTS["full"].description, "table": headline(full),
                 "metrics_file": str(run / rd.METRICS_FILE), "proposals": cfg.eval.proposals},
        "blind": {"description": VARIANTS["blind"].description, "table": headline(blind),
                  "metrics_file": str(control / "eval" / rd.METRICS_FILE), "proposals": cfg.eval.proposals,
                  "seconds": {"stage2+eval": seconds}},
    }}
    rd.write_json(run / ABLATION_FILE, out)
    return out
