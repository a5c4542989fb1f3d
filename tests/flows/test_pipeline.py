"""The step table (flows/pipeline.py) against what runs it: dvc.yaml, the flow's loop, the CLI, the step digests."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib
import inspect
import shlex
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from flows import pipeline, steps
from flows.pipeline import DVC_LAYOUT, PIPELINE
from vidllm.config import ConfigError, VidLLMConfig, load_config

REPO = Path(__file__).resolve().parents[2]
DVC_STEPS = [s for s in PIPELINE if s.dvc_stage]
FLOW_ONLY_OUTPUTS = {o for s in PIPELINE if not s.dvc_stage for o in s.outputs}


def _at(template: str) -> str:
    return template.format(**DVC_LAYOUT)


# ----------------------------------------------------------------------------- dvc.yaml


def test_dvc_yaml_is_the_one_the_table_generates():
    assert (REPO / "dvc.yaml").read_text() == pipeline.dvc_yaml(), "run: python -m flows.pipeline --write-dvc"
    assert pipeline.main(["--check-dvc"]) == 0


def test_every_dvc_stage_has_its_steps_command_deps_outs_and_params():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert list(stages) == [s.dvc_stage for s in DVC_STEPS]
    for s in DVC_STEPS:
        stage = stages[s.dvc_stage]
        assert stage["cmd"] == _at(s.cmd), s.name
        # DVC never runs the flow-only steps, so their outputs cannot be DVC deps.
        assert stage.get("deps", []) == [_at(d) for d in s.deps if d not in FLOW_ONLY_OUTPUTS], s.name
        assert stage.get("params", []) == list(s.params), s.name
        outs = dict(next(iter(o.items())) if isinstance(o, dict) else (o, {}) for o in stage.get("outs", []))
        assert sorted(outs) == sorted(_at(o) for o in (*s.outs, *s.git_outs)), s.name
        assert {o for o, options in outs.items() if options.get("cache") is False} == {_at(o) for o in s.git_outs}
        assert [next(iter(m)) for m in stage.get("metrics", [])] == [_at(m) for m in s.metrics], s.name


def test_a_changed_table_fails_the_check(tmp_path: Path, capsys):
    stale = tmp_path / "dvc.yaml"
    stale.write_text(pipeline.dvc_yaml().replace("      - train.grad_clip\n", "", 1))
    assert pipeline.main(["--check-dvc", "--dvc-file", str(stale)]) == 1
    assert "+      - train.grad_clip" in capsys.readouterr().out
    assert pipeline.main(["--write-dvc", "--dvc-file", str(stale)]) == 0
    assert stale.read_text() == pipeline.dvc_yaml()


def test_every_dvc_command_parses_and_calls_the_steps_library_function():
    from vidllm.cli import COMMANDS, build_parser

    for s in DVC_STEPS:
        argv = shlex.split(_at(s.cmd))
        assert argv[0] == "vidllm", s.name
        build_parser(argv[1]).parse_args(argv[1:])  # exits on an unknown or missing option
        command_source = inspect.getsource(importlib.import_module(f"vidllm.commands.{COMMANDS[argv[1]][0]}"))
        assert s.calls.rsplit(".", 1)[1] in command_source, (s.name, argv[1])


def test_every_step_calls_the_library_function_the_table_names():
    for s in PIPELINE:
        module, name = s.calls.rsplit(".", 1)
        assert callable(getattr(importlib.import_module(module), name)), s.calls
        assert name in inspect.getsource(s.run), (s.name, s.run.__name__)


def _leaves(tree: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key, value in tree.items():
        out += _leaves(value, f"{prefix}{key}.") if isinstance(value, dict) and value else [prefix + key]
    return out


def _covered(key: str, params: set[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in params)


def test_every_config_key_that_changes_results_is_a_dvc_param():
    tracked = {p for s in DVC_STEPS for p in s.params}
    keys = _leaves(VidLLMConfig().model_dump(mode="json"))
    assert pipeline.NOT_RESULT_KEYS <= set(keys), "NOT_RESULT_KEYS names a key the config no longer has"
    missing = [k for k in keys if not _covered(k, tracked) and k not in pipeline.NOT_RESULT_KEYS]
    assert not missing, f"no DVC stage tracks {missing}"


# ----------------------------------------------------------------------------- the step digests


def _field_annotation(path: list[str]) -> Any:
    model: Any = VidLLMConfig
    annotation: Any = None
    for part in path:
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None  # inside a dict field
        annotation = model.model_fields[part].annotation
        model = annotation
    return annotation


def _alternatives(key: str, value: Any) -> list[Any]:
    """Other values for a config leaf, to try in turn (some fail validation)."""
    annotation = _field_annotation(key.split("."))
    choices = [a for a in typing.get_args(annotation) if typing.get_origin(annotation) is typing.Literal]
    if choices:
        return [c for c in choices if c != value]
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int):
        return [value + 1, value * 2, value - 1]
    if isinstance(value, float):
        return [value * 1.5 + 0.01, value * 0.5]
    if isinstance(value, list) and value and all(isinstance(v, (int, float)) for v in value):
        return [[v * 2 if isinstance(v, int) else v * 0.5 + 0.01 for v in value], [value[0] * 0.9, *value[1:]],
                value[:-1]]
    if isinstance(value, list):
        return [value[:-1], [*value, value[0]]] if value else []
    if value == {}:
        return [{"scanqa": 2.0}, {"point": 0.5}]  # train.task_weights, train.loss_weights
    # unset paths and free strings; [0, 0, 1, 1]: metric_depth.encoder_layers, 4 layers of the tiny encoder
    return ["elsewhere", 1, 0.5, True, [0, 0, 1, 1]]


def _with(key: str, value: Any) -> dict[str, Any]:
    tree: dict[str, Any] = value
    for part in reversed(key.split(".")):
        tree = {part: tree}
    return tree


def _perturbed(key: str) -> VidLLMConfig | None:
    value = load_config("tiny").model_dump(mode="json")
    for part in key.split("."):
        value = value[part]
    for alternative in _alternatives(key, value):
        try:
            return load_config("tiny", params=_with(key, alternative))
        except ConfigError:
            continue
    return None


def _step_digests(cfg: VidLLMConfig, paths: steps.Paths) -> dict[str, str]:
    """The flow's own digest of each step (upstream held fixed, so each covers only what that step reads)."""
    return {"synth": steps.synth_digest(cfg), "prepare": steps.prepare_digest(cfg, paths, "up"),
            "stage-1": steps.stage1_digest(cfg, "up"), "stage-2": steps.stage2_digest(cfg, "up")}


# DVC re-runs prepare for these; the flow does not, as they leave every sample as it was
# (`vidllm.data.prepare.config_digest`), and prepare then reuses every scene anyway.
DVC_ONLY = {"prepare": {"data.prep.workers", "data.prep.shard_max_bytes"}}


def test_each_dvc_param_of_a_step_also_changes_its_digest_in_the_flow(tmp_path: Path):
    """Editing a key a DVC stage tracks re-runs the same step in the flow (the teachers, evaluate and
    report digests also cover teacher weights and the evaluation options, so they are left to the runs)."""
    paths = steps.Paths.resolve(tmp_path)
    base = _step_digests(load_config("tiny"), paths)
    keys = _leaves(load_config("tiny").model_dump(mode="json"))
    unchanged, untried = [], []
    for name in base:
        params = set(pipeline.step(name).params) - {"recipe"}
        for key in (k for k in keys if _covered(k, params) and k not in DVC_ONLY.get(name, set())):
            cfg = _perturbed(key)
            if cfg is None:
                untried.append(key)
            elif _step_digests(cfg, paths)[name] == base[name]:
                unchanged.append((name, key))
    assert not unchanged, unchanged
    assert not untried, untried  # _alternatives needs a value that validates for these


# ----------------------------------------------------------------------------- the flow's loop


def _fake_run(tmp_path: Path, overrides: list[str] = (), **resolve: Any) -> dict[str, dict[str, Any]]:
    """run_steps with each step replaced by a record of what it was given: {step: inputs summary}."""
    cfg = load_config("tiny", overrides=list(overrides))
    paths = steps.Paths.resolve(tmp_path, **resolve)
    seen: dict[str, dict[str, Any]] = {}

    def configure(config: VidLLMConfig, _: steps.Paths) -> VidLLMConfig:  # resolve_teachers would write weights
        return config.model_copy(update={"recipe": "configured"})

    teachers = dataclasses.replace(pipeline.step("teachers"), configure=configure)
    table = tuple(teachers if s.name == "teachers" else s for s in PIPELINE)

    def call(step: pipeline.Step, inputs: steps.StepInputs) -> dict[str, Any]:
        upstream = inputs.upstream and inputs.upstream.removeprefix("digest-of-")
        seen[step.name] = {"upstream": upstream, "recipe": inputs.cfg.recipe,
                           "init": inputs.output("stage-1", "model_dir"), "model": inputs.output("stage-2", "model_dir")}
        return {"step": step.name, "status": "ran", "digest": f"digest-of-{step.name}", "seconds": 0.0,
                "outputs": {"model_dir": f"{step.name}-model"}}

    results = pipeline.run_steps(cfg, paths, call, split="val", benchmarks=None, meteor=False, pipeline=table)
    assert list(results) == list(seen)
    return seen


def test_the_flow_runs_the_steps_its_config_includes_each_chaining_the_step_that_wrote_its_inputs(tmp_path: Path):
    """The same order and digest chain as the flow's hand-written sequence before the table."""
    default = _fake_run(tmp_path)
    assert {k: v["upstream"] for k, v in default.items()} == {
        "synth": None, "prepare": "synth", "teachers": "prepare", "stage-1": "teachers", "stage-2": "stage-1",
        "evaluate": "stage-2", "report": "evaluate"}
    assert default["stage-2"]["init"] == "stage-1-model" and default["evaluate"]["model"] == "stage-2-model"
    # The teachers' config (filled teachers) is what it and every later step see.
    assert [v["recipe"] for v in default.values()] == ["tiny", "tiny", *["configured"] * 5]

    real = _fake_run(tmp_path, data_uri=str(tmp_path / "scannet"))
    assert list(real) == ["prepare", "teachers", "stage-1", "stage-2", "evaluate", "report"]
    assert real["prepare"]["upstream"] is None

    single = _fake_run(tmp_path, ["train.single_stage=true", "teachers.miniatures=true", "eval.blind_control=true"])
    assert {k: v["upstream"] for k, v in single.items()} == {
        "synth": None, "prepare": "synth", "stage-2": "prepare", "evaluate": "stage-2", "control": "evaluate",
        "report": "control"}
    assert single["stage-2"]["init"] is None and single["control"]["init"] is None

    full = _fake_run(tmp_path, ["teachers.miniatures=true", "eval.blind_control=true"])
    assert list(full) == ["synth", "prepare", "pretrain", "teachers", "stage-1", "stage-2", "evaluate", "control",
                          "report"]
    assert full["pretrain"]["recipe"] == "tiny" and full["control"]["init"] == "stage-1-model"
    assert full["control"]["upstream"] == "evaluate" and full["report"]["upstream"] == "control"


def test_the_library_never_imports_flows():
    offenders = []
    for path in sorted((REPO / "vidllm").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            offenders += [f"{path.relative_to(REPO)}: {n}" for n in names if n == "flows" or n.startswith("flows.")]
    assert not offenders, offenders


# ----------------------------------------------------------------------------- the CLI's config options


def _sources() -> list[Path]:
    """Every parser's module but vidllm/config.py, home of add_config_options."""
    found = [*(REPO / "vidllm").rglob("*.py"), *(REPO / "flows").glob("*.py"), *(REPO / "benchmarks").glob("*.py")]
    return sorted(p for p in found if p != REPO / "vidllm" / "config.py")


@pytest.mark.parametrize("flag", ['"--config"', '"--set"', '"--override"'])
def test_config_options_are_declared_once(flag: str):
    declared = [str(p.relative_to(REPO)) for p in _sources() if f"add_argument({flag}" in p.read_text()]
    assert not declared, f"{flag} declared outside vidllm.config.add_config_options: {declared}"


def _config_options(parser: argparse.ArgumentParser) -> dict[str, tuple[str, str, Any]]:
    return {option: (a.dest, type(a).__name__, a.default) for a in parser._actions for option in a.option_strings
            if option in ("--recipe", "--config", "--set", "-o", "--override")}


def test_every_parser_with_a_recipe_takes_the_config_the_same_way():
    """--recipe, --config YAML and repeatable --set KEY=VALUE into `overrides`, from add_config_options."""
    import flows.demo
    import flows.train_full
    from vidllm.cli import COMMANDS

    parsers = {"python -m flows.train_full": flows.train_full.build_parser(), "python -m flows.demo":
               flows.demo.build_parser()}
    for name, (module, _) in COMMANDS.items():
        parser = argparse.ArgumentParser()
        importlib.import_module(f"vidllm.commands.{module}").add_arguments(parser)
        if "--recipe" in _config_options(parser):
            parsers[f"vidllm {name}"] = parser
    assert {"vidllm train", "vidllm prepare", "vidllm synth", "vidllm ablate", "vidllm plan"} <= set(parsers)
    for name, parser in parsers.items():
        options = _config_options(parser)
        recipe = options.pop("--recipe")
        assert recipe[:2] == ("recipe", "_StoreAction") and recipe[2] in ("paper", "tiny", "demo", "learning"), name
        assert options.pop("--config") == ("config", "_StoreAction", None), name
        assert "--set" in options and all(v == ("overrides", "_AppendAction", []) for v in options.values()), name
    assert set(_config_options(parsers["python -m flows.demo"])) == {"--recipe", "--config", "--set", "-o",
                                                                     "--override"}


def test_config_from_args_applies_recipe_then_yaml_then_set_then_a_commands_own_flags(tmp_path: Path):
    from vidllm.config import add_config_options, config_from_args

    yaml_file = tmp_path / "over.yaml"
    yaml_file.write_text("train:\n  stage2:\n    steps: 7\n    lr: 0.5\n")
    parser = argparse.ArgumentParser()
    add_config_options(parser, set_aliases=("-o",))
    args = parser.parse_args(["--recipe", "tiny", "--config", str(yaml_file), "--set", "train.stage2.lr=0.01",
                              "-o", "train.stage2.steps=9"])
    cfg = config_from_args(args, ["train.stage2.steps=11"])
    assert (cfg.recipe, cfg.train.stage2.steps, cfg.train.stage2.lr) == ("tiny", 11, 0.01)
    assert config_from_args(parser.parse_args([])).recipe == "paper"
