"""The audit catches what Ascend's AI Cores cannot run: planted float64, RightShift, a dynamic batch, a Custom op."""

from __future__ import annotations

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops

from dvt_ms.audit import (
    ALLOWED,
    GraphKind,
    capture,
    check_graphs,
    format_table,
    parse_graph,
    primitive_table,
    read_graphs,
)
from dvt_ms.audit.graphs import EXPORT, STATIC, TRAIN

CPU_INFERENCE = GraphKind("cpu-inference", static=True, custom=True)


class _Clean(nn.Cell):
    def construct(self, x):
        return ops.softmax(x * 2.0 + 1.0, -1)


class _Float64(nn.Cell):
    def construct(self, x):
        return (x.astype(ms.float64) * 3.0).astype(ms.float32)


class _RightShift(nn.Cell):
    def construct(self, x):
        return ops.bitwise_right_shift(x, 16) + 1


class _Custom(nn.Cell):
    def __init__(self) -> None:
        super().__init__()
        self.op = ops.Custom(lambda x: x * 2, out_shape=lambda s: s, out_dtype=lambda t: t, func_type="pyfunc")

    def construct(self, x):
        return self.op(x) + 1.0


def _findings(tmp_path, cell, x, kind, dynamic=False):
    with capture(str(tmp_path / "ir")) as files:
        if dynamic:
            cell.set_inputs(Tensor(shape=[None, *x.shape[1:]], dtype=x.dtype))
        cell(x)
    assert files, "MindSpore wrote no kernel graph"
    graphs = read_graphs(files)
    return check_graphs("planted", graphs, kind), graphs


def test_a_clean_graph_passes_and_is_tabled(graph_mode, tmp_path):
    found, graphs = _findings(tmp_path, _Clean(), Tensor(np.ones((4, 8), np.float32)), TRAIN)
    assert found == []
    rows = primitive_table(graphs)
    prims = {p for p, _, _ in rows}
    assert {"Mul", "Add", "Softmax"} <= prims
    assert ("Softmax", "Float32 -> Float32", 1) in rows
    assert "== clean: " in format_table("clean", rows, 1.5)


def test_a_planted_float64_op_is_named_with_its_source_line(graph_mode, tmp_path):
    found, _ = _findings(tmp_path, _Float64(), Tensor(np.ones((4, 8), np.float32)), TRAIN)
    rules = {(f.rule, f.prim) for f in found}
    assert ("float64", "Mul") in rules and ("float64", "Cast") in rules
    mul = next(f for f in found if f.rule == "float64" and f.prim == "Mul")
    assert mul.source.endswith(f"test_rules.py:{_Float64.construct.__code__.co_firstlineno + 1}")
    assert "float64: Mul on Float64 at " in str(mul)


def test_a_planted_right_shift_is_not_on_the_ai_core(graph_mode, tmp_path):
    found, _ = _findings(tmp_path, _RightShift(), Tensor(np.arange(8, dtype=np.int32).reshape(2, 4)), TRAIN)
    assert [(f.rule, f.prim) for f in found] == [("not-ai-core", "RightShift")]
    assert "test_rules.py" in found[0].source
    assert "RightShift" not in ALLOWED


def test_a_planted_dynamic_batch_fails_where_training_compiles(graph_mode, tmp_path):
    x = Tensor(np.ones((4, 8), np.float32))
    found, _ = _findings(tmp_path, _Clean(), x, TRAIN, dynamic=True)
    assert {f.rule for f in found} == {"dynamic-shape"}
    assert any("[-1, 8]" in f.detail for f in found)
    static_inference, _ = _findings(tmp_path, _Clean(), x, STATIC, dynamic=True)
    assert {f.rule for f in static_inference} == {"dynamic-shape"}
    exported, _ = _findings(tmp_path, _Clean(), x, EXPORT, dynamic=True)  # exports take any batch
    assert exported == []


def test_custom_ops_pass_only_in_cpu_inference(graph_mode, tmp_path):
    x = Tensor(np.ones((2, 3), np.float32))
    found, _ = _findings(tmp_path, _Custom(), x, STATIC)
    assert [(f.rule, f.prim) for f in found] == [("custom", "Custom")]
    allowed, _ = _findings(tmp_path, _Custom(), x, CPU_INFERENCE)
    assert allowed == []


def test_parse_graph_reads_inputs_nodes_types_and_sources():
    text = """# Params:
%para1_images: <Tensor[Float32], (-1, 3, 32, 32)>  :  <Float32xDefaultFormat>
subgraph @kernel_graph0() {
  %0(CNode_1) = PrimFunc_Mul(%para1_images, %para2_w) primitive_attrs: {}
      : (<Tensor[Float32], (-1, 3, 32, 32)>, <Tensor[Float64], ()>) -> (<Tensor[Float64], (-1, 3, 32, 32)>)
      # Fullname with scope: (Default/Mul-op0)
      # In file /a/model.py:10~20, 4~8/    def construct(self, x):/
      # In file /a/layer.py:7, 8~20/        y = x * w/
  %1(CNode_2) = MakeTuple(%0)
      : (<Tensor[Float64], (-1, 3, 32, 32)>) -> (<Tuple[Tensor[Float64]], TupleShape((-1, 3, 32, 32))>)
  Return(%1)
}
"""
    graph = parse_graph(text, "g.ir")
    assert [(p.prim, p.dtypes, p.shapes) for p in graph.params] == [("images", ("Float32",), ((-1, 3, 32, 32),))]
    mul, tup = graph.nodes
    assert (mul.prim, mul.inputs, mul.outputs, mul.source) == ("Mul", ("Float32", "Float64"), ("Float64",),
                                                                "/a/layer.py:7")
    assert mul.scope == "Default/Mul-op0" and tup.prim == "MakeTuple"
    found = check_graphs("g", [graph], TRAIN)
    assert {(f.rule, f.prim) for f in found} == {("float64", "Mul"), ("float64", "MakeTuple"),
                                                 ("dynamic-shape", "Mul"), ("dynamic-shape", "MakeTuple"),
                                                 ("dynamic-shape", "input images")}


def test_every_allowlist_entry_names_its_source():
    assert all(entry.source.strip() for entry in ALLOWED.values())
    for absent in ("RightShift", "DropoutGenMask", "GatherD", "AdaptiveAvgPool2D"):
        assert absent not in ALLOWED
