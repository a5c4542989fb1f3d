"""Tiny shard datasets and teachers for the training and teacher-cache tests (no Ray, no downloads)."""

from __future__ import annotations

from pathlib import Path


def write_tiny_shards(dataset, out: Path) -> Path:
    """The synthetic scenes → shards with the PREP helper's own writer (tiny recipe: 4 frames, 56x70)."""
    from preprocessing.prepare import PrepareSummary, ShardWriter, build_sample, config_digest, load_scene_annotations
    from vidllm.config import load_config

    prep = load_config("tiny").data.prep
    by_scene = load_scene_annotations(dataset.annotations_dir)
    out.mkdir(parents=True, exist_ok=True)
    writer = ShardWriter(str(out), {}, 0, prep.shard_max_bytes, config_digest(prep), PrepareSummary(str(out)))
    try:
        for scene in dataset.scenes:
            members = build_sample(scene.path, prep, label_map=str(dataset.label_map),
                                   annotations=by_scene.get(scene.scene_id, []))
            writer.add(scene.scene_id, scene.scene_id, members, prep.frames, scene.scene_id)
        writer.commit()
    finally:
        writer.close()
    return out


def tiny_config(*overrides: str):
    from vidllm.config import load_config

    return load_config("tiny", overrides=list(overrides))
