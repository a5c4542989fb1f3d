"""The package's import graph, read from the source (every import, also those inside functions):
the library never imports `flows/` or a top-level script folder, and no two of its modules import
each other, directly or through others."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "vidllm"
OUTSIDE = ("flows", "benchmarks", "tests", "infra")  # shells over the library, never imported by it


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str) -> set[str]:
    """Dotted names imported anywhere in the file (relative imports resolved; TYPE_CHECKING ones too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in (ROOT / PACKAGE).rglob("*.py")}

    def owner(dotted: str) -> str | None:  # the module a dotted import name lands in
        while dotted and dotted not in files:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        edges = set()
        for dotted in _imports(path, name):
            if dotted.split(".")[0] in OUTSIDE:
                edges.add(dotted)
                continue
            target = owner(dotted) if dotted.split(".")[0] == PACKAGE else None
            # A module importing its own package's __init__ is how Python loads it, not a dependency.
            if target and target != name and not name.startswith(target + "."):
                edges.add(target)
        graph[name] = edges
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in graph:
                continue
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_library_never_imports_its_shells():
    graph = _graph()
    assert len(graph) > 50, "the walk found too few modules"
    outward = sorted(f"{src} -> {dst}" for src, dsts in graph.items() for dst in dsts if dst.split(".")[0] in OUTSIDE)
    assert outward == [], outward


def test_no_import_cycles():
    assert _cycles(_graph()) == []


# Layers that must not reach into others (the library's own direction of dependence).
FORBIDDEN_LAYERS = {
    "vidllm.train": ("vidllm.eval", "vidllm.commands"),  # training never imports evaluation
    "vidllm.data": ("vidllm.train", "vidllm.eval", "vidllm.models", "vidllm.losses", "vidllm.commands"),
    "vidllm.models": ("vidllm.train", "vidllm.eval", "vidllm.data", "vidllm.commands"),
    "vidllm.artifacts": ("vidllm.train", "vidllm.eval", "vidllm.data", "vidllm.commands"),
}


def test_layers_point_one_way():
    graph = _graph()
    crossings = sorted(f"{src} -> {dst}" for src, dsts in graph.items() for layer, banned in FORBIDDEN_LAYERS.items()
                       if src == layer or src.startswith(layer + ".")
                       for dst in dsts if any(dst == b or dst.startswith(b + ".") for b in banned))
    assert crossings == [], crossings


def test_the_walk_sees_imports_inside_functions(tmp_path):
    """The checks would be empty promises if function-level imports were missed."""
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from vidllm.train import jobs\n    import flows.demo\n")
    assert {"vidllm.train", "vidllm.train.jobs", "flows.demo"} <= _imports(module, "m")
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
