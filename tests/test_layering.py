"""The package's layers only point down: every ``dvt_ms`` import in the source, read from its AST
(function-level imports included), goes to a lower layer or stays inside its own package, no command
imports another command, and no modules import each other in a cycle (inside a package too)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO

PACKAGE = Path(REPO) / "dvt_ms"

# Lowest first. A module belongs to the longest prefix listed; commands sit above every library module.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("dvt_ms.files", "dvt_ms.device", "dvt_ms.interrupts"),
    ("dvt_ms.config", "dvt_ms.checkpoint", "dvt_ms.kernels", "dvt_ms.rng", "dvt_ms.model_arguments"),
    ("dvt_ms.models", "dvt_ms.data"),
    ("dvt_ms.flops", "dvt_ms.amp", "dvt_ms.reference", "dvt_ms.options", "dvt_ms.command"),
    ("dvt_ms.convert", "dvt_ms.inference"),
    ("dvt_ms.serve", "dvt_ms.train"),
    ("dvt_ms.audit", "dvt_ms.demo"),
)
COMMANDS = ("dvt_ms.train.cli", "dvt_ms.inference.cli", "dvt_ms.inference.stamp", "dvt_ms.convert.cli",
            "dvt_ms.serve.export", "dvt_ms.serve.predict", "dvt_ms.serve.server", "dvt_ms.audit.cli",
            "dvt_ms.demo.digits", "dvt_ms.data.cli")
COMMAND_LAYER, MAIN_LAYER = len(LAYERS), len(LAYERS) + 1


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> tuple[int, str]:
    """(layer, the prefix that placed it) of a dvt_ms module."""
    if module.endswith("__main__") or module == "dvt_ms":
        return MAIN_LAYER, module
    if module in COMMANDS:
        return COMMAND_LAYER, module
    best = max(((i, p) for i, names in enumerate(LAYERS) for p in names
                if module == p or module.startswith(p + ".")), key=lambda t: len(t[1]), default=None)
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return best


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every dvt_ms module ``path`` imports (``from .. import kernels`` -> dvt_ms.kernels)."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("dvt_ms"):
                continue
            for alias in node.names:  # a submodule imported by name is the dependency, not its package
                sub = f"{target}.{alias.name}"
                is_module = (PACKAGE.parent / Path(*sub.split("."))).with_suffix(".py").exists() or \
                    (PACKAGE.parent / Path(*sub.split("."))).is_dir()
                found.append((node.lineno, sub if is_module else target))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("dvt_ms")]
    return found


def top_package(module: str) -> str:
    return ".".join(module.split(".")[:2])


def violations(module: str, imports: list[tuple[int, str]]) -> list[str]:
    """The imports of ``module`` that point up, sideways into another package of its layer, or from one
    command to another."""
    own, own_prefix = layer_of(module)
    found = []
    for line, target in imports:
        if target == "dvt_ms":  # the version string of the package root
            continue
        theirs, their_prefix = layer_of(target)
        sideways = theirs == own and top_package(target) != top_package(module)
        between_commands = theirs == own == COMMAND_LAYER and target != module
        if theirs > own or sideways or between_commands:
            found.append(f"{line}: {module} (layer {own}, {own_prefix}) imports {target} (layer {theirs}, "
                         f"{their_prefix})")
    return found


def test_every_import_points_down_and_no_command_imports_another():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        upward += [f"{path.relative_to(REPO)}:{v}" for v in violations(module_name(path), imports_of(path))]
    assert not upward, "imports that point up or sideways:\n" + "\n".join(upward)


def test_the_walk_sees_relative_imports_and_the_rule_catches_each_kind():
    assert (10, "dvt_ms.kernels") in imports_of(PACKAGE / "models" / "cascade.py")
    assert violations("dvt_ms.models.spec", [(1, "dvt_ms.train.run")])  # up
    assert violations("dvt_ms.inference.engine", [(1, "dvt_ms.convert.mapping")])  # sideways
    assert violations("dvt_ms.serve.predict", [(1, "dvt_ms.serve.export")])  # command to command
    assert not violations("dvt_ms.train.validate", [(1, "dvt_ms.inference.thresholds"), (2, "dvt_ms.train.ema")])


def import_graph() -> dict[str, dict[str, int]]:
    """module -> {imported dvt_ms module: line} for every module of the package."""
    graph = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module = module_name(path)
        graph[module] = {target: line for line, target in reversed(imports_of(path)) if target != module}
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The import cycles of ``graph``: each group of modules that reach one another (a strongly connected
    component of two or more), sorted, found with Tarjan's algorithm."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in graph.get(module, {}):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            group = [stack.pop()]
            while group[-1] != module:
                group.append(stack.pop())
            if len(group) > 1:
                found.append(sorted(group))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return sorted(found)


def describe(group: list[str], graph: dict[str, dict[str, int]]) -> str:
    """The imports that close a cycle: ``module:line -> target`` for each import inside ``group``."""
    return "; ".join(f"{module}:{line} -> {target}" for module in group
                     for target, line in sorted(graph[module].items()) if target in group)


def test_no_import_cycle():
    graph = import_graph()
    found = cycles(graph)
    assert not found, "modules that import each other:\n" + "\n".join(describe(g, graph) for g in found)


def test_the_cycle_rule_catches_a_planted_cycle():
    graph = import_graph()
    assert "dvt_ms.serve.onnx_runtime" in graph["dvt_ms.serve.predictor"]  # imported inside a function
    assert not cycles(graph)
    planted = {**graph, "dvt_ms.serve.onnx_runtime": {**graph["dvt_ms.serve.onnx_runtime"],
                                                      "dvt_ms.serve.predictor": 1}}
    assert cycles(planted) == [["dvt_ms.serve.onnx_runtime", "dvt_ms.serve.predictor"]]
    three = {"dvt_ms.a": {"dvt_ms.b": 1}, "dvt_ms.b": {"dvt_ms.c": 1}, "dvt_ms.c": {"dvt_ms.a": 1, "dvt_ms.d": 2},
             "dvt_ms.d": {}}
    assert cycles(three) == [["dvt_ms.a", "dvt_ms.b", "dvt_ms.c"]]
    assert describe(["dvt_ms.a", "dvt_ms.b", "dvt_ms.c"], three) == \
        "dvt_ms.a:1 -> dvt_ms.b; dvt_ms.b:1 -> dvt_ms.c; dvt_ms.c:1 -> dvt_ms.a"
    assert not cycles({**three, "dvt_ms.c": {"dvt_ms.d": 2}})


def test_import_dvt_ms_and_convert_help_do_not_load_mindspore():
    code = ("import sys, contextlib, io\n"
            "import dvt_ms, dvt_ms.options, dvt_ms.inference, dvt_ms.serve, dvt_ms.train\n"
            "assert 'mindspore' not in sys.modules, 'import dvt_ms loaded MindSpore'\n"
            "from dvt_ms.convert.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    assert main(['--help']) == 0\n"
            "assert 'mindspore' not in sys.modules, 'dvt-convert --help loaded MindSpore'\n")
    env = {**os.environ, "PYTHONPATH": REPO}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
