"""Cells called as graphs of their own (exit stages, the cascade), with less host work per call."""

from __future__ import annotations

from mindspore import nn

__all__ = ["GraphCell"]


class GraphCell(nn.Cell):
    """A cell compiled and called as a top-level graph.

    Every call of a graph-mode cell sets ``compile_phase`` on each of its sub-cells through
    ``Cell.__setattr__``; for an exit of some two hundred cells that is ~1.2 ms of host time per call on a
    2-core CPU, 7 % of exit 1 at batch 1. Here the walk runs only when the phase differs from the one the
    cell or one of its direct children holds, that is on the first call of each compiled shape or after the
    children were compiled into another graph. MindSpore reads ``compile_phase`` of the top-level network
    only (parallel strategy files), so the result is the same.
    """

    @property
    def compile_phase(self) -> str | None:
        return self._compile_phase

    @compile_phase.setter
    def compile_phase(self, value: str) -> None:
        children = (cell for cell in self._cells.values() if cell is not None)
        if value != self._compile_phase or any(cell.compile_phase != value for cell in children):
            nn.Cell.compile_phase.fset(self, value)
