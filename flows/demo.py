"""`make demo`: the whole `train-full` Prefect flow on the embedded default (synthetic ScanNet-format data).

    python -m flows.demo --out demo_out [--recipe demo] [--config YAML] [--scenes N] [-o KEY=VALUE ...]

Runs flows/train_full.py with an ephemeral Prefect (PREFECT_HOME under --out, a temporary local
API server, no account or server needed) and local Ray (shard preparation; `--ray-train` also
trains with Ray Train):

  synth → prepare → teachers → stage-1 → stage-2 → evaluate (val split) → report

then prints the metrics table and the report path, and runs the trained model on a plain .mp4 of
a held-out room (ask / reconstruct / ground, as `vidllm ask VIDEO ...` does). Outputs stay under --out; a second run
finds every step valid and skips it (change an override to re-run from the affected step).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

# Settings an ephemeral Prefect needs on a small machine: a fresh SQLite
# database migrates for longer than the default 20 s start-up wait, and the telemetry insert races
# the flow for the database lock.
EPHEMERAL_PREFECT_ENV = {
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
               "TOKENIZERS_PARALLELISM": "false"}


def use_ephemeral_prefect(home: Path) -> None:
    """Point Prefect at a private home and a temporary API server; must run before `prefect` is imported."""
    if "prefect" in sys.modules:
        raise RuntimeError("use_ephemeral_prefect() must be called before prefect is imported")
    home.mkdir(parents=True, exist_ok=True)
    os.environ["PREFECT_HOME"] = str(home.absolute())
    os.environ.pop("PREFECT_API_URL", None)  # unset = ephemeral server on 127.0.0.1
    for key, value in {**EPHEMERAL_PREFECT_ENV, **OFFLINE_ENV}.items():
        os.environ.setdefault(key, value)


def run_demo(out: Path, recipe: str = "demo", scenes: int | None = None, overrides: list[str] | None = None,
             *, config_path: str | None = None, meteor: bool = True, ray_train: bool = False) -> dict[str, Any]:
    out = Path(out).absolute()
    use_ephemeral_prefect(out / "prefect_home")
    from flows.train_full import train_full
    from vidllm.ablate import ABLATION_FILE, format_table
    from vidllm.artifacts import run_dir as rd
    from vidllm.eval.evaluate import format_metrics_table

    start = time.monotonic()
    results = train_full(recipe=recipe, config_path=config_path, overrides=list(overrides or []), work_dir=str(out),
                         synth_scenes=scenes, meteor=meteor, use_ray_train=ray_train)
    run_dir = out / "run"
    print(f"\n== train-full on the {recipe} recipe: {time.monotonic() - start:.0f} s")
    for step, result in results.items():
        print(f"   {step:<9} {result['status']:<8} {result['seconds']:7.1f} s")
    print(f"\n== metrics ({rd.METRICS_FILE}, val split; fractions and metres as computed)")
    print(format_metrics_table(rd.read_json(run_dir / rd.METRICS_FILE)))
    ablation = run_dir / ABLATION_FILE
    if ablation.is_file():  # eval.blind_control: the same Stage 2 with no vision tokens
        print("\n== held-out scenes beside the blind control (no vision tokens reach the LLM; percentages)")
        print(format_table(rd.read_json(ablation)))
    report = results["report"]["outputs"]
    print(f"\nreport: {report.get('markdown')}\n        {report.get('html')}")
    own_video(out)
    return results


def own_video(work: Path, max_new_tokens: int = 16) -> None:
    """The trained model on a plain video, as a user runs it (`vidllm ask / reconstruct / ground`): a held-out
    synthetic room's colour frames encoded as an .mp4, with no depth and no poses."""
    import numpy as np

    from vidllm.data.scannet.annotations import load_annotations
    from vidllm.data.scannet.scans import load_scene
    from vidllm.data.video import write_video
    from vidllm.inference import SCENE_FRAME, VideoModel
    from vidllm.train.jobs import STAGE2_MODEL_DIR

    annotations = work / "data" / "annotations"
    question = load_annotations("scanqa", annotations, "val")[0]
    scene_id = question.scene_id
    phrase = next((r for r in load_annotations("scanrefer", annotations, "val") if r.scene_id == scene_id), None)
    with load_scene(work / "data" / "scans" / scene_id) as scene:
        frames = np.stack([scene.read_color(int(i)) for i in scene.valid_frame_ids])
    video = write_video(work / "own_video" / f"{scene_id}.mp4", frames, fps=10)
    start = time.monotonic()
    model = VideoModel.load(work / "run" / STAGE2_MODEL_DIR, max_new_tokens=max_new_tokens)
    clip = model.load_video(video)
    print(f"\n== own video: {video} ({len(frames)} frames, RGB only) → {len(clip.frame_indices)} sampled frames")
    answer = model.ask(clip, question.text)
    said = repr(answer.text) if answer.text else "no text"
    print(f"   ask       {question.text!r} → {said} (reference: {question.answers[0]!r})")
    recon = model.reconstruct(clip)
    ply = recon.write_ply(work / "own_video" / f"{scene_id}.ply")
    extent = [round(float(v), 2) for v in recon.extent]
    print(f"   reconstruct → {ply}: {len(recon.points)} points, extent {extent} m "
          f"(scale {recon.scale:.2f})")
    if phrase is not None:
        found = model.ground(clip, phrase.text)
        boxes = [[round(float(v), 2) for v in box] for box in found.boxes]
        print(f"   ground    {phrase.text!r} → {boxes or 'no box'}")
    print(f"   ({SCENE_FRAME}; {time.monotonic() - start:.1f} s; the same as `vidllm ask|reconstruct|ground "
          f"{video} … --model {work / 'run' / STAGE2_MODEL_DIR}`)")


def build_parser() -> argparse.ArgumentParser:
    from vidllm.config import add_config_options

    parser = argparse.ArgumentParser(prog="python -m flows.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder (default demo_out)")
    add_config_options(parser, recipe="demo", recipe_help="config recipe (default demo)",
                       set_aliases=("-o", "--override"),
                       set_help="config override, e.g. -o train.stage2.steps=60 (repeatable)")
    parser.add_argument("--scenes", type=int, default=None, help="number of synthetic scenes (default: recipe, demo 6)")
    parser.add_argument("--no-meteor", action="store_true", help="skip METEOR in the caption scores (no Java start)")
    parser.add_argument("--ray-train", action="store_true",
                        help="run both training stages as Ray Train jobs on local Ray (default: single process)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run_demo(args.out, args.recipe, args.scenes, args.overrides, config_path=args.config, meteor=not args.no_meteor,
             ray_train=args.ray_train)
    return 0


if __name__ == "__main__":
    sys.exit(main())
