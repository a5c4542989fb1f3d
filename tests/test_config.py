import pytest

from vidllm.config import ConfigError, load_config, parse_overrides


def test_recipes_build_and_differ():
    tiny, demo, paper = (load_config(r) for r in ("tiny", "demo", "paper"))
    assert tiny.recipe == "tiny" and paper.recipe == "paper"
    assert tiny.model.encoder.hidden_size < demo.model.encoder.hidden_size < paper.model.encoder.hidden_size
    assert paper.model.encoder.num_layers == 24 and paper.model.encoder.hidden_size == 1024
    assert paper.model.cta.num_bridge_tokens == 16
    assert paper.train.weight_decay == 0.05 and paper.train.grad_clip == 1.0


def test_yaml_then_overrides(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("recipe: tiny\nmodel:\n  cta:\n    num_bridge_tokens: 8\n")
    cfg = load_config("paper", yaml_path=p, overrides=["model.cta.variant=none", "train.stage1.lr=3e-3"])
    assert cfg.recipe == "tiny"
    assert cfg.model.cta.num_bridge_tokens == 8
    assert cfg.model.cta.variant == "none"
    assert cfg.train.stage1.lr == pytest.approx(3e-3)
    assert cfg.model.encoder.hidden_size == 32  # from the tiny recipe


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"model\.cta\.bridge_tokens"):
        load_config("tiny", overrides=["model.cta.bridge_tokens=4"])


def test_bad_value_is_named():
    with pytest.raises(ConfigError, match=r"model\.cta\.num_bridge_tokens"):
        load_config("tiny", overrides=["model.cta.num_bridge_tokens=0"])
    with pytest.raises(ConfigError, match=r"model\.cta\.variant"):
        load_config("tiny", overrides=["model.cta.variant=banana"])


@pytest.mark.parametrize("override,key", [
    ("train.stage2.lr=inf", r"train\.stage2\.lr"),
    ("train.stage2.lr=.inf", r"train\.stage2\.lr"),
    ("train.stage1.lr=nan", r"train\.stage1\.lr"),
    ("train.stage1.steps=true", r"train\.stage1\.steps"),
    ("train.stage2.batch_size=false", r"train\.stage2\.batch_size"),
    ("train.stage1.log_every=yes", r"train\.stage1\.log_every"),
])
def test_stage_numbers_refuse_inf_nan_and_bools(override, key):
    with pytest.raises(ConfigError, match=key):
        load_config("tiny", overrides=[override])
    # Ordinary values still load.
    cfg = load_config("tiny", overrides=["train.stage2.lr=2e-4", "train.stage1.steps=7"])
    assert (cfg.train.stage2.lr, cfg.train.stage1.steps) == (2e-4, 7)


def test_bad_override_syntax_and_recipe(tmp_path):
    with pytest.raises(ConfigError, match="key.path=value"):
        parse_overrides(["model.cta"])
    with pytest.raises(ConfigError, match="unknown recipe"):
        load_config("huge")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config("tiny", yaml_path=bad)


def test_synth_section_fills_depth_size_and_clip_from_the_rest():
    from vidllm.config import SynthConfig

    cfg = load_config("tiny", overrides=["data.synth.width=96", "data.prep.frames=6"])
    assert (cfg.data.synth.depth_width, cfg.data.synth.depth_height) == (96, 60)
    assert cfg.data.synth.clip_frames == 6
    assert load_config("tiny", overrides=["data.synth.clip_frames=2"]).data.synth.clip_frames == 2
    bare = SynthConfig(width=64, height=48, depth_width=32)
    assert (bare.depth_width, bare.depth_height, bare.clip_frames) == (32, 48, None)
    with pytest.raises(ConfigError, match=r"'data.synth'.*max_objects \(2\) is below min_objects \(3\)"):
        load_config("tiny", overrides=["data.synth.max_objects=2"])
