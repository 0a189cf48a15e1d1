"""Cells called as graphs of their own (exit stages, the cascade), with less host work per call."""

from __future__ import annotations

from mindspore import nn

__all__ = ["TopLevelCell"]


class TopLevelCell(nn.Cell):
    """A cell compiled and called as a top-level graph.

    Every call of a graph-mode cell sets ``compile_phase`` on each of its sub-cells through the slow
    ``Cell.__setattr__``: for an exit of some two hundred cells, host time that shows at batch 1 on CPU. MindSpore's
    parser reads the sub-cells' phases (it keys what it parses by them), so they must all hold the phase of the
    call; here they are only read, and written only where one differs (the first call of each compiled shape or
    mode, or after the cells were compiled into another graph). The tags after a call are the same as with
    ``nn.Cell``. The cells under this one are listed once and listed again after every write, so a cell swapped in
    or out (e.g. a fused kernel switched off) costs one full write. """

    @property
    def compile_phase(self) -> str | None:
        """The phase of the graph this cell was last compiled or called as (MindSpore's attribute)."""
        return nn.Cell.compile_phase.fget(self)

    @compile_phase.setter
    def compile_phase(self, value: str) -> None:
        cells = self.__dict__.get("_phase_cells")
        if cells is None or any(cell.compile_phase != value for cell in cells):
            nn.Cell.compile_phase.fset(self, value)
            self.__dict__["_phase_cells"] = [cell for _, cell in self.cells_and_names()]
