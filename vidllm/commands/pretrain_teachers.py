"""`vidllm pretrain-teachers --out DIR`: train a miniature VGGT and CLIP on synthetic scenes and save
them in their native formats (VGGT safetensors, Dinov2 and CLIPVisionModel directories)."""

from __future__ import annotations

import argparse
import json
import sys

from vidllm.config import add_config_options, config_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="output folder: vggt.safetensors, geometry/, semantic/ and manifest.json; reused "
                             "when it already holds the outputs of the same config")
    add_config_options(parser, set_help="dotted config override, repeatable (e.g. teachers.pretrain.vggt_steps=300)")
    parser.add_argument("--json", action="store_true", help="print the manifest as one JSON object")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def run(args: argparse.Namespace) -> int:
    import time

    from vidllm.pretrain import pretrain_teachers

    cfg = config_from_args(args)
    start = time.perf_counter()
    manifest = pretrain_teachers(cfg, args.out, progress=not args.no_progress)
    seconds = time.perf_counter() - start
    if args.json:
        print(json.dumps({**manifest, "wall_seconds": round(seconds, 2)}))
        return 0
    m = manifest["metrics"]
    w = sys.stdout.write
    state = "reused (same config)" if manifest["reused"] else f"trained in {seconds:.1f} s"
    w(f"pretrained teachers in {args.out}: {state}; corpus {manifest['corpus']['scenes']} synthetic scenes "
      f"(seed {manifest['corpus']['seed']}, {manifest['corpus']['heldout_scenes']} held out)\n")
    w(f"  vggt      {manifest['vggt']}\n"
      f"            depth δ1 {_fmt(m['vggt_depth_delta1'])} (untrained init {_fmt(m['vggt_depth_delta1_init'])}), "
      f"AbsRel {_fmt(m['vggt_depth_abs_rel'])} on held-out scenes (median-scaled); cameras AUC@30 "
      f"{_fmt(m.get('vggt_pose_auc30'))} (untrained init {_fmt(m.get('vggt_pose_auc30_init'))}), "
      f"RRA@15 {_fmt(m.get('vggt_pose_rra15'))}\n")
    w(f"  geometry  {manifest['geometry']}  (the checkpoint's DINO patch embed, as `vidllm vggt-dino` writes it)\n")
    w(f"  semantic  {manifest['semantic']}\n"
      f"            per-patch class head {_fmt(m['clip_class_head_accuracy'])}, colour head "
      f"{_fmt(m['clip_color_head_accuracy'])}; linear probe class accuracy {_fmt(m['clip_probe_class_accuracy'])} "
      f"vs random-init CLIP {_fmt(m['clip_probe_class_accuracy_random_init'])} "
      f"(majority class {_fmt(m['class_chance_accuracy'])})\n")
    w("use them as the pretrained models:\n"
      f"  --set model.init.vggt={manifest['vggt']} --set teachers.geometry={manifest['geometry']} "
      f"--set teachers.semantic={manifest['semantic']}\n")
    return 0
