"""The benchmark registry: every benchmark once, every name list of the library derived from it
(or, in the data layer and training, from the task table the specs extend), and a benchmark added
by one spec, with no other file touched."""

from __future__ import annotations

import argparse
import ast
import importlib
import json
import pkgutil
from pathlib import Path

import pytest

from vidllm.cli import main
from vidllm.data.scannet import annotations
from vidllm.data.scannet.annotations import SQA3D_QUESTION_TYPES, Instruction, Task, load_annotations
from vidllm.errors import VidLLMError
from vidllm.eval import benchmarks
from vidllm.eval.benchmarks import registry
from vidllm.eval.benchmarks.registry import BenchmarkSpec, ScoreInputs
from vidllm.eval.benchmarks.tables import Column, Table, TableColumns
from vidllm.eval.report import build_report

PACKAGE = Path(__file__).resolve().parents[3] / "vidllm"
BENCHMARK_MODULES = ("scanqa", "sqa3d", "scanrefer", "multi3drefer", "scan2cap", "nr3d", "sr3d", "recon", "vsibench")
DATASET_MODULES = ("co3d", "re10k", "nyuv2")  # on their own dataset folders (`vidllm predict --data`)


def _choices(command: str, option: str) -> list[str]:
    parser = argparse.ArgumentParser()
    importlib.import_module(f"vidllm.commands.{command}").add_arguments(parser)
    action = next(a for a in parser._actions if option in a.option_strings)
    return list(action.choices)


def test_every_benchmark_is_registered_once_by_its_own_module():
    assert registry.names() == BENCHMARK_MODULES  # registration order: the evaluation order
    assert registry.dataset_benchmarks() == DATASET_MODULES
    modules = [m.name for m in pkgutil.iter_modules(benchmarks.__path__)
               if hasattr(importlib.import_module(f"vidllm.eval.benchmarks.{m.name}"), "SPEC")]
    assert sorted(modules) == sorted(BENCHMARK_MODULES + DATASET_MODULES)
    for name in modules:
        assert registry.get(name) is importlib.import_module(f"vidllm.eval.benchmarks.{name}").SPEC
    with pytest.raises(ValueError, match="already registered"):
        registry.register(registry.get("scanqa"))
    with pytest.raises(VidLLMError, match=r"unknown benchmark 'nope' \(choose from scanqa, sqa3d, scan2cap"):
        registry.get("nope")


def test_derived_lists_keep_the_hand_written_ones():
    assert registry.text_benchmarks() == ("scanqa", "sqa3d", "scan2cap", "vsibench")
    assert registry.box_benchmarks() == ("scanrefer", "multi3drefer", "nr3d", "sr3d")
    assert registry.geometry_benchmarks() == ("recon", *DATASET_MODULES)
    assert registry.choices() == ("scanqa", "sqa3d", "scan2cap", "vsibench", "scanrefer", "multi3drefer", "nr3d",
                                  "sr3d", "recon", *DATASET_MODULES)
    assert set(annotations.grounding_tasks()) == {"scanrefer", "nr3d", "sr3d", "multi3drefer"}
    assert set(annotations.annotation_tasks()) == set(annotations.trained_tasks()) == set(BENCHMARK_MODULES) - {"recon"}
    assert {s.name for s in registry.specs() if s.task.needs_boxes} == {"scanrefer", "multi3drefer", "nr3d", "sr3d",
                                                                       "scan2cap"}
    for spec in registry.specs():  # the data layer's task, or (recon) one it learnt from the spec
        assert annotations.TASKS[spec.name] is spec.task
    assert SQA3D_QUESTION_TYPES == ("what", "is", "how", "can", "which", "others")
    assert {annotations.sqa3d_question_type(q) for q in ("What is it?", "Is it red?", "Where am I?")} == {
        "what", "is", "others"}


def test_the_library_lists_what_the_registry_derives(synthetic_dataset):
    from vidllm.ablate import ablation_benchmarks, columns
    from vidllm.config import ConfigError, load_config
    from vidllm.data.prepare import load_scene_annotations

    for command, option in (("score", "--benchmark"), ("predict", "--benchmark"), ("evaluate", "--benchmarks")):
        assert _choices(command, option) == list(registry.choices())
    assert list(synthetic_dataset.instructions) == [*(n for n in annotations.annotation_tasks() if n != "scan2cap"),
                                                    "scan2cap"]  # Scan2Cap, built from ScanRefer's file, last
    by_scene = load_scene_annotations(synthetic_dataset.annotations_dir)
    tasks = {r["task"] for records in by_scene.values() for r in records}
    assert tasks == set(annotations.annotation_tasks())
    assert ablation_benchmarks() == ("scanqa", "scanrefer", "multi3drefer", "scan2cap", "recon", "vsibench")
    assert [h for h, *_ in columns()] == ["QA EM", "count", "colour", "exist", "rel-pos", "Ref@.25", "Ref@.5",
                                          "M3DR F1", "Cap CIDEr", "AUC@30", "δ1", "VSI avg"]
    with pytest.raises(ConfigError, match="known: " + ", ".join(annotations.trained_tasks())):
        load_config("tiny", overrides=["train.task_weights={nope: 1}"])


def _literal_names(node: ast.AST, names: set[str]) -> list[str]:
    if isinstance(node, ast.BinOp):
        return _literal_names(node.left, names) + _literal_names(node.right, names)
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [e.value for e in node.elts if isinstance(e, ast.Constant) and e.value in names]
    return []


def test_no_hand_written_benchmark_lists_outside_the_registry():
    """A list of benchmark names, as a constant or something a loop walks, is derived from the
    registry; SQA3D's and Multi3DRefer's subgroup vocabularies are defined once."""
    names = set(registry.names())
    lists, definitions = [], {"SQA3D_QUESTION_TYPES": 0, "MULTI3DREFER_EVAL_TYPES": 0}
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    if isinstance(target, ast.Name) and target.id in definitions:
                        definitions[target.id] += 1
        if benchmarks.__path__[0] in str(path):
            continue
        walked = [n.iter for n in ast.walk(tree) if isinstance(n, (ast.For, ast.comprehension))]
        constants = [n.value for n in tree.body if isinstance(n, (ast.Assign, ast.AnnAssign)) and n.value is not None]
        lists += [f"{path.relative_to(PACKAGE)}:{n.lineno}" for n in walked + constants
                  if len(_literal_names(n, names)) >= 2]
    assert lists == []
    assert definitions == {"SQA3D_QUESTION_TYPES": 1, "MULTI3DREFER_EVAL_TYPES": 1}


# ----------------------------------------------------------------------------- one definition adds a benchmark


def _load_toy(path: Path, split: str | None) -> list[Instruction]:
    return [Instruction(task="toy", id=r["id"], scene_id=r["scene_id"], text=r["question"], answers=[r["answer"]])
            for r in json.loads(path.read_text())]


def _score_toy(inputs: ScoreInputs) -> dict:
    hits = [inputs.predictions[i.id].text == i.answers[0] for i in inputs.instructions]
    return {"metrics": {"hit": sum(hits) / len(hits)}, "count": len(hits)}


TOY = BenchmarkSpec(Task("toy", "text", ("toy_{split}.json",), _load_toy), _score_toy,
                    tables=(TableColumns(Table("Table 99 — toy answers", number=99),
                                         (Column("Toy hit", "hit", paper="12.3"),)),))


def test_a_registered_benchmark_is_listed_loaded_scored_and_reported(tmp_path, capsys):
    registry.register(TOY)
    try:
        assert registry.names()[-1] == "toy" and "toy" in registry.text_benchmarks()
        assert "toy" in annotations.trained_tasks() and "toy" in annotations.annotation_tasks()
        assert "toy" not in annotations.grounding_tasks() and "toy" in _choices("score", "--benchmark")
        (tmp_path / "toy_val.json").write_text(json.dumps([
            {"id": "q1", "scene_id": "scene0000_00", "question": "How many?", "answer": "two"},
            {"id": "q2", "scene_id": "scene0000_00", "question": "Which?", "answer": "red"}]))
        assert [i.id for i in load_annotations("toy", tmp_path, "val")] == ["q1", "q2"]
        pred = tmp_path / "toy.jsonl"
        pred.write_text('{"id": "q1", "text": "two"}\n{"id": "q2", "text": "blue"}\n')
        assert main(["score", "--benchmark", "toy", "--pred", str(pred), "--gt", str(tmp_path), "--split", "val",
                     "--json", "--out", str(tmp_path / "run" / "metrics_toy.json")]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["metrics"] == {"hit": 0.5} and result["count"] == 2
        (tmp_path / "run" / "metrics.json").write_text(json.dumps({"toy": result}))
        md = build_report(tmp_path / "run").markdown.read_text()
        toy_table = md.split("## Table 99 — toy answers")[1]
        assert "| Method | Toy hit |" in toy_table and "| Vid-LLM (this run) | 50.0 |" in toy_table
        assert "| Vid-LLM (paper) | 12.3 |" in toy_table
    finally:
        registry.unregister("toy")
    assert "toy" not in registry.names() and "toy" not in annotations.TASKS
    assert "toy" not in _choices("score", "--benchmark")
