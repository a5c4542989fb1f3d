"""Miniature teachers (`vidllm.pretrain`): trained once on the tiny recipe, then loaded through the
very paths real VGGT / DINOv2 / CLIP weights take."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vidllm.config import load_config


@pytest.fixture(scope="module")
def tiny_cfg():
    return load_config("tiny")


@pytest.fixture(scope="module")
def pretrained(tiny_cfg, tmp_path_factory):
    from vidllm.pretrain import pretrain_teachers

    out = tmp_path_factory.mktemp("pretrained")
    return out, pretrain_teachers(tiny_cfg, out, progress=False)


def _fresh_vggt_modules(cfg, seed: int):
    from vidllm.pretrain import _vggt_modules

    torch.manual_seed(seed)
    return _vggt_modules(cfg)


def test_manifest_names_every_output_and_nothing_temporary_is_left(pretrained):
    out, manifest = pretrained
    assert manifest["reused"] is False
    assert {"vggt", "geometry", "semantic", "digest", "metrics", "corpus"} <= set(manifest)
    # The tiny recipe runs the miniature DINOv2 stage before VGGT: its scores are reported.
    for key in ("dino_furniture_balanced_accuracy", "dino_class_head_accuracy",
                "vggt_encoder_furniture_balanced_accuracy"):
        assert 0.0 <= manifest["metrics"][key] <= 1.0, key
    assert manifest["seconds"]["dino"] > 0
    assert Path(manifest["vggt"]) == (out / "vggt.safetensors").resolve() and Path(manifest["vggt"]).is_file()
    for role in ("geometry", "semantic"):
        assert (Path(manifest[role]) / "config.json").is_file()
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["digest"] == manifest["digest"] and on_disk["metrics"] == manifest["metrics"]
    assert sorted(p.name for p in out.iterdir()) == ["geometry", "manifest.json", "semantic", "vggt.safetensors"]
    m = manifest["metrics"]
    assert 0 <= m["vggt_depth_delta1"] <= 1 and 0 <= m["clip_probe_class_accuracy_random_init"] <= 1
    assert 0 <= m["vggt_pose_auc30"] <= 1 and 0 <= m["vggt_pose_auc30_init"] <= 1 and 0 <= m["vggt_pose_rra15"] <= 1
    # The corpus is not the benchmark's: its seed is far from data.synth.seed.
    assert manifest["corpus"]["seed"] - manifest["corpus"]["benchmark_seed"] == 1_000_003


def test_to_vggt_state_dict_round_trips_exactly(tiny_cfg, pretrained):
    from vidllm.models.convert import load_vggt_into, read_checkpoint, to_vggt_state_dict

    src_enc, src_rec = _fresh_vggt_modules(tiny_cfg, 0)
    sd = to_vggt_state_dict({"encoder": src_enc, "reconstruction": src_rec})
    assert any(k.endswith("attn.qkv.weight") for k in sd) and not any(k.startswith("metric_depth") for k in sd)
    enc, rec = _fresh_vggt_modules(tiny_cfg, 1)
    report = load_vggt_into({"encoder": enc, "reconstruction": rec}, sd)
    assert report.missing == [] and report.unexpected == [] and report.loaded == len(
        {**enc.state_dict(), **rec.state_dict()})
    for a, b in ((src_enc, enc), (src_rec, rec)):
        other = b.state_dict()
        assert all(torch.equal(v, other[k]) for k, v in a.state_dict().items())
    assert to_vggt_state_dict({"encoder": enc, "reconstruction": rec}).keys() == sd.keys()

    # The saved checkpoint is exactly that conversion of the trained modules.
    ckpt = read_checkpoint(pretrained[1]["vggt"])
    enc2, rec2 = _fresh_vggt_modules(tiny_cfg, 2)
    load_vggt_into({"encoder": enc2, "reconstruction": rec2}, ckpt)
    again = to_vggt_state_dict({"encoder": enc2, "reconstruction": rec2})
    assert again.keys() == ckpt.keys() and all(torch.equal(again[k], ckpt[k]) for k in ckpt)


def test_outputs_load_through_the_real_loaders(tiny_cfg, pretrained):
    from vidllm.assemble import assemble_model
    from vidllm.data.teacher_cache import geometry_features, load_teacher, semantic_features, teacher_spec
    from vidllm.tokenizer import train_tokenizer

    _, manifest = pretrained
    model_cfg = tiny_cfg.model.model_copy(update={"init": tiny_cfg.model.init.model_copy(
        update={"vggt": manifest["vggt"]})})
    torch.manual_seed(0)
    assembly = assemble_model(model_cfg, train_tokenizer([], vocab_size=model_cfg.llm.vocab_size))
    assert assembly.sources["reconstruction"].startswith("VGGT") and assembly.sources["encoder"].startswith("VGGT")
    assert assembly.vggt.unexpected == [] and all(".metric_depth." in k or "input_proj" in k
                                                  for k in assembly.vggt.missing)

    teachers = tiny_cfg.teachers.model_copy(update={"geometry": manifest["geometry"], "semantic": manifest["semantic"]})
    geometry, semantic = load_teacher(teachers, "geometry"), load_teacher(teachers, "semantic")
    assert type(geometry).__name__ == "Dinov2WithRegistersModel" and type(semantic).__name__ == "CLIPVisionModel"
    for role in ("geometry", "semantic"):
        teacher_spec(teachers, role)  # the cache identity reads the directories too
    images = torch.rand(2, 3, 56, 70)
    with torch.no_grad():
        # The geometry teacher is the checkpoint's DINO: its features are the assembled encoder's tokens.
        feats = geometry_features(geometry, images, frames_per_batch=2)["patch_tokens"].float()
        assembly.model.encoder.eval()
        tokens = assembly.model.encoder(images[None])[0]
        assert torch.allclose(feats, tokens, atol=2e-2)
        sem = semantic_features(semantic, images, teachers.semantic_image_size, frames_per_batch=2)
    side = teachers.semantic_image_size // teachers.random_patch_size
    assert sem["patch_tokens"].shape == (2, side * side, teachers.random_hidden_size)


def test_second_call_reuses_without_retraining(tiny_cfg, pretrained):
    from vidllm.pretrain import config_digest, pretrain_teachers

    out, first = pretrained
    files = [out / "manifest.json", out / "vggt.safetensors", *sorted((out / "geometry").iterdir()),
             *sorted((out / "semantic").iterdir())]
    stamps = [p.stat().st_mtime_ns for p in files]
    again = pretrain_teachers(tiny_cfg, out, progress=False)
    assert again["reused"] is True and again["digest"] == first["digest"] and again["metrics"] == first["metrics"]
    assert [p.stat().st_mtime_ns for p in files] == stamps
    changed = load_config("tiny", overrides=["teachers.pretrain.vggt_steps=13"])
    assert config_digest(changed) != first["digest"]


def test_trained_clip_has_semantics(pretrained):
    m = pretrained[1]["metrics"]
    # Per-patch object class on held-out scenes beats always answering the most frequent class.
    assert m["clip_class_head_accuracy"] > m["class_chance_accuracy"] + 0.1
    assert m["clip_probe_class_accuracy"] > m["class_chance_accuracy"]
    # Furniture alone, where the tiny recipe's 40 steps on 2 scenes teach little: reported with its chance.
    assert 0.0 <= m["clip_furniture_balanced_accuracy"] <= 1.0
    assert 0.0 < m["furniture_balanced_chance_accuracy"] <= 1.0


def test_cli_reports_and_rejects_bad_overrides_in_one_line(pretrained, tmp_path, capsys):
    from vidllm.cli import main

    out, manifest = pretrained
    assert main(["pretrain-teachers", "--recipe", "tiny", "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "reused" in text and f"--set model.init.vggt={manifest['vggt']}" in text
    assert f"--set teachers.semantic={manifest['semantic']}" in text

    for bad in ("teachers.pretrain.vggt_steps=0", "teachers.pretrain.nope=1"):
        code = main(["pretrain-teachers", "--recipe", "tiny", "--out", str(tmp_path / "x"), "--set", bad])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("vidllm pretrain-teachers: error:") and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_fill_teachers_is_one_rule_miniatures_then_random_never_replacing_set_paths(tiny_cfg, pretrained, tmp_path):
    """The fallback the flow, `--init-random DIR` and `vidllm ablate` share (vidllm.pretrain.fill_teachers)."""
    import shutil

    from vidllm.pretrain import MINIATURE_DIR, fill_teachers

    out, manifest = pretrained
    # Miniatures present in DIR/miniature for this config: reused, and they fill all three parts.
    shutil.copytree(out, tmp_path / MINIATURE_DIR)
    mini_cfg = tiny_cfg.model_copy(update={"teachers": tiny_cfg.teachers.model_copy(update={"miniatures": True})})
    filled = fill_teachers(mini_cfg, tmp_path)
    mini = tmp_path / MINIATURE_DIR
    assert Path(filled.teachers.geometry) == (mini / "geometry").resolve()
    assert Path(filled.teachers.semantic) == (mini / "semantic").resolve()
    assert Path(filled.model.init.vggt) == (mini / "vggt.safetensors").resolve()
    assert not (tmp_path / "geometry").exists()  # no random teacher written beside them

    # Without miniatures: random-init teachers in DIR itself, model.init.vggt untouched.
    plain = fill_teachers(tiny_cfg, tmp_path)
    assert Path(plain.teachers.geometry) == tmp_path / "geometry" and Path(plain.teachers.semantic) == tmp_path / "semantic"
    assert plain.model.init.vggt is None
    # A set path is kept; only the unset role is filled.
    mine = tiny_cfg.model_copy(update={"teachers": tiny_cfg.teachers.model_copy(update={"semantic": manifest["semantic"]})})
    kept = fill_teachers(mine, tmp_path)
    assert kept.teachers.semantic == manifest["semantic"] and Path(kept.teachers.geometry) == tmp_path / "geometry"


def test_class_balance_weights_classes_inversely_and_keeps_the_mean_weight(tiny_cfg):
    from vidllm.pretrain import IGNORE, _class_weights

    classes = torch.tensor([[0, 0, 0, 0, 0, 0, 1, 1, 2, IGNORE]])
    assert _class_weights(classes, 4, 0.0) is None
    weight = _class_weights(classes, 4, 1.0)
    counts = torch.tensor([6.0, 2.0, 1.0, 0.0])
    assert torch.allclose(weight[:3] * counts[:3], torch.full((3,), float(weight[0] * 6)))  # each class weighs alike
    assert weight[3] == 0 and torch.isclose((weight * counts).sum() / counts.sum(), torch.tensor(1.0))


def test_corpus_is_compact_and_the_semantic_set_is_built_scene_by_scene(tiny_cfg, tmp_path):
    """Hundreds of scenes fit in memory only in compact dtypes (1,000 learning-recipe scenes: 6.4 GB
    peak RSS, where float frames and a corpus-wide one-hot were OOM-killed at 24 GiB); labels built
    scene by scene equal the labels of the whole corpus at once."""
    from vidllm.pretrain import _patch_labels, _semantic_set, build_corpus, class_names

    cfg = tiny_cfg.model_copy(update={"teachers": tiny_cfg.teachers.model_copy(update={
        "pretrain": tiny_cfg.teachers.pretrain.model_copy(update={"scenes": 2, "frames": 3})})})
    corpus = build_corpus(cfg, tmp_path, progress=False)
    scene = corpus[0]
    assert scene.images.dtype == torch.uint8 and scene.images.shape[1] == 3
    assert scene.classes.dtype == scene.colors.dtype == torch.int16
    assert scene.depth.dtype == torch.float32
    size, patch = cfg.teachers.semantic_image_size, cfg.teachers.random_patch_size
    semantic = _semantic_set(corpus, size, patch)
    assert semantic["pixels"].dtype == torch.float16 and len(semantic["pixels"]) == 6
    at_once = _patch_labels(torch.cat([s.classes for s in corpus]).long(), size, patch, len(class_names()))
    assert torch.equal(semantic["classes"], at_once)


def _with_pretrain(cfg, **update):
    return cfg.model_copy(update={"teachers": cfg.teachers.model_copy(update={
        "pretrain": cfg.teachers.pretrain.model_copy(update=update)})})


def test_miniature_dinov2_stage_learns_patch_classes_and_vggt_starts_from_it(tiny_cfg, tmp_path):
    """teachers.pretrain.dino_steps: the encoder first learns per-patch class and colour (as VGGT's
    patch embed starts from DINOv2), then the VGGT steps start from that encoder."""
    from vidllm.pretrain import (_encoder_set, build_corpus, clip_head_scores, encoder_features, split_corpus,
                                 train_dino, train_vggt)

    cfg = _with_pretrain(tiny_cfg, scenes=2, frames=4, dino_steps=40, lr=3e-3)
    corpus = build_corpus(cfg, tmp_path, progress=False)
    train, _ = split_corpus(corpus)
    patch = cfg.model.encoder.patch_size
    grid = (corpus[0].images.shape[-2] // patch, corpus[0].images.shape[-1] // patch)
    data = _encoder_set(train, patch)
    assert data["classes"].shape == (len(data["pixels"]), grid[0] * grid[1])
    dino, heads, _ = train_dino(cfg, data, grid, progress=False)
    untrained, untrained_heads, _ = train_dino(_with_pretrain(cfg, lr=1e-12), data, grid, progress=False)
    trained = clip_head_scores(heads, encoder_features(dino, data["pixels"]), data)["clip_class_head_accuracy"]
    control = clip_head_scores(untrained_heads, encoder_features(untrained, data["pixels"]),
                               data)["clip_class_head_accuracy"]
    assert trained > control + 0.1, (trained, control)

    # The VGGT steps start from the DINOv2 stage's encoder (a negligible lr keeps it where it starts).
    encoder, _, _ = train_vggt(_with_pretrain(cfg, vggt_steps=1, lr=1e-12), train, progress=False, encoder_init=dino)
    for (name, a), b in zip(encoder.state_dict().items(), dino.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name



def _corpus_scene(seed: int, frames: int = 6):
    from vidllm.geometry import quat_to_mat
    from vidllm.pretrain import CorpusScene

    g = torch.Generator().manual_seed(seed)
    poses = torch.eye(4).repeat(frames, 1, 1)
    poses[:, :3, :3] = quat_to_mat(torch.nn.functional.normalize(torch.randn(frames, 4, generator=g), dim=-1))
    poses[:, :3, 3] = torch.randn(frames, 3, generator=g)
    depth = 1.0 + torch.rand(frames, 14, 28, generator=g)
    blank = torch.zeros(frames, 14, 28, dtype=torch.int16)
    return CorpusScene(f"s{seed}", torch.zeros(frames, 3, 14, 28, dtype=torch.uint8), depth, poses,
                       torch.tensor([[20.0, 0, 14], [0, 20.0, 7], [0, 0, 1]]), torch.eye(4), blank, blank)


class _ScriptedRecon(torch.nn.Module):
    """Returns the given predictions, one scene per call (the scorer is what is under test)."""

    def __init__(self, outputs):
        super().__init__()
        self.outputs = list(outputs)

    def forward(self, tokens, images, base, with_points=False):
        return self.outputs.pop(0)


def test_vggt_heldout_scores_pose_auc_is_one_for_true_cameras_and_low_for_random_ones():
    from vidllm.geometry import extri_intri_to_pose_encoding, extrinsics_relative_to_first
    from vidllm.pretrain import vggt_heldout_scores

    scenes = [_corpus_scene(s) for s in range(3)]

    def prediction(scene, poses):
        extrinsics = extrinsics_relative_to_first(poses)[None]
        intrinsics = scene.intrinsics.expand(1, len(poses), 3, 3)
        return {"depth": scene.depth[None] * 2.0,  # scale-free depth: a global factor costs nothing
                "pose_enc": extri_intri_to_pose_encoding(extrinsics, intrinsics, (14, 28))}

    true = vggt_heldout_scores(torch.nn.Identity(), _ScriptedRecon(prediction(s, s.poses) for s in scenes), scenes, 6)
    assert true["pose_auc30"] == pytest.approx(1.0) and true["pose_rra15"] == 1.0 and true["delta1"] == 1.0
    wrong = [_corpus_scene(100 + s) for s in range(3)]  # another scene's cameras
    bad = vggt_heldout_scores(torch.nn.Identity(), _ScriptedRecon(prediction(s, w.poses) for s, w in zip(scenes, wrong)),
                              scenes, 6)
    assert bad["pose_auc30"] < 0.2 and bad["pose_rra15"] < 0.5
