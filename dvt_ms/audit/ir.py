"""Reading MindSpore's IR dumps: the primitives of a compiled graph with their dtypes, shapes and sources.

MindSpore writes the IR of every compiled graph when graph saving is on (``MS_DEV_SAVE_GRAPHS``, or the
context's ``save_graphs``); ``MS_DEV_DUMP_IR_PASSES`` keeps only the passes named. The audit keeps
``graph_before_reset``: the kernel graphs after every backend optimisation, as they run. A node there reads::

    %12(CNode_345) = PrimFunc_Mul(%10, %11) primitive_attrs: {...}
        : (<Tensor[Int32], (4, 1)>, <Tensor[Int32], (1, 16)>) -> (<Tensor[Int32], (4, 16)>)
        ...
        # In file /path/dvt_ms/models/layers/dropout.py:250~251, 12~70/   uniform = .../

and a graph input ``%para1_images: <Tensor[Float32], (4, 3, 32, 32)>``. :func:`capture` sets the
variables around one compilation and returns the files it wrote.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

DUMPED_PASS = "graph_before_reset"
_NODE = re.compile(r"^\s+%\d+\([^)]*\) = (?:PrimFunc_)?([A-Za-z_][A-Za-z0-9_]*)\(")
_PARAM = re.compile(r"^%para\d+_([^:]+): <([^>]*)>")
_TENSOR = re.compile(r"Tensor\[(\w+)\], \(([^)]*)\)")
_SOURCE = re.compile(r"#\s*In file (.+?):(\d+)")
_SCOPE = re.compile(r"#\s*Fullname with scope: \((.+)\)")
_SPEC = importlib.util.find_spec("mindspore")
_MINDSPORE_DIR = os.path.dirname(_SPEC.origin) + os.sep if _SPEC and _SPEC.origin else "//mindspore//"


@dataclass
class Node:
    """One primitive call: its name, the tensor dtypes and shapes of its inputs and outputs, where it comes from."""

    prim: str
    dtypes: tuple[str, ...] = ()  # every tensor's: the inputs', then the outputs'
    shapes: tuple[tuple[int, ...], ...] = ()
    source: str = ""
    scope: str = ""
    inputs: tuple[str, ...] = ()  # the input tensors' dtypes
    outputs: tuple[str, ...] = ()  # the output tensors' dtypes


@dataclass
class Graph:
    """The nodes and inputs of one dumped kernel graph (``file``)."""

    file: str
    params: list[Node] = field(default_factory=list)  # graph inputs: prim is the input's name
    nodes: list[Node] = field(default_factory=list)


def _in_mindspore(path: str) -> bool:
    return os.path.abspath(path).startswith(_MINDSPORE_DIR)


def _tensors(text: str) -> tuple[tuple[str, ...], tuple[tuple[int, ...], ...]]:
    dtypes, shapes = [], []
    for dtype, dims in _TENSOR.findall(text):
        dtypes.append(dtype)
        shapes.append(tuple(int(d) for d in dims.replace(" ", "").split(",") if d))
    return tuple(dtypes), tuple(shapes)


def parse_graph(text: str, file: str = "") -> Graph:
    """The primitive nodes and inputs of one ``graph_before_reset`` IR file."""
    graph = Graph(file)
    node: Node | None = None
    typed = False
    for line in text.splitlines():
        param = _PARAM.match(line)
        if param:
            dtypes, shapes = _tensors(f"<{param.group(2)}>")
            graph.params.append(Node(param.group(1), dtypes, shapes))
            continue
        match = _NODE.match(line)
        if match:
            node, typed = Node(match.group(1)), False
            graph.nodes.append(node)
            continue
        if node is None:
            continue
        stripped = line.strip()
        if stripped.startswith(": (") and not typed:  # the first type line holds the abstract types
            node.dtypes, node.shapes = _tensors(stripped)
            ins, _, outs = stripped.partition(") -> (")
            node.inputs, node.outputs = _tensors(ins)[0], _tensors(outs)[0]
            typed = True
        elif (source := _SOURCE.search(stripped)) is not None:
            # the last line is the innermost call; keep the innermost one outside MindSpore's own code
            if not node.source or not _in_mindspore(source.group(1)):
                node.source = f"{source.group(1)}:{source.group(2)}"
        elif (scope := _SCOPE.search(stripped)) is not None:
            node.scope = scope.group(1)
        elif stripped.startswith("}"):
            node = None
    return graph


def read_graphs(files: list[str]) -> list[Graph]:
    """:func:`parse_graph` of every file."""
    graphs = []
    for path in files:
        with open(path, encoding="utf-8", errors="replace") as f:
            graphs.append(parse_graph(f.read(), path))
    return graphs


@contextlib.contextmanager
def capture(directory: str) -> Iterator[list[str]]:
    """Dump the kernel graphs compiled inside the block into ``directory``; the yielded list receives the
    paths of the files written there by the block (filled when the block ends).

    ``MS_DEV_SAVE_GRAPHS`` is read once, at a process's first compilation; the context setting
    (``set_context(save_graphs=...)``) switches dumping on and off at any time, so it is used here.
    """
    import mindspore as ms

    directory = os.path.abspath(directory)
    os.makedirs(directory, exist_ok=True)
    saved = os.environ.get("MS_DEV_DUMP_IR_PASSES")
    before = _ir_files(directory)
    os.environ["MS_DEV_DUMP_IR_PASSES"] = DUMPED_PASS
    ms.set_context(save_graphs=1, save_graphs_path=directory)
    written: list[str] = []
    try:
        yield written
    finally:
        ms.set_context(save_graphs=0)
        if saved is None:
            os.environ.pop("MS_DEV_DUMP_IR_PASSES", None)
        else:
            os.environ["MS_DEV_DUMP_IR_PASSES"] = saved
        written.extend(sorted(_ir_files(directory) - before))


def _ir_files(directory: str) -> set[str]:
    """The dumped kernel-graph files below ``directory`` (MindSpore may add a folder per rank)."""
    return {os.path.join(root, n) for root, _, names in os.walk(directory) for n in names
            if n.startswith(DUMPED_PASS) and n.endswith(".ir")}
