"""Cells called as graphs of their own (exit stages, the cascade), with less host work per call."""

from __future__ import annotations

from mindspore import nn

__all__ = ["GraphCell"]


def _all_tagged(cell: nn.Cell, phase: str) -> bool:
    """Whether ``cell`` and every cell under it already hold ``phase`` as their compile phase."""
    cells = [cell]
    for current in cells:  # breadth first: the list grows while it is read
        if current is not None:
            if current._compile_phase != phase:
                return False
            cells.extend(current._cells.values())
    return True


class GraphCell(nn.Cell):
    """A cell compiled and called as a top-level graph.

    Every call of a graph-mode cell sets ``compile_phase`` on each of its sub-cells through the slow
    ``Cell.__setattr__``: for an exit of some two hundred cells, ~1.2 ms of host time per call on a 2-core
    CPU, 7 % of exit 1 at batch 1. MindSpore's parser reads the sub-cells' phases (it keys what it parses by
    them), so they must all hold the phase of the call; here they are only read, and written only where one
    differs (the first call of each compiled shape or mode, or after the cells were compiled into another
    graph). The tags after a call are the same as with ``nn.Cell``.
    """

    @property
    def compile_phase(self) -> str | None:
        """The phase of the graph this cell was last compiled or called as (MindSpore's attribute)."""
        return self._compile_phase

    @compile_phase.setter
    def compile_phase(self, value: str) -> None:
        if not _all_tagged(self, value):
            nn.Cell.compile_phase.fset(self, value)
