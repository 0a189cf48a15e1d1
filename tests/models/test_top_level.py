"""TopLevelCell: every sub-cell holds the phase of the last call, as with nn.Cell, with fewer writes."""

from __future__ import annotations

import mindspore as ms
import numpy as np
from mindspore import nn

from dvt_ms.models.top_level import TopLevelCell


class _Inner(nn.Cell):
    def __init__(self) -> None:
        super().__init__()
        self.dense = nn.Dense(4, 4)

    def construct(self, x):
        return self.dense(x)


class _Top(TopLevelCell):
    def __init__(self, inner: nn.Cell) -> None:
        super().__init__()
        self.inner = inner

    def construct(self, x):
        return self.inner(x) * 2


class _Other(nn.Cell):
    def __init__(self, inner: nn.Cell) -> None:
        super().__init__()
        self.inner = inner

    def construct(self, x):
        return self.inner(x) - 1


def _phases(cell: nn.Cell) -> set[str]:
    return {sub.compile_phase for _, sub in cell.cells_and_names()}


def test_every_sub_cell_holds_the_phase_and_unchanged_phases_are_not_rewritten(monkeypatch):
    writes = []
    setter = nn.Cell.compile_phase.fset
    monkeypatch.setattr(nn.Cell, "compile_phase",
                        property(nn.Cell.compile_phase.fget, lambda c, v: (writes.append(c), setter(c, v))))
    top = _Top(_Inner())
    top.compile_phase = "a"
    assert _phases(top) == {"a"} and writes
    writes.clear()
    top.compile_phase = "a"
    assert not writes
    setter(top.inner.dense, "other graph")  # a leaf re-tagged by another graph's call
    top.compile_phase = "a"
    assert _phases(top) == {"a"}


def test_a_shared_sub_cell_compiled_into_another_graph_is_retagged(graph_mode):
    """The train step and validation share the model's cells: after the other graph's call, this one's call
    tags them back, and both graphs keep giving their own outputs."""
    inner = _Inner()
    top, other = _Top(inner), _Other(inner)
    x = ms.Tensor(np.arange(8, dtype=np.float32).reshape(2, 4))
    first = top(x).asnumpy()
    phase = top.compile_phase
    assert _phases(top) == {phase}
    lowered = other(x).asnumpy()
    assert _phases(inner) == {other.compile_phase} != {phase}
    np.testing.assert_array_equal(top(x).asnumpy(), first)
    assert _phases(top) == {phase}
    np.testing.assert_allclose(lowered, first / 2 - 1, rtol=1e-6)
    small = ms.Tensor(np.arange(4, dtype=np.float32).reshape(1, 4))
    # another batch size: other kernels, other last bits
    np.testing.assert_allclose(top(small).asnumpy(), first[:1], rtol=1e-5, atol=1e-6)
    assert _phases(top) == {top.compile_phase} != {phase}  # another shape: another phase, every cell re-tagged
