"""The audit's rules over the nodes of a compiled graph, and the table it prints per graph."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from .allowlist import ALLOWED, CPU_ONLY
from .ir import Graph, Node


@dataclass(frozen=True)
class GraphKind:
    """What may appear in a graph: ``static`` (no dynamic dimension: the train step, validation) and
    ``custom`` (the fused CPU kernels: only in graphs that run on CPU as audited; the train step is audited
    as Ascend compiles it, without them)."""

    name: str
    static: bool
    custom: bool = False


@dataclass(frozen=True)
class Finding:
    """One rule broken: ``rule`` (``float64``, ``not-ai-core``, ``dtype``, ``custom``, ``dynamic-shape``), the
    primitive, the dtype or shape concerned, the first source line and how many nodes break it that way."""

    graph: str
    rule: str
    prim: str
    detail: str
    source: str
    count: int = 1

    def __str__(self) -> str:
        where = f" at {self.source}" if self.source else ""
        times = f" ({self.count} nodes)" if self.count > 1 else ""
        return f"{self.graph}: {self.rule}: {self.prim} {self.detail}{where}{times}"


def _dynamic(shapes: Iterable[tuple[int, ...]]) -> tuple[int, ...] | None:
    for shape in shapes:
        if any(d < 0 for d in shape):
            return shape
    return None


def node_findings(node: Node, kind: GraphKind) -> list[tuple[str, str]]:
    """``(rule, detail)`` of every rule ``node`` breaks in a graph of ``kind``."""
    found = []
    if "Float64" in node.dtypes:
        found.append(("float64", "on Float64"))
    if node.prim in CPU_ONLY:
        if not kind.custom:
            found.append(("custom", "(a fused CPU kernel) in a graph audited as Ascend compiles it"))
    elif node.prim not in ALLOWED:
        found.append(("not-ai-core", "has no AI Core kernel on 910A/910B (not in dvt_ms/audit/allowlist.py)"))
    else:  # the data input decides the kernel (index, shape and condition inputs come later or are Bool)
        allowed = ALLOWED[node.prim].dtypes
        data = node.inputs[0] if node.inputs else None
        if allowed is not None and data is not None and data not in allowed and data != "Float64":
            found.append(("dtype", f"on {data} (AI Core kernels take {', '.join(sorted(allowed))})"))
    if kind.static:
        shape = _dynamic(node.shapes)
        if shape is not None:
            found.append(("dynamic-shape", f"with shape {list(shape)}"))
    return found


def check_graphs(name: str, graphs: list[Graph], kind: GraphKind) -> list[Finding]:
    """Every rule broken in the kernel graphs of one compiled graph, one finding per (rule, primitive,
    detail) with the first source line and the count."""
    first: dict[tuple[str, str, str], str] = {}
    counts: Counter = Counter()
    for graph in graphs:
        if kind.static:
            for param in graph.params:
                shape = _dynamic(param.shapes)
                if shape is not None:
                    key = ("dynamic-shape", f"input {param.prim}", f"with shape {list(shape)}")
                    counts[key] += 1
                    first.setdefault(key, graph.file)
        for node in graph.nodes:
            for rule, detail in node_findings(node, kind):
                key = (rule, node.prim, detail)
                counts[key] += 1
                first.setdefault(key, node.source or node.scope)
    return [Finding(name, rule, prim, detail, first[(rule, prim, detail)], n)
            for (rule, prim, detail), n in sorted(counts.items())]


def _types(dtypes: tuple[str, ...]) -> str:
    return ",".join(sorted(set(dtypes))) or "-"


def primitive_table(graphs: list[Graph]) -> list[tuple[str, str, int]]:
    """``(primitive, "input dtypes -> output dtypes", count)`` over the kernel graphs, most frequent first."""
    counts: Counter = Counter()
    for graph in graphs:
        for node in graph.nodes:
            counts[(node.prim, f"{_types(node.inputs)} -> {_types(node.outputs)}")] += 1
    return [(prim, dtypes, n) for (prim, dtypes), n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


def format_table(name: str, rows: list[tuple[str, str, int]], seconds: float | None = None) -> str:
    """The primitive table of one graph as text (``seconds``: how long it took to compile and run once)."""
    total = sum(n for _, _, n in rows)
    width = max([len(p) for p, _, _ in rows] + [9])
    took = f", compiled and run in {seconds:.1f} s" if seconds is not None else ""
    lines = [f"== {name}: {total} nodes, {len({p for p, _, _ in rows})} primitives{took}",
             f"  {'primitive':<{width}}  {'count':>6}  dtypes (inputs -> outputs)"]
    lines += [f"  {prim:<{width}}  {n:>6}  {dtypes}" for prim, dtypes, n in rows]
    return "\n".join(lines)
